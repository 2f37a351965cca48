"""Attribution of a VLM's answer to the image patches (visual tokens), with deletion faithfulness.

The objective is the log-probability of the answer tokens given the multimodal prompt: the
model's greedy answer of N tokens, or a given target text, teacher forced. A patch is
"removed" by replacing its visual token's *input embedding* (what the LM receives, after the
projector) by a baseline:

- "mean": the mean visual token of this image (every removed patch becomes the average patch);
- "blur": the visual token at the same position of a Gaussian-blurred copy of the image (the
  model's view blurred with radius `blur_radius` pixels, encoded by the same vision encoder and
  projector), so removed patches keep the coarse colour but lose detail.

Methods:
- "occlusion": each visual token replaced alone; score = log p(answer) - log p(answer | patch
  replaced) (positive = the patch supports the answer).
- "reagent": ReAGent (Zhao & Shan, 2024) with patch replacement instead of token replacement:
  random subsets of visual tokens (each with probability r) are replaced by the baseline, the
  drop in p(answer) raises the replaced patches' importance and lowers the others', until the
  answer stays within the top-k with only the most important patches kept (everything else
  replaced) or the step budget ends. Same update rule and stopping check as the text
  implementation (explorer.analysis.attribution.reagent); the text prompt is never replaced.
  Scores are a distribution over patches (sum to 1).

Faithfulness by patch deletion: the top-k% patches by importance are replaced (with the same
baseline) vs random k% (averaged over `random_trials` draws); the answer's probability drop is
reported for each k, with the deletion curve (answer probability as more and more patches are
deleted, importance order vs random) and its area (lower for importance = more faithful).

All perturbed passes are batched (rows of `inputs_embeds`; only the answer positions' logits
are computed). Hub VLMs that need their own forward (pixel values, M-RoPE) are not supported.
"""

from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageFilter

from explorer.analysis.attribution.reagent import EPS, rational_size
from explorer.backends.images import image_to_png
from explorer.backends.vlm import VisionLanguageModel, VLMInputs, generate
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result

VLM_METHODS = ("occlusion", "reagent")
BASELINES = ("mean", "blur")
DELETION_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
CURVE_POINTS = 21


@dataclass(frozen=True)
class VLMAttributionParams:
    """Parameters of an image-patch attribution.

    method:          "occlusion" | "reagent".
    baseline:        "mean" (mean visual token of the image) | "blur" (visual tokens of a blurred copy).
    answer_tokens:   greedy answer length N when no `target` is given.
    target:          text to score instead of the greedy answer (e.g. " red").
    blur_radius:     Gaussian blur radius in pixels of the model's view (baseline "blur").
    replacing_ratio, stop_top_k, keep_top_n, max_keep_ratio, num_probes, max_steps: ReAGent's
                     (see explorer.analysis.attribution.reagent); keep_top_n counts patches.
    random_trials:   random deletions averaged per fraction in the faithfulness check.
    batch_size:      perturbed sequences per forward pass.
    """

    method: str = "occlusion"
    baseline: str = "mean"
    answer_tokens: int = 3
    target: str | None = None
    blur_radius: float = 6.0
    replacing_ratio: float = 0.3
    stop_top_k: int = 3
    keep_top_n: int = 8
    max_keep_ratio: float = 0.5
    num_probes: int = 8
    max_steps: int = 30
    random_trials: int = 4
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> None:
        if self.method not in VLM_METHODS:
            raise InputError(
                f"unknown image attribution method {self.method!r}; choose from {list(VLM_METHODS)}"
            )
        if self.baseline not in BASELINES:
            raise InputError(f"unknown baseline {self.baseline!r}; choose from {list(BASELINES)}")
        if self.target is None and not 1 <= self.answer_tokens <= 64:
            raise InputError(f"answer_tokens must be between 1 and 64, got {self.answer_tokens}")
        if self.target is not None and not self.target.strip():
            raise InputError("the target text is empty")
        if not 0.0 < self.blur_radius <= 256:
            raise InputError(f"blur_radius must be in (0, 256], got {self.blur_radius}")
        if not 0.0 < self.replacing_ratio < 1.0:
            raise InputError(f"replacing_ratio must be in (0, 1), got {self.replacing_ratio}")
        if self.stop_top_k < 1 or self.keep_top_n < 1:
            raise InputError("stop_top_k and keep_top_n must be >= 1")
        if not 0.0 < self.max_keep_ratio <= 1.0:
            raise InputError(f"max_keep_ratio must be in (0, 1], got {self.max_keep_ratio}")
        if not 1 <= self.num_probes <= 256 or not 1 <= self.max_steps <= 10_000:
            raise InputError("num_probes must be in 1..256 and max_steps in 1..10000")
        if not 1 <= self.random_trials <= 64 or not 1 <= self.batch_size <= 512:
            raise InputError("random_trials must be in 1..64 and batch_size in 1..512")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


# ---------------------------------------------------------------------------------------------
# Scoring perturbed sequences
# ---------------------------------------------------------------------------------------------
@dataclass
class PatchScorer:
    """log p(answer | prompt with some visual tokens replaced), batched.

    base:      (T, d) prompt + answer[:-1] input embeddings
    positions: the image positions (n,) in the sequence
    baseline:  (n, d) replacement embedding for each image position
    answer:    (K,) answer token ids
    """

    vlm: VisionLanguageModel
    base: torch.Tensor
    positions: torch.Tensor
    baseline: torch.Tensor
    answer: torch.Tensor
    batch_size: int
    passes: int = 0

    @property
    def n(self) -> int:
        return int(self.positions.shape[0])

    def __call__(self, mask: torch.Tensor, top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """mask (B, n) bool (True = replace) -> (log p(answer) (B,), answer within top-k (B,))."""
        lps, hits = [], []
        for start in range(0, mask.shape[0], self.batch_size):
            m = mask[start : start + self.batch_size]
            batch = self.base.unsqueeze(0).repeat(m.shape[0], 1, 1)
            img = batch[:, self.positions]
            batch[:, self.positions] = torch.where(m.unsqueeze(-1), self.baseline.unsqueeze(0), img)
            lp, hit = self._score(batch, top_k)
            lps.append(lp)
            hits.append(hit)
        return torch.cat(lps), torch.cat(hits)

    def _score(self, embeds: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(self.answer.shape[0])
        lm = self.vlm.lm
        with torch.inference_mode(), lm.lock:
            logits = lm.forward(inputs_embeds=embeds, logits_to_keep=k).logits[:, -k:, :].float().cpu()
        self.passes += int(embeds.shape[0])
        idx = self.answer.view(1, k, 1).expand(embeds.shape[0], k, 1)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, idx).squeeze(-1).sum(dim=1)
        if top_k <= 0:
            return lp, torch.ones_like(lp, dtype=torch.bool)
        rank = (logits > logits.gather(-1, idx)).sum(-1)
        return lp, (rank < top_k).all(dim=1)


def blurred(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def build_scorer(
    vlm: VisionLanguageModel, prompt: str, inputs: VLMInputs, answer: list[int], params: VLMAttributionParams
) -> PatchScorer:
    assert inputs.inputs_embeds is not None
    pos = torch.tensor(inputs.image_positions, dtype=torch.long)
    visual = inputs.inputs_embeds[pos]
    if params.baseline == "mean":
        baseline = visual.mean(dim=0, keepdim=True).expand_as(visual).clone()
    else:
        assert inputs.image is not None
        other = vlm.prepare(prompt, blurred(inputs.image, params.blur_radius), 1 << 30)
        assert other.inputs_embeds is not None and other.image_positions == inputs.image_positions
        baseline = other.inputs_embeds[pos]
    ids = torch.tensor(answer, dtype=torch.long)
    embeds = inputs.inputs_embeds
    if len(answer) > 1:
        with torch.inference_mode():
            tail = vlm.lm.embed_module()(ids[:-1].to(vlm.lm.device)).float().cpu()
        embeds = torch.cat([embeds, tail])
    return PatchScorer(vlm, embeds, pos, baseline.float(), ids, params.batch_size)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------
def occlusion(scorer: PatchScorer, lp0: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Each visual token replaced alone: score = log p(answer) - log p(answer | patch replaced)."""
    lp, _ = scorer(torch.eye(scorer.n, dtype=torch.bool))
    return (lp0 - lp).float(), {}


def reagent_patches(
    scorer: PatchScorer, params: VLMAttributionParams, lp0: float, notes: list[str]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """ReAGent over visual tokens (same update and stopping rule as the text implementation)."""
    gen = torch.Generator(device="cpu").manual_seed(int(params.seed))
    n, p = params.num_probes, scorer.n
    keep_n = rational_size(p, params.keep_top_n, params.max_keep_ratio)
    p_orig = math.exp(lp0)
    scores = torch.rand(n, p, generator=gen)
    stopped = torch.zeros(n, dtype=torch.bool)
    steps = 0

    def check_masks(rows: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros(rows.numel(), p, dtype=torch.bool)
        keep.scatter_(1, scores[rows].topk(keep_n, dim=-1).indices, True)
        return ~keep

    prev: torch.Tensor | None = None
    for step in range(params.max_steps):
        rows = (~stopped).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        steps = step + 1
        mask = torch.rand(rows.numel(), p, generator=gen) < params.replacing_ratio
        batch = mask if prev is None else torch.cat([mask, check_masks(prev)])
        lp, hit = scorer(batch, top_k=params.stop_top_k if prev is not None else 0)
        if prev is not None:
            stopped[prev] |= hit[rows.numel() :]
        go_on = ~stopped[rows]
        delta = p_orig - lp[: rows.numel()].exp()
        d = torch.where(mask, delta.unsqueeze(1), -delta.unsqueeze(1)).clamp(-1 + EPS, 1 - EPS)
        updated = scores[rows] + torch.logit(0.5 * d + 0.5)
        scores[rows[go_on]] = updated[go_on]
        prev = rows[go_on]
    if prev is not None and prev.numel():
        _, hit = scorer(check_masks(prev), top_k=params.stop_top_k)
        stopped[prev] |= hit
    probs = torch.softmax(scores, dim=-1)
    n_stopped = int(stopped.sum())
    final = probs[stopped].mean(dim=0) if n_stopped else probs.mean(dim=0)
    if not n_stopped:
        notes.append(
            f"ReAGent: no probe met the stopping condition (answer in the top-{params.stop_top_k} with only the "
            f"{keep_n} most important patches kept) within {params.max_steps} steps; the scores average all "
            f"{n} probes. Raise max_steps for a converged result."
        )
    return final.float(), {"steps": steps, "stopped_probes": n_stopped, "num_probes": n, "keep_n": keep_n}


def deletion(
    scorer: PatchScorer, scores: torch.Tensor, lp0: float, params: VLMAttributionParams
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Faithfulness by patch deletion: top-k% by importance vs random k%, and the deletion curve."""
    n = scorer.n
    gen = torch.Generator(device="cpu").manual_seed(int(params.seed) + 1)
    order = torch.argsort(scores, descending=True, stable=True)
    randoms = [torch.randperm(n, generator=gen) for _ in range(params.random_trials)]
    counts = sorted({round(f * n) for f in np.linspace(0.0, 1.0, min(CURVE_POINTS, n + 1))})
    frac_counts = [max(1, round(f * n)) for f in DELETION_FRACTIONS]
    all_counts = sorted(set(counts) | set(frac_counts))

    def masks(perm: torch.Tensor) -> torch.Tensor:
        m = torch.zeros(len(all_counts), n, dtype=torch.bool)
        for i, c in enumerate(all_counts):
            m[i, perm[:c]] = True
        return m

    lp, _ = scorer(torch.cat([masks(order)] + [masks(r) for r in randoms]))
    prob = lp.exp().view(1 + len(randoms), len(all_counts)).numpy()
    imp_prob, rand_prob = prob[0], prob[1:].mean(axis=0)
    at = {c: i for i, c in enumerate(all_counts)}
    p0 = math.exp(lp0)
    rows = [
        {
            "fraction": f,
            "patches": c,
            "top_drop": float(p0 - imp_prob[at[c]]),
            "random_drop": float(p0 - rand_prob[at[c]]),
        }
        for f, c in zip(DELETION_FRACTIONS, frac_counts, strict=True)
    ]
    idx = [at[c] for c in counts]
    x = np.asarray(counts, dtype=float) / max(1, n)
    curve = {
        "fraction": x,
        "patches": np.asarray(counts),
        "importance": imp_prob[idx],
        "random": rand_prob[idx],
    }
    summary = {
        "answer_prob": p0,
        "deletion": rows,
        "auc_importance": float(np.trapezoid(curve["importance"], x)) if n else 0.0,
        "auc_random": float(np.trapezoid(curve["random"], x)) if n else 0.0,
        "random_trials": params.random_trials,
    }
    return summary, curve


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------
@register_result
@dataclass
class VLMAttributionResult(StoredFields):
    """Importance of every image patch for the answer, with deletion faithfulness.

    scores:  (rows * cols,) row-major over the visual tokens; larger = more important
    curve:   deletion curve {fraction, patches, importance, random} (answer probability)
    """

    kind: ClassVar[str] = "vlm_attribution"
    json_kind: ClassVar[bool] = True

    model: str = in_meta()
    prompt: str = in_meta()
    method: str = in_meta()
    baseline: str = in_meta()
    answer: str = in_meta()
    answer_tokens: list[str] = in_meta()
    answer_ids: list[int] = in_meta(json=False)
    target_given: bool = in_meta(decode=bool)
    answer_logprob: float = in_meta(decode=float)
    scores: np.ndarray = in_table()
    grid: list[int] = in_meta()
    image_png: str = in_meta(json=False)
    faithfulness: dict[str, Any] = in_meta()
    curve: dict[str, np.ndarray] = in_table(json="deletion_curve")
    params: dict[str, Any] = in_meta()
    extras: dict[str, Any] = in_meta(default_factory=dict)
    notes: list[str] = in_meta(default_factory=list)
    seconds: float = in_meta(default=0.0, decode=float)
    run_id: str | None = None

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(self.image_png))).convert("RGB")

    def score_grid(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=float).reshape(int(self.grid[0]), int(self.grid[1]))

    def ranking(self) -> list[int]:
        """Patch indices (row-major), most important first."""
        return [int(i) for i in np.argsort(-np.asarray(self.scores), kind="stable")]

    def json_views(self) -> dict[str, Any]:
        cols = int(self.grid[1])
        return {
            "scores": np.round(self.score_grid(), 6).tolist(),
            "top_patches": [
                {"index": i, "row": i // cols, "col": i % cols, "score": float(self.scores[i])}
                for i in self.ranking()[:5]
            ],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        n = len(self.scores)
        cols = int(self.grid[1])
        idx = np.arange(n)
        return {
            "patches": pa.table(
                {
                    "index": pa.array(idx, pa.int32()),
                    "row": pa.array(idx // cols, pa.int32()),
                    "col": pa.array(idx % cols, pa.int32()),
                    "score": pa.array(np.asarray(self.scores, dtype=np.float64), pa.float64()),
                }
            ),
            "curve": pa.table(
                {
                    "fraction": pa.array(np.asarray(self.curve["fraction"], dtype=np.float64), pa.float64()),
                    "patches": pa.array(np.asarray(self.curve["patches"], dtype=np.int32), pa.int32()),
                    "importance": pa.array(
                        np.asarray(self.curve["importance"], dtype=np.float64), pa.float64()
                    ),
                    "random": pa.array(np.asarray(self.curve["random"], dtype=np.float64), pa.float64()),
                }
            ),
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        curve = tables["curve"]
        return {
            "scores": np.asarray(tables["patches"].sort_by("index")["score"].to_numpy(), dtype=np.float64),
            "curve": {
                name: curve[name].to_numpy() for name in ("fraction", "patches", "importance", "random")
            },
        }


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def answer_ids(
    vlm: VisionLanguageModel, inputs: VLMInputs, params: VLMAttributionParams
) -> tuple[list[int], bool]:
    """The answer to score: the target text's tokens, or the greedy answer of N tokens."""
    if params.target is not None:
        ids = list(vlm.tokenizer(params.target, add_special_tokens=False).input_ids)
        if not ids:
            raise InputError(f"the target {params.target!r} has no tokens")
        return [int(i) for i in ids], True
    ids = generate(vlm, inputs, params.answer_tokens, stop_at_eos=True)
    if not ids:
        raise InputError("the model generated no answer tokens")
    return [int(i) for i in ids], False


def vlm_attribution(
    vlm: VisionLanguageModel,
    prompt: str,
    image: Image.Image | None,
    params: VLMAttributionParams,
    *,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> VLMAttributionResult:
    """Attribute the answer of `vlm` to (image, prompt) to the image patches."""
    prog = progress or (lambda f, m: None)
    params.validate()
    if image is None:
        raise InputError("image attribution needs an image")
    if vlm.uses_model_forward:
        raise InputError(
            f"{vlm.model_id!r} runs its own multimodal forward (pixel values); image-patch attribution supports "
            "LLaVA-style VLMs whose visual tokens are input embeddings (tiny-vlm)"
        )
    t0 = time.perf_counter()
    prog(0.05, "Encoding the image and the prompt")
    inputs = vlm.prepare(prompt, image, max_tokens)
    if not inputs.image_positions or inputs.grid is None or inputs.image is None:
        raise InputError("the model produced no visual tokens for this image")
    prog(0.1, "Answering")
    answer, given = answer_ids(vlm, inputs, params)
    scorer = build_scorer(vlm, prompt, inputs, answer, params)
    lp0 = float(scorer(torch.zeros(1, scorer.n, dtype=torch.bool))[0][0])
    notes: list[str] = []
    prog(0.2, f"{params.method}: {scorer.n} patches, baseline {params.baseline}")
    if params.method == "occlusion":
        scores, extras = occlusion(scorer, lp0)
    else:
        scores, extras = reagent_patches(scorer, params, lp0, notes)
    prog(0.75, "Deleting patches (faithfulness)")
    faith, curve = deletion(scorer, scores, lp0, params)
    extras["forward_rows"] = scorer.passes
    prog(1.0, "Done")
    return VLMAttributionResult(
        model=vlm.model_id,
        prompt=prompt,
        method=params.method,
        baseline=params.baseline,
        answer=vlm.tokenizer.decode(answer),
        answer_tokens=[vlm.lm.token_str(i) for i in answer],
        answer_ids=answer,
        target_given=given,
        answer_logprob=lp0,
        scores=scores.numpy().astype(np.float64),
        grid=[int(inputs.grid[0]), int(inputs.grid[1])],
        image_png=base64.b64encode(image_to_png(inputs.image)).decode(),
        faithfulness=faith,
        curve=curve,
        params=params.to_json(),
        extras=extras,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
