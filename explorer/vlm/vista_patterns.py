"""VISTA's three token-ranking patterns, measured over captioned scenes ("The Hidden Life of Tokens",
Li et al. 2025, Sec. 2.2 and Fig. 1).

For every scene the VLM captions the image greedily ("Describe the image."); the generated caption
is traced in one pass and the logit lens (final norm + unembedding) is read at every layer l and
every generation step t. The rank R_t^l(x) of a word x is its position among all vocabulary
entries at (t, l), 1 = the top (the paper's Eq. 3). The words are the scene vocabulary's colour
and shape names, put in the paper's three categories from the scene's ground truth:

* decoded genuine: named in the caption inside an object mention that is in the scene;
* hallucinated: named in the caption only inside mentions that are not in the scene (CHAIR's rule,
  explorer.vlm.metrics);
* hidden genuine: a colour or shape of a scene object that the caption never names;
* absent (a control the paper does not have): colour and shape names neither in the scene nor in
  the caption, so "hidden genuine ranks high" can be read against words with no visual support.

The three patterns, each a figure plus the data behind it:

1. **Gradual visual information loss** (OBS-1): the rank of each category at the final layer (and
   averaged over the last five layers, the paper's Fig. 1 left), in three equal buckets of the
   caption's steps (early / mid / late). Visual information is lost when genuine words sink (rank
   grows) from early to late while hallucinated words surface (rank shrinks).
2. **Early excitation** (OBS-2): for every emitted token, the layer (>= 1; layer 0 is the input
   embedding read through the unembedding) at which the lens probability of that token peaks,
   by token type (object words = colours and shapes with their synonyms; function words;
   punctuation; other). Plus the paper's layer-wise view (Fig. 1 right): each category's rank per
   layer, averaged over the steps. Early excitation appears when object words peak before the last
   layer more often than function words do.
3. **Hidden genuine information** (OBS-3): hidden genuine words' final-layer rank over the steps:
   the share that stays in the top k (median rank over the steps <= k) although never emitted,
   against the absent control.

Every comparison carries a 95% bootstrap interval over scenes (seeded).

Deviations from the paper (shown with every run): categories come from the scene generator's
ground truth and CHAIR's synonym list instead of GPT-4o; words are colours and shapes (the
scenes' whole vocabulary), tracked by the first token of " word"; pattern 2 as the issue words
it (the peak layer of the emitted token) next to the paper's layer-wise ranks; the absent-word
control is ours.
"""

from __future__ import annotations

import string
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.backends.vlm import VisionLanguageModel, capture_vlm, generate_batch
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.results import StoredFields, derived, in_meta, in_table, register_result
from explorer.vlm import metrics as m
from explorer.vlm.eval_sets import MAX_EVAL_SCENES, EvalSample, builtin_set
from explorer.vlm.scenes import COLOURS, SHAPES

DECODED, HIDDEN, HALLUCINATED, ABSENT = "decoded_genuine", "hidden_genuine", "hallucinated", "absent"
CATEGORIES = (DECODED, HIDDEN, HALLUCINATED, ABSENT)
CATEGORY_LABELS = {
    DECODED: "decoded genuine",
    HIDDEN: "hidden genuine",
    HALLUCINATED: "hallucinated",
    ABSENT: "absent (control)",
}
STAGES = ("early", "mid", "late")
LAST_LAYERS = 5  # the paper's Fig. 1 left averages the last five layers
TOKEN_TYPES = ("object word", "function word", "punctuation", "other")
FUNCTION_WORDS = frozenset(
    "a an the this that these those there here is are was were be been it its of in on at to and or "
    "with next beside above below left right near top bottom middle center centre side some one two "
    "three four image picture shows show i see can".split()
)
MAX_PATTERN_SCENES = 2000
DEVIATIONS = (
    "Word categories come from the scene generator's ground truth and CHAIR's synonym list, not from GPT-4o.",
    "Tracked words are the scenes' colour and shape names, each by the first token of ' word'.",
    "Early excitation is measured as the issue defines it (the layer >= 1 where the emitted token's lens "
    "probability peaks, by token type), next to the paper's layer-wise ranks.",
    "The 'absent' category (colours and shapes neither in the scene nor in the caption) is a control the "
    "paper does not have.",
)


@dataclass(frozen=True)
class PatternParams:
    """n_scenes caption scenes (the built-in "caption" set); top_k for pattern 3."""

    n_scenes: int = 50
    max_new_tokens: int = 32
    top_k: int = 100
    batch_size: int = 8
    n_boot: int = 1000
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.n_scenes <= MAX_PATTERN_SCENES:
            raise InputError(f"n_scenes must be in 1..{MAX_PATTERN_SCENES} (got {self.n_scenes})")
        if not 2 <= self.max_new_tokens <= 128:
            raise InputError(f"max_new_tokens must be in 2..128 (got {self.max_new_tokens})")
        if not 1 <= self.top_k <= 10_000:
            raise InputError(f"top_k must be in 1..10000 (got {self.top_k})")
        if not 1 <= self.batch_size <= 64:
            raise InputError(f"batch_size must be in 1..64 (got {self.batch_size})")
        if not 100 <= self.n_boot <= 100_000:
            raise InputError(f"n_boot must be in 100..100000 (got {self.n_boot})")
        assert MAX_PATTERN_SCENES <= MAX_EVAL_SCENES

    def to_json(self) -> dict[str, Any]:
        return {
            "n_scenes": self.n_scenes,
            "max_new_tokens": self.max_new_tokens,
            "top_k": self.top_k,
            "batch_size": self.batch_size,
            "n_boot": self.n_boot,
            "seed": self.seed,
        }


# ---- word categories ----------------------------------------------------------------------------
def categorise(caption: str, objects: list[tuple[str, str]]) -> dict[str, str]:
    """Colour and shape names -> category, for one caption of a scene with (colour, shape) objects."""
    truth = set(objects)
    genuine: set[str] = set()
    hallucinated: set[str] = set()
    for mention in m.object_mentions(caption):
        words = {mention.shape} | ({mention.colour} if mention.colour else set())
        (hallucinated if m.is_hallucinated(mention, truth) else genuine).update(words)
    scene_words = {c for c, _ in objects} | {s for _, s in objects}
    out: dict[str, str] = {}
    for word in (*COLOURS, *SHAPES):
        if word in genuine:
            out[word] = DECODED
        elif word in hallucinated:
            out[word] = HALLUCINATED
        elif word in scene_words:
            out[word] = HIDDEN
        else:
            out[word] = ABSENT
    return out


_OBJECT_WORDS = frozenset(
    [w for ws in m.SHAPE_SYNONYMS.values() for w in ws] + [w for ws in m.COLOUR_SYNONYMS.values() for w in ws]
)


def token_type(text: str) -> str:
    word = text.strip().lower()
    if not word:
        return "other"
    if all(ch in string.punctuation for ch in word):
        return "punctuation"
    if word in _OBJECT_WORDS:
        return "object word"
    if word in FUNCTION_WORDS:
        return "function word"
    return "other"


def stage_of(steps: int) -> np.ndarray:
    """Step index -> 0/1/2 (early/mid/late): three equal-sized buckets (np.array_split)."""
    out = np.zeros(steps, dtype=np.int64)
    for stage, chunk in enumerate(np.array_split(np.arange(steps), 3)):
        out[chunk] = stage
    return out


# ---- per scene ----------------------------------------------------------------------------------
@torch.no_grad()
def lens_ranks(
    vlm: VisionLanguageModel,
    sample: EvalSample,
    generated: list[int],
    word_ids: dict[str, int],
    max_tokens: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(ranks [words, layers, steps] of the tracked words (1 = top), probability [layers, steps] of
    each step's emitted token) from one traced pass over prompt + caption."""
    inputs = vlm.prepare(sample.question, sample.image(), max_tokens)
    trace, _ = capture_vlm(vlm, inputs, extra_ids=generated)
    start = len(inputs.input_ids) - 1
    positions = torch.arange(start, start + len(generated))
    residual = trace.residual[:, positions]  # [L+1, S, d]
    ids = torch.tensor(list(word_ids.values()), dtype=torch.long)
    emitted = torch.tensor(generated, dtype=torch.long)
    n_layers, steps = residual.shape[0], residual.shape[1]
    ranks = np.zeros((len(ids), n_layers, steps), dtype=np.int64)
    probs = np.zeros((n_layers, steps), dtype=np.float64)
    for layer in range(n_layers):
        logits = vlm.lm.unembed(residual[layer]).float()  # [S, V]
        tracked = logits[:, ids]  # [S, W]
        ranks[:, layer, :] = ((logits.unsqueeze(1) > tracked.unsqueeze(2)).sum(-1) + 1).T.cpu().numpy()
        logp = torch.log_softmax(logits, dim=-1)
        probs[layer] = logp.gather(1, emitted.unsqueeze(1))[:, 0].exp().cpu().numpy()
    return ranks, probs


def word_token_ids(vlm: VisionLanguageModel) -> dict[str, int]:
    """Each colour / shape name -> the first token of " name"."""
    tok = vlm.tokenizer
    return {w: int(tok.encode(" " + w, add_special_tokens=False)[0]) for w in (*COLOURS, *SHAPES)}


# ---- the result ---------------------------------------------------------------------------------
@register_result
@dataclass
class VistaPatternsResult(StoredFields):
    """ranks: per (sample, word, category, stage, layer) the mean lens rank over the stage's steps;
    words: per (sample, word, category) final-layer rank summaries over the steps;
    emitted: per (sample, step) the emitted token, its type, peak layer (>= 1) and probabilities;
    captions: per sample the caption and its scene objects; summary: the three patterns' numbers."""

    kind: ClassVar[str] = "vista_patterns"

    model: str = in_meta()
    params: dict[str, Any] = in_meta()
    n_layers: int = in_meta()
    ranks: list[dict[str, Any]] = in_table()
    words: list[dict[str, Any]] = in_table()
    emitted: list[dict[str, Any]] = in_table()
    captions: list[dict[str, Any]] = in_table()
    summary: dict[str, Any] = derived(json="patterns")
    seconds: float = in_meta(decode=float)
    deviations: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    def json_views(self) -> dict[str, Any]:
        return {"n_scenes": len(self.captions), "examples": self.captions[:6]}

    def to_tables(self) -> dict[str, pa.Table]:
        return {
            "ranks": pa.Table.from_pylist(self.ranks, schema=RANK_SCHEMA),
            "words": pa.Table.from_pylist(self.words, schema=WORD_SCHEMA),
            "emitted": pa.Table.from_pylist(self.emitted, schema=EMITTED_SCHEMA),
            "captions": pa.Table.from_pylist(self.captions, schema=CAPTION_SCHEMA),
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        """The summary is recomputed from the stored rows (seeded, so identical)."""
        params, n_layers = meta["params"], int(meta["n_layers"])
        ranks, words = tables["ranks"].to_pylist(), tables["words"].to_pylist()
        emitted = tables["emitted"].to_pylist()
        summary = summarise(
            ranks, words, emitted, n_layers, params["top_k"], params["n_boot"], params["seed"]
        )
        return {
            "ranks": ranks,
            "words": words,
            "emitted": emitted,
            "captions": tables["captions"].to_pylist(),
            "summary": summary,
        }


RANK_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("word", pa.string()),
        ("category", pa.string()),
        ("stage", pa.string()),
        ("layer", pa.int32()),
        ("mean_rank", pa.float64()),
    ]
)
WORD_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("word", pa.string()),
        ("category", pa.string()),
        ("token_id", pa.int64()),
        ("min_rank", pa.int64()),
        ("median_rank", pa.float64()),
        ("emitted", pa.bool_()),
    ]
)
EMITTED_SCHEMA = pa.schema(
    [
        ("sample", pa.string()),
        ("step", pa.int32()),
        ("token", pa.string()),
        ("token_type", pa.string()),
        ("peak_layer", pa.int32()),
        ("peak_prob", pa.float64()),
        ("final_prob", pa.float64()),
    ]
)
CAPTION_SCHEMA = pa.schema([("sample", pa.string()), ("caption", pa.string()), ("objects", pa.string())])


# ---- aggregation --------------------------------------------------------------------------------
def _boot_mean(values_by_sample: dict[str, list[float]], n_boot: int, seed: int) -> dict[str, Any]:
    """Mean over all values, with a 95% bootstrap interval resampling samples (scenes)."""
    groups = [np.asarray(v, dtype=np.float64) for v in values_by_sample.values() if v]
    if not groups:
        return {"value": None, "low": None, "high": None, "n": 0}
    sums = np.array([g.sum() for g in groups])
    counts = np.array([g.size for g in groups])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    boot = sums[picks].sum(1) / np.maximum(1, counts[picks].sum(1))
    return {
        "value": float(sums.sum() / counts.sum()),
        "low": float(np.percentile(boot, 2.5)),
        "high": float(np.percentile(boot, 97.5)),
        "n": int(counts.sum()),
    }


def _boot_ratio(
    num: dict[str, list[float]], den: dict[str, list[float]], n_boot: int, seed: int
) -> dict[str, Any]:
    """mean(num) / mean(den) over the samples that have both, with a bootstrap over samples."""
    keys = [k for k in num if num[k] and den.get(k)]
    if not keys:
        return {"value": None, "low": None, "high": None, "n": 0}
    ns = np.array([np.sum(num[k]) for k in keys])
    nc = np.array([len(num[k]) for k in keys])
    ds = np.array([np.sum(den[k]) for k in keys])
    dc = np.array([len(den[k]) for k in keys])

    def ratio(idx: Any) -> Any:
        return (ns[idx].sum(-1) / nc[idx].sum(-1)) / np.maximum(1e-12, ds[idx].sum(-1) / dc[idx].sum(-1))

    rng = np.random.default_rng(seed)
    boot = ratio(rng.integers(0, len(keys), size=(n_boot, len(keys))))
    return {
        "value": float(ratio(np.arange(len(keys)))),
        "low": float(np.percentile(boot, 2.5)),
        "high": float(np.percentile(boot, 97.5)),
        "n": len(keys),
    }


def summarise(
    ranks: list[dict[str, Any]],
    words: list[dict[str, Any]],
    emitted: list[dict[str, Any]],
    n_layers: int,
    top_k: int,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The three patterns' numbers (each with a bootstrap interval over scenes) and a verdict each."""
    final = n_layers - 1
    last = set(range(max(1, n_layers - LAST_LAYERS), n_layers))
    # pattern 1: stage means per category, final layer and last five layers
    by: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ranks:
        if r["layer"] == final:
            by[("final", r["category"], r["stage"])][r["sample"]].append(r["mean_rank"])
        if r["layer"] in last:
            by[("last5", r["category"], r["stage"])][r["sample"]].append(r["mean_rank"])
    loss: dict[str, Any] = {}
    for which in ("final", "last5"):
        block: dict[str, Any] = {}
        for cat in CATEGORIES:
            stages = {s: _boot_mean(by[(which, cat, s)], n_boot, seed) for s in STAGES}
            block[cat] = {
                **stages,
                "late_over_early": _boot_ratio(
                    by[(which, cat, "late")], by[(which, cat, "early")], n_boot, seed
                ),
            }
        loss[which] = block
    loss["verdict"] = _loss_verdict(loss["final"])

    # pattern 2: peak layer of the emitted token by type
    peaks: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    before: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in emitted:
        peaks[e["token_type"]][e["sample"]].append(float(e["peak_layer"]))
        before[e["token_type"]][e["sample"]].append(float(e["peak_layer"] < final))
    excitation: dict[str, Any] = {
        t: {
            "mean_peak_layer": _boot_mean(peaks[t], n_boot, seed),
            "share_peaking_before_last_layer": _boot_mean(before[t], n_boot, seed),
        }
        for t in TOKEN_TYPES
        if peaks.get(t)
    }
    excitation["final_layer"] = final
    excitation["verdict"] = _excitation_verdict(excitation)

    # pattern 3: hidden genuine words in the top k, against the absent control
    stays: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ever: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    median: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for w in words:
        stays[w["category"]][w["sample"]].append(float(w["median_rank"] <= top_k))
        ever[w["category"]][w["sample"]].append(float(w["min_rank"] <= top_k))
        median[w["category"]][w["sample"]].append(float(w["median_rank"]))
    hidden: dict[str, Any] = {
        c: {
            "share_staying_in_top_k": _boot_mean(stays[c], n_boot, seed),
            "share_ever_in_top_k": _boot_mean(ever[c], n_boot, seed),
            "mean_median_rank": _boot_mean(median[c], n_boot, seed),
        }
        for c in (HIDDEN, ABSENT, DECODED, HALLUCINATED)
        if stays.get(c)
    }
    hidden["top_k"] = top_k
    hidden["verdict"] = _hidden_verdict(hidden, top_k)
    return {"information_loss": loss, "early_excitation": excitation, "hidden_genuine": hidden}


def _fmt(e: dict[str, Any], digits: int = 2) -> str:
    if e.get("value") is None:
        return "n/a"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _loss_verdict(final: dict[str, Any]) -> str:
    """Genuine words sink when their late/early rank ratio is above 1 and above the absent control's
    (the whole colour/shape vocabulary may sink as a caption ends); hallucinated words surface when
    theirs is below 1."""
    ratio = {c: final[c]["late_over_early"] for c in CATEGORIES}
    control_high = ratio[ABSENT]["high"] if ratio[ABSENT]["value"] is not None else 1.0
    parts = [f"{CATEGORY_LABELS[c]} ×{_fmt(ratio[c])}" for c in CATEGORIES if ratio[c]["value"] is not None]
    sinking = [
        c
        for c in (DECODED, HIDDEN)
        if ratio[c]["value"] is not None and ratio[c]["low"] > max(1.0, control_high)
    ]
    measured = [c for c in (DECODED, HIDDEN) if ratio[c]["value"] is not None]
    surfaced = ratio[HALLUCINATED]["value"] is not None and ratio[HALLUCINATED]["high"] < 1
    if measured and len(sinking) == len(measured) and surfaced:
        head = "appears: genuine words sink beyond the control and hallucinated words surface"
    elif sinking or surfaced:
        said = [f"{CATEGORY_LABELS[c]} words sink beyond the control" for c in sinking]
        said.append("hallucinated words surface" if surfaced else "hallucinated words do not surface")
        head = "partly: " + ", ".join(said)
    else:
        head = "does not appear: no genuine category sinks beyond the control and hallucinated words do not surface"
    return f"{head} (late/early final-layer rank, 95% interval over scenes; >1 = sinks): " + "; ".join(parts)


def _excitation_verdict(excitation: dict[str, Any]) -> str:
    obj = excitation.get("object word", {}).get("share_peaking_before_last_layer")
    fun = excitation.get("function word", {}).get("share_peaking_before_last_layer")
    if not obj or obj.get("value") is None:
        return "not measurable: the captions emitted no object word"
    text = f"object words peak before the last layer in {_fmt(obj)} of emissions"
    if fun and fun.get("value") is not None:
        text += f", function words in {_fmt(fun)}"
        if obj["low"] > fun["high"]:
            return "appears: " + text
        return "does not appear (object words do not peak earlier than function words): " + text
    return "undetermined (no function words): " + text


def _hidden_verdict(hidden: dict[str, Any], top_k: int) -> str:
    h, a = hidden.get(HIDDEN), hidden.get(ABSENT)
    if not h:
        return "not measurable: every scene object was named in its caption"
    text = (
        f"hidden genuine words stay in the top {top_k} (median rank over steps) in "
        f"{_fmt(h['share_staying_in_top_k'])} of cases"
    )
    if a:
        text += f", absent control words in {_fmt(a['share_staying_in_top_k'])}"
        hv, av = h["share_staying_in_top_k"], a["share_staying_in_top_k"]
        if hv["value"] is not None and av["value"] is not None and hv["low"] > av["high"]:
            return "appears: " + text
        return "does not appear (hidden genuine words rank no higher than the control): " + text
    return text


# ---- running ------------------------------------------------------------------------------------
def measure_patterns(
    vlm: VisionLanguageModel,
    params: PatternParams,
    *,
    max_tokens: int = 4096,
    progress: ProgressFn | None = None,
) -> VistaPatternsResult:
    """Caption `params.n_scenes` evaluation scenes and measure VISTA's three patterns."""
    params.validate()
    report = or_silent(progress)
    samples = builtin_set("caption", params.n_scenes, params.seed)
    word_ids = word_token_ids(vlm)
    n_words = len(word_ids)
    t0 = time.perf_counter()
    rank_rows: list[dict[str, Any]] = []
    word_rows: list[dict[str, Any]] = []
    emitted_rows: list[dict[str, Any]] = []
    caption_rows: list[dict[str, Any]] = []
    n_layers = vlm.n_layers + 1
    for start in range(0, len(samples), params.batch_size):
        chunk = samples[start : start + params.batch_size]
        batch = [vlm.prepare(s.question, s.image(), max_tokens) for s in chunk]
        outs = generate_batch(vlm, batch, params.max_new_tokens)
        for i, (sample, ids) in enumerate(zip(chunk, outs, strict=True)):
            report((start + i) / len(samples), f"scene {start + i + 1} of {len(samples)}")
            if not ids:
                continue
            caption = str(vlm.tokenizer.decode(ids, skip_special_tokens=True)).strip()
            cats = categorise(caption, sample.objects)
            ranks, probs = lens_ranks(vlm, sample, ids, word_ids, max_tokens)
            n_layers = ranks.shape[1]
            stage = stage_of(len(ids))
            for w, word in enumerate(word_ids):
                for s_index, s_name in enumerate(STAGES):
                    cols = stage == s_index
                    if not cols.any():
                        continue
                    means = ranks[w][:, cols].mean(axis=1)
                    rank_rows += [
                        {
                            "sample": sample.sample_id,
                            "word": word,
                            "category": cats[word],
                            "stage": s_name,
                            "layer": layer,
                            "mean_rank": float(means[layer]),
                        }
                        for layer in range(n_layers)
                    ]
                final_ranks = ranks[w, -1]
                word_rows.append(
                    {
                        "sample": sample.sample_id,
                        "word": word,
                        "category": cats[word],
                        "token_id": word_ids[word],
                        "min_rank": int(final_ranks.min()),
                        "median_rank": float(np.median(final_ranks)),
                        "emitted": word_ids[word] in ids,
                    }
                )
            texts = vlm.lm.tokens_str(ids)
            for step, text in enumerate(texts):
                column = probs[1:, step]
                peak = int(column.argmax()) + 1
                emitted_rows.append(
                    {
                        "sample": sample.sample_id,
                        "step": step,
                        "token": text,
                        "token_type": token_type(text),
                        "peak_layer": peak,
                        "peak_prob": float(probs[peak, step]),
                        "final_prob": float(probs[-1, step]),
                    }
                )
            caption_rows.append(
                {
                    "sample": sample.sample_id,
                    "caption": caption,
                    "objects": ", ".join(f"{c} {s}" for c, s in sample.objects),
                }
            )
    assert n_words == len(word_ids)
    report(1.0, "bootstrap intervals")
    summary = summarise(
        rank_rows, word_rows, emitted_rows, n_layers, params.top_k, params.n_boot, params.seed
    )
    return VistaPatternsResult(
        model=vlm.model_id,
        params=params.to_json(),
        n_layers=n_layers,
        ranks=rank_rows,
        words=word_rows,
        emitted=emitted_rows,
        captions=caption_rows,
        summary=summary,
        seconds=time.perf_counter() - t0,
        deviations=list(DEVIATIONS),
    )
