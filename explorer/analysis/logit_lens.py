"""Logit lens across layers and generation steps ("The Hidden Life of Tokens").

At every layer (0 = the embeddings as block 0 sees them ... n_layers = after the last
block) and position, the residual stream is decoded the way the model decodes its last
layer: final norm, then the unembedding (then any logit soft-cap). Hence the last layer's
lens equals the model's own output distribution exactly — a property many tools break by
skipping the final norm.

For each (layer, position) we keep the top-k tokens; for tracked tokens (the actual next
input token, the model's final top-1 prediction at each position, and user targets) we
keep the rank in the full vocabulary, probability and logit. Generation mode decodes N
tokens (greedy, or sampling with a seed) and traces the whole sequence in one pass:
position P-1+s holds step s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.analysis.ranks import fused_readout
from explorer.backends.language import LanguageModel, capture, encode
from explorer.backends.trace import Trace
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.results import StoredFields, in_meta, in_table, register_result

MAX_GENERATE = 256
MAX_TOP_K = 100
ROLE_NEXT = "next_input"
ROLE_FINAL = "final_top1"
ROLE_TARGET = "target"
HIDDEN_TOP_K = 10  # "highly ranked" = in the lens top-10 at some layer
# Logits held at once by the lens read-out (one tile of rows x vocab, float32). Measured on 2 cores
# (bench/lens.py, SmolLM2, 3,968 rows): 128-row tiles made the unembedding GEMM ~35% slower than one
# big GEMM (each small GEMM re-streams the 113 MB head and splits poorly over threads); 2,048 rows
# (400 MB) is as fast as the whole batch while memory stays bounded for any prompt length.
READOUT_TILE_BYTES = 400 * 2**20
MIN_TILE_ROWS = 64

# Where this logit lens departs from the papers it draws on; shown in the Logit lens tab, the README
# and the JSON (`deviations`).
DEVIATIONS: dict[str, str] = {
    "final_norm": "Every layer is decoded with the model's final norm and unembedding (the logit lens of "
    "nostalgebraist 2020); no learned per-layer translators (tuned lens), so early layers read poorly.",
    "early_excitation": 'Early excitation ("The Hidden Life of Tokens"): the final prediction\'s probability '
    "peaks before the last layer. The peak is searched from layer 1: layer 0 is the input embedding read "
    "through the unembedding, which with tied embeddings is the input token itself.",
    "never_emitted_candidates": "Never-emitted candidates are related to VISTA's \"hidden genuine "
    'information" but are a different statistic: tokens in the lens top-10 at some layer >= 1 of a '
    "generation step that are never emitted, ranked by how many (layer, step) cells they occupy.",
    "generation": "Generation is traced in one pass over the prompt plus the generated tokens (step s at "
    "position prompt_len - 1 + s), greedy or seeded sampling, no other decoding strategies.",
}


@dataclass(frozen=True)
class LensParams:
    """Everything besides model and prompt that determines a lens result."""

    top_k: int = 10
    targets: tuple[str, ...] = ()
    generate: int = 0
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0

    @classmethod
    def of(
        cls,
        top_k: Any = 10,
        targets: Any = (),
        generate: Any = 0,
        sample: Any = False,
        temperature: Any = 1.0,
        seed: Any = 0,
    ) -> LensParams:
        """Validated Params from user input (numbers as ints / floats, targets as a tuple)."""
        params = cls(
            top_k=int(top_k),
            targets=tuple(targets),
            generate=int(generate),
            sample=bool(sample),
            temperature=float(temperature),
            seed=int(seed),
        )
        params.validate()
        return params

    def validate(self) -> None:
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise InputError(f"top_k must be between 1 and {MAX_TOP_K}, got {self.top_k}")
        if not 0 <= self.generate <= MAX_GENERATE:
            raise InputError(f"generate must be between 0 and {MAX_GENERATE} tokens, got {self.generate}")
        if self.sample and not self.temperature > 0:
            raise InputError(f"temperature must be > 0 for sampling, got {self.temperature}")
        for t in self.targets:
            if not t:
                raise InputError("targets: a target is empty: give the token text, e.g. ' Paris'")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"top_k": self.top_k, "targets": list(self.targets), "generate": self.generate}
        if self.generate:
            d["sample"] = self.sample
            if self.sample:
                d["temperature"] = self.temperature
                d["seed"] = self.seed
        return d


@dataclass
class PositionSummary:
    """Hidden-life summary of the final prediction at one position.

    first_top1_layer / first_top10_layer: first layer where it is rank 1 / within the top 10
    (None if never); peak_layer: layer >= 1 of its highest probability; early_excitation: the
    peak comes before the last layer.

    The peak search starts at layer 1, as `never_emitted_candidates` does: layer 0 is the embedding
    read through the unembedding, which with tied embeddings is the input token itself, not
    something the model computed.
    """

    position: int
    token: str
    token_id: int
    first_top1_layer: int | None
    first_top10_layer: int | None
    peak_layer: int
    peak_prob: float
    final_prob: float
    early_excitation: bool


@register_result
@dataclass
class LensResult(StoredFields):
    """Logit-lens result over one sequence.

    tokens:     seq strings (prompt tokens then generated tokens)
    topk_ids:   (n_layers + 1, seq, k) int64 ; topk_probs: same shape, float32
    topk_tokens:(n_layers + 1, seq, k) decoded strings (kept so reopening needs no tokenizer)
    tracked:    long-form rows {role, token, id, position, layer, rank, prob, logit}
    """

    kind: ClassVar[str] = "lens"

    model: str = in_meta()
    n_layers: int = in_meta()
    tokens: list[str] = in_meta()
    input_ids: list[int] = in_meta(json=False)
    prompt_len: int = in_meta(json=False)
    topk_ids: np.ndarray = in_table()
    topk_probs: np.ndarray = in_table()
    topk_tokens: np.ndarray = in_table()
    tracked: dict[str, np.ndarray] = in_table()
    summaries: list[PositionSummary] = in_meta(
        decode=lambda rows: [PositionSummary(**s) for s in rows], json="summary"
    )
    params: dict[str, Any] = in_meta()
    generated: list[str] = in_meta(default_factory=list, omit_empty=True)
    # shown as "never_emitted_candidates" when the run generated (see json_views)
    never_emitted: list[dict[str, Any]] = in_meta(default_factory=list, old=("hidden",), json=False)
    notes: list[str] = in_meta(default_factory=list, omit_empty=True)
    run_id: str | None = None
    seconds: float = in_meta(default=0.0)

    # ---- views ------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return len(self.tokens)

    @property
    def generation_positions(self) -> list[int]:
        """Positions whose next token was generated: step s lives at prompt_len - 1 + s."""
        return list(range(self.prompt_len - 1, self.prompt_len - 1 + len(self.generated)))

    def tracked_matrix(self, role: str, value: str = "rank", target: str | None = None) -> np.ndarray:
        """(n_layers + 1, seq) matrix of `value` for one tracked role (NaN where undefined)."""
        out = np.full((self.n_layers + 1, self.seq_len), np.nan)
        t = self.tracked
        mask = t["role"] == role
        if target is not None:
            mask &= t["token"] == target
        out[t["layer"][mask], t["position"][mask]] = t[value][mask]
        return out

    # ---- serialisation ----------------------------------------------------------------
    def json_views(self) -> dict[str, Any]:
        n_l, seq, k = self.topk_ids.shape
        lens = [
            {
                "layer": layer,
                "position": pos,
                "top": [
                    {
                        "token": str(self.topk_tokens[layer, pos, j]),
                        "id": int(self.topk_ids[layer, pos, j]),
                        "prob": float(self.topk_probs[layer, pos, j]),
                    }
                    for j in range(k)
                ],
            }
            for layer in range(n_l)
            for pos in range(seq)
        ]
        t = self.tracked
        tracked = [
            {
                "role": str(t["role"][i]),
                "token": str(t["token"][i]),
                "id": int(t["id"][i]),
                "position": int(t["position"][i]),
                "layer": int(t["layer"][i]),
                "rank": int(t["rank"][i]),
                "prob": float(t["prob"][i]),
                "logit": float(t["logit"][i]),
            }
            for i in range(len(t["role"]))
        ]
        out: dict[str, Any] = {"lens": lens, "tracked": tracked}
        if self.generated:
            out["never_emitted_candidates"] = self.never_emitted
        out["deviations"] = dict(DEVIATIONS)
        return out

    def to_tables(self) -> dict[str, pa.Table]:
        n_l, seq, k = self.topk_ids.shape
        layer, pos, rank = np.meshgrid(np.arange(n_l), np.arange(seq), np.arange(k), indexing="ij")
        topk = pa.table(
            {
                "layer": layer.ravel().astype(np.int16),
                "position": pos.ravel().astype(np.int32),
                "k": rank.ravel().astype(np.int16),
                "token_id": self.topk_ids.ravel().astype(np.int32),
                "token": self.topk_tokens.ravel().astype(str),
                "prob": self.topk_probs.ravel().astype(np.float32),
            }
        )
        t = self.tracked
        tracked = pa.table(
            {
                "role": t["role"].astype(str),
                "token": t["token"].astype(str),
                "token_id": t["id"].astype(np.int32),
                "position": t["position"].astype(np.int32),
                "layer": t["layer"].astype(np.int16),
                "rank": t["rank"].astype(np.int32),
                "prob": t["prob"].astype(np.float32),
                "logit": t["logit"].astype(np.float32),
            }
        )
        return {"topk": topk, "tracked": tracked}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        n_l = meta["n_layers"] + 1
        seq = len(meta["tokens"])
        topk = tables["topk"].sort_by([("layer", "ascending"), ("position", "ascending"), ("k", "ascending")])
        k = topk.num_rows // (n_l * seq)
        tr = tables["tracked"]
        tracked = {
            "role": np.asarray(tr["role"].to_pylist(), dtype=object),
            "token": np.asarray(tr["token"].to_pylist(), dtype=object),
            "id": tr["token_id"].to_numpy().astype(np.int64),
            "position": tr["position"].to_numpy().astype(np.int64),
            "layer": tr["layer"].to_numpy().astype(np.int64),
            "rank": tr["rank"].to_numpy().astype(np.int64),
            "prob": tr["prob"].to_numpy().astype(np.float32),
            "logit": tr["logit"].to_numpy().astype(np.float32),
        }
        return {
            "topk_ids": topk["token_id"].to_numpy().astype(np.int64).reshape(n_l, seq, k),
            "topk_probs": topk["prob"].to_numpy().astype(np.float32).reshape(n_l, seq, k),
            "topk_tokens": np.asarray(topk["token"].to_pylist(), dtype=object).reshape(n_l, seq, k),
            "tracked": tracked,
        }


def resolve_targets(lm: LanguageModel, targets: tuple[str, ...]) -> tuple[list[int], list[str]]:
    """Target strings -> first-token ids, with a note for every multi-token target."""
    ids: list[int] = []
    notes: list[str] = []
    for text in targets:
        tok = lm.tokenizer(text, add_special_tokens=False).input_ids
        if not tok:
            raise InputError(f"target {text!r} produces no tokens")
        if len(tok) > 1:
            pieces = lm.tokens_str(tok)
            notes.append(
                f"target {text!r} is {len(tok)} tokens {pieces}; tracking its first token {pieces[0]!r}"
            )
        ids.append(int(tok[0]))
    return ids, notes


def generate_ids(
    lm: LanguageModel, prompt_ids: torch.Tensor, params: LensParams, progress: ProgressFn | None = None
) -> list[int]:
    """Decode `params.generate` tokens after `prompt_ids` (seq,), greedy or seeded sampling.
    Stops early at the end-of-sequence token (which is kept)."""
    report = or_silent(progress)
    n = params.generate

    def step_done(step: int, tokens: torch.Tensor) -> None:
        report(0.1 + 0.4 * (step + 1) / n, f"Generated token {step + 1} of {n}")

    generation = lm.generate(
        prompt_ids,
        n,
        sample=params.sample,
        temperature=params.temperature,
        seed=params.seed,
        step_hook=step_done,
    )
    return generation.ids()


def readout_tile_rows(vocab: int, tile_bytes: int | None = None) -> int:
    """Rows per read-out tile: as many (vocab,) float32 logit rows as fit in `tile_bytes`
    (default `READOUT_TILE_BYTES`), at least `MIN_TILE_ROWS`."""
    return max(MIN_TILE_ROWS, (tile_bytes or READOUT_TILE_BYTES) // (4 * vocab))


def lens_from_trace(
    lm: LanguageModel,
    trace: Trace,
    *,
    top_k: int = 10,
    target_ids: list[int] | None = None,
    chunk_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Decode every (layer, position) of `trace`.

    Returns topk_ids (L+1, seq, k), topk_probs (L+1, seq, k) and tracked columns (long form).

    The (layers x positions) rows are read out in tiles of `chunk_rows` rows (default: as many
    as fit in `READOUT_TILE_BYTES` of float32 logits, see `readout_tile_rows`): one unembedding
    GEMM per tile into one reused buffer, then top-k, log-partition and the tracked tokens'
    logits and ranks on that tile before the next. Memory is O(tile x vocab), never
    O(layers x positions x vocab): a 4,096-token prompt on a 30-layer model would need 25 GB.
    """
    target_ids = target_ids or []
    n_l, seq, d = trace.residual.shape
    chunk_rows = chunk_rows or readout_tile_rows(lm.vocab_size)
    ids = trace.input_ids.to(lm.device)
    final_top1 = trace.logits.argmax(-1)  # (seq,)
    # tracked ids per position: [next_input, final_top1, *targets]; next_input undefined at the end
    next_input = torch.cat([ids[1:], ids[-1:]])
    per_pos = torch.stack(
        [next_input, final_top1] + [torch.full_like(ids, t) for t in target_ids], dim=1
    )  # (seq, T)
    n_t = per_pos.shape[1]
    rows = trace.residual.reshape(n_l * seq, d)
    row_ids = per_pos.repeat(n_l, 1)  # (rows, T)
    topk_ids = torch.empty(n_l * seq, top_k, dtype=torch.long)
    topk_probs = torch.empty(n_l * seq, top_k)
    ranks = torch.empty(n_l * seq, n_t, dtype=torch.long)
    probs = torch.empty(n_l * seq, n_t)
    logits_t = torch.empty(n_l * seq, n_t)
    # The last layer's lens *is* the model's output (final norm + unembedding of the last
    # residual), which the forward pass already computed: reuse it instead of unembedding again.
    n_unembed = (n_l - 1) * seq
    head_weight: torch.Tensor = lm.unembed_module().weight  # type: ignore[assignment]
    buffer = torch.empty(
        max(1, min(chunk_rows, n_unembed)), lm.vocab_size, dtype=head_weight.dtype, device=lm.device
    )
    with torch.inference_mode():
        start = 0
        while start < rows.shape[0]:
            stop = min(start + chunk_rows, rows.shape[0])
            if start >= n_unembed:
                logits = trace.logits[start - n_unembed : stop - n_unembed].to(lm.device).float()
            else:
                stop = min(stop, n_unembed)
                logits = lm.unembed(rows[start:stop].to(lm.device), out=buffer).float()
            top_v, top_i = logits.topk(top_k, dim=-1)
            lse, tl, rk = fused_readout(logits, row_ids[start:stop])
            topk_ids[start:stop] = top_i.cpu()
            topk_probs[start:stop] = (top_v - lse).exp().cpu()
            logits_t[start:stop] = tl.cpu()
            probs[start:stop] = (tl - lse).exp().cpu()
            ranks[start:stop] = rk.cpu()
            start = stop
    layer = np.repeat(np.arange(n_l), seq)
    position = np.tile(np.arange(seq), n_l)
    roles = [ROLE_NEXT, ROLE_FINAL] + [ROLE_TARGET] * len(target_ids)
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("role", "id", "position", "layer", "rank", "prob", "logit")
    }
    for j, role in enumerate(roles):
        keep = np.ones(n_l * seq, dtype=bool)
        if role == ROLE_NEXT:
            keep = position < seq - 1
        cols["role"].append(np.full(int(keep.sum()), role, dtype=object))
        cols["id"].append(row_ids[:, j].cpu().numpy()[keep])
        cols["position"].append(position[keep])
        cols["layer"].append(layer[keep])
        cols["rank"].append(ranks[:, j].numpy()[keep])
        cols["prob"].append(probs[:, j].numpy()[keep])
        cols["logit"].append(logits_t[:, j].numpy()[keep])
    tracked = {k: np.concatenate(v) for k, v in cols.items()}
    return (
        topk_ids.reshape(n_l, seq, top_k).numpy(),
        topk_probs.reshape(n_l, seq, top_k).numpy(),
        tracked,
    )


def summarize_positions(
    n_layers: int, tokens_of: Callable[[int], str], tracked: dict[str, np.ndarray], seq: int
) -> list[PositionSummary]:
    """Per position: when the final prediction enters the top-1/top-10, and where it peaks."""
    mask = tracked["role"] == ROLE_FINAL
    rank = np.zeros((n_layers + 1, seq), dtype=np.int64)
    prob = np.zeros((n_layers + 1, seq), dtype=np.float64)
    ids = np.zeros(seq, dtype=np.int64)
    rank[tracked["layer"][mask], tracked["position"][mask]] = tracked["rank"][mask]
    prob[tracked["layer"][mask], tracked["position"][mask]] = tracked["prob"][mask]
    ids[tracked["position"][mask]] = tracked["id"][mask]
    out = []
    for p in range(seq):
        top1 = np.nonzero(rank[:, p] == 1)[0]
        top10 = np.nonzero(rank[:, p] <= 10)[0]
        first = 1 if n_layers >= 1 else 0  # layer 0 is the input embedding, not a computed state
        peak = first + int(np.argmax(prob[first:, p]))
        out.append(
            PositionSummary(
                position=p,
                token=tokens_of(int(ids[p])),
                token_id=int(ids[p]),
                first_top1_layer=int(top1[0]) if len(top1) else None,
                first_top10_layer=int(top10[0]) if len(top10) else None,
                peak_layer=peak,
                peak_prob=float(prob[peak, p]),
                final_prob=float(prob[n_layers, p]),
                early_excitation=peak < n_layers,
            )
        )
    return out


def never_emitted_candidates(
    topk_ids: np.ndarray,
    topk_probs: np.ndarray,
    topk_tokens: np.ndarray,
    steps: list[int],
    emitted: list[int],
    limit: int = 20,
) -> list[dict[str, Any]]:
    """Tokens that reach the lens top-10 at some (layer >= 1, generation step) but are never
    emitted, most persistent first (`cells`: how many (layer, step) cells they occupy).

    Related to VISTA's "hidden genuine information" ("The Hidden Life of Tokens") but a different,
    simpler statistic: a count of top-10 lens cells, not VISTA's measure (see `DEVIATIONS`)."""
    emitted_set = set(emitted)
    k = min(HIDDEN_TOP_K, topk_ids.shape[2])
    stats: dict[int, dict[str, Any]] = {}
    for s, pos in enumerate(steps):
        for layer in range(1, topk_ids.shape[0]):
            for j in range(k):
                tid = int(topk_ids[layer, pos, j])
                if tid in emitted_set:
                    continue
                st = stats.setdefault(
                    tid,
                    {
                        "token": str(topk_tokens[layer, pos, j]),
                        "id": tid,
                        "cells": 0,
                        "best_rank": 10**9,
                        "max_prob": 0.0,
                        "steps": set(),
                    },
                )
                st["cells"] += 1
                st["best_rank"] = min(st["best_rank"], j + 1)
                st["max_prob"] = max(st["max_prob"], float(topk_probs[layer, pos, j]))
                st["steps"].add(s)
    ranked = sorted(stats.values(), key=lambda d: (-d["cells"], d["best_rank"], -d["max_prob"]))[:limit]
    return [{**d, "steps": sorted(d["steps"]), "n_steps": len(d["steps"])} for d in ranked]


def logit_lens(
    lm: LanguageModel,
    prompt: str,
    params: LensParams | None = None,
    *,
    top_k: int = 10,
    targets: list[str] | tuple[str, ...] = (),
    generate: int = 0,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> LensResult:
    """Run the logit lens on `prompt` (optionally after generating `generate` tokens).

    `params`: the `LensParams` (validated by the caller, e.g. the API's runner). Without it, the
    keywords build and validate one (a convenience for notebooks and tests)."""
    prog = progress or (lambda f, m: None)
    if params is None:
        params = LensParams.of(top_k, targets, generate, sample, temperature, seed)
    t0 = time.perf_counter()
    prompt_ids = encode(lm, prompt, max_tokens)
    target_ids, notes = resolve_targets(lm, params.targets)
    generated: list[int] = []
    if params.generate:
        prog(0.1, f"Generating {params.generate} tokens")
        generated = generate_ids(lm, prompt_ids, params, prog)
    ids = torch.cat([prompt_ids, torch.tensor(generated, dtype=torch.long)])
    prog(0.5, "Tracing one forward pass")
    trace = capture(lm, ids, attentions=False)
    prog(0.7, "Decoding every layer")
    topk_ids, topk_probs, tracked = lens_from_trace(lm, trace, top_k=params.top_k, target_ids=target_ids)
    vocab_cache: dict[int, str] = {}

    def tok(i: int) -> str:
        if i not in vocab_cache:
            vocab_cache[i] = lm.token_str(i)
        return vocab_cache[i]

    topk_tokens = np.vectorize(tok, otypes=[object])(topk_ids)
    tracked["token"] = np.asarray([tok(int(i)) for i in tracked["id"]], dtype=object)
    summaries = summarize_positions(trace.n_layers, tok, tracked, trace.seq_len)
    prompt_len = int(prompt_ids.numel())
    steps = list(range(prompt_len - 1, prompt_len - 1 + len(generated)))
    never_emitted = (
        never_emitted_candidates(topk_ids, topk_probs, topk_tokens, steps, generated) if generated else []
    )
    prog(1.0, "Done")
    return LensResult(
        model=lm.model_id,
        n_layers=trace.n_layers,
        tokens=trace.tokens,
        input_ids=trace.input_ids.tolist(),
        prompt_len=prompt_len,
        topk_ids=topk_ids,
        topk_probs=topk_probs,
        topk_tokens=topk_tokens,
        tracked=tracked,
        summaries=summaries,
        params=params.to_json(),
        generated=[tok(i) for i in generated],
        never_emitted=never_emitted,
        notes=notes,
        seconds=time.perf_counter() - t0,
    )
