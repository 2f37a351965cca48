"""LLM-Microscope measures per layer and token (Razzhigaev et al. 2024/2025, "Your Transformer is
Secretly Linear" and "LLM-Microscope").

- Token-level non-linearity: X_l, Y_l are the centred residuals of layers l and l+1 scaled to unit
  Frobenius norm; A_l = argmin ||X_l A - Y_l||_F (least squares); the token's error
  E_i^l = ||x_i^l A_l - y_i^l||_2. The layer's linearity score is 1 - ||X_l A_l - Y_l||_F^2 (the
  paper's Procrustes similarity). A short prompt has fewer tokens than dimensions, so a map fitted
  on it alone is exact and E = 0; A_l is therefore fitted on a fixed reference text (CPython's
  pydoc topics, always present offline; the paper uses enwik8) and applied to the prompt's tokens,
  normalised with the reference's mean and scale (the error is in units of the reference's RMS
  row norm).
- Contextualisation: the paper trains a decoder that reconstructs the prefix from a token's
  representation (C_i = -log P(prefix | e_i)). Training that is out of reach here; we use a linear
  proxy: a ridge probe per layer, fitted on the reference text, maps a token's residual to the mean
  input embedding of its `PREFIX_WINDOW` preceding tokens; the score is the cosine between the
  probe's output and the true prefix mean (higher = more of the prefix is recoverable).
- Intrinsic dimension per layer: TwoNN (Facco et al. 2017) as in the paper's toolkit (centred and
  scaled points, ratio of second to first neighbour distance, regression through the origin on the
  first fifth of the sorted ratios), on the prompt's tokens and on the reference tokens.
- The paper's logit lens: the LM head applied to each layer's hidden state without the final norm
  (the last layer's hidden state already has it), top-1 token and its -log p; next to ours, which
  applies the final norm at every layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.analysis.atlas.token_types import special_ids, token_type, word_class
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result

REFERENCE_TOKENS = 1536
REFERENCE_CHUNK = 256
PREFIX_WINDOW = 8
RIDGE = 1e-2
MIN_ID_POINTS = 12
MAX_REFERENCE_TOKENS = 8192


@dataclass(frozen=True)
class MicroscopeParams:
    """Everything besides model and prompt that determines the LLM-Microscope measures.

    reference_tokens: tokens of the reference text the layer maps and context probes are fitted on
    prefix_window:    preceding tokens whose mean input embedding the context probe recovers
    """

    reference_tokens: int = REFERENCE_TOKENS
    prefix_window: int = PREFIX_WINDOW

    def validate(self) -> None:
        if not 2 * REFERENCE_CHUNK <= self.reference_tokens <= MAX_REFERENCE_TOKENS:
            raise InputError(
                f"reference_tokens must be in {2 * REFERENCE_CHUNK}..{MAX_REFERENCE_TOKENS}, got {self.reference_tokens}"
            )
        if not 1 <= self.prefix_window <= REFERENCE_CHUNK // 2:
            raise InputError(f"prefix_window must be in 1..{REFERENCE_CHUNK // 2}, got {self.prefix_window}")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


def reference_text() -> str:
    """Natural English prose that is always present: CPython's pydoc topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def intrinsic_dimension(points: np.ndarray) -> float:
    """TwoNN estimate of the intrinsic dimension of `points` (n, d), as in the LLM-Microscope toolkit."""
    x = points.astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    avg = np.sqrt((x * x).sum(axis=1)).mean()
    x = x / max(avg, 1e-12)
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    np.fill_diagonal(d2, np.inf)
    part = np.sort(np.sqrt(d2), axis=1)[:, :2]
    eps = 1e-8
    r1, r2 = part[:, 0], part[:, 1]
    mu = np.where(r1 < eps, -1.0, r2 / np.maximum(r1, eps))
    mu = np.sort(mu)
    useless = int((mu <= 1 + eps).sum())
    mu = mu[useless:]
    n = mu.size
    if n < 3:
        return float("nan")
    f_emp = np.arange(1 + useless, n + 1 + useless) / (n + useless)
    use = min(n // 5, n - 1)
    use = max(use, 2)
    mu_log = np.log(mu)[:use]
    dist_log = -np.log(1 - f_emp)[:use]
    return float((mu_log * dist_log).sum() / max((mu_log * mu_log).sum(), 1e-12))


def prefix_targets(
    embed: np.ndarray, ids: np.ndarray, window: int = PREFIX_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) mean input embedding of each token's `window` preceding tokens, and a mask of tokens that
    have a prefix."""
    vecs = embed[ids]
    csum = np.concatenate([np.zeros((1, vecs.shape[1])), np.cumsum(vecs, axis=0)])
    out = np.zeros_like(vecs)
    has = np.zeros(len(ids), dtype=bool)
    for i in range(len(ids)):
        lo = max(0, i - window)
        if i > lo:
            out[i] = (csum[i] - csum[lo]) / (i - lo)
            has[i] = True
    return out, has


@dataclass
class ReferenceFit:
    """Per layer l (0..L-1 for maps, 0..L for probes and stats), fitted on the reference text."""

    mean: list[np.ndarray]  # (d,) per layer
    scale: list[float]  # RMS row norm of the centred residual per layer
    maps: list[np.ndarray]  # A_l (d, d), l = 0..L-1
    linearity: list[float]  # the paper's linearity score per step l -> l+1
    probes: list[np.ndarray]  # (d + 1, d) ridge weights per layer (bias row last)
    probe_r2: list[float]
    intrinsic_dim: list[float]
    n_tokens: int


def _capture_reference(lm: Any, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    from explorer.trace import capture

    ids = lm.tokenizer(reference_text(), add_special_tokens=False, return_tensors="pt").input_ids[0][
        :n_tokens
    ]
    chunks = []
    id_chunks = []
    for start in range(0, int(ids.numel()), REFERENCE_CHUNK):
        part = ids[start : start + REFERENCE_CHUNK]
        if part.numel() < 2:
            break
        chunks.append(capture(lm, part, attentions=False).residual.cpu().numpy())  # (L+1, n, d)
        id_chunks.append(part.numpy())
    return np.concatenate(chunks, axis=1), np.concatenate(id_chunks)


def fit_reference(
    lm: Any, embed: np.ndarray, n_tokens: int = REFERENCE_TOKENS, window: int = PREFIX_WINDOW
) -> ReferenceFit:
    res, ids = _capture_reference(lm, n_tokens)
    n_layers = res.shape[0] - 1
    mean, scale = [], []
    for layer in range(n_layers + 1):
        x = res[layer].astype(np.float64)
        mu = x.mean(axis=0)
        mean.append(mu)
        scale.append(float(np.sqrt(((x - mu) ** 2).sum(axis=1).mean())))
    normed = [(res[layer] - mean[layer]) / max(scale[layer], 1e-12) for layer in range(n_layers + 1)]
    maps, linearity = [], []
    for layer in range(n_layers):
        x, y = normed[layer], normed[layer + 1]
        a, *_ = np.linalg.lstsq(x, y, rcond=None)
        err = float(((x @ a - y) ** 2).sum() / max((y**2).sum(), 1e-12))
        maps.append(a)
        linearity.append(1.0 - err)
    # context probes: residual -> mean embedding of the prefix window (tokens inside one chunk only)
    targets = np.zeros((ids.size, embed.shape[1]))
    has = np.zeros(ids.size, dtype=bool)
    for start in range(0, ids.size, REFERENCE_CHUNK):
        t, h = prefix_targets(embed, ids[start : start + REFERENCE_CHUNK], window)
        targets[start : start + t.shape[0]] = t
        has[start : start + t.shape[0]] = h
    probes, r2 = [], []
    y = targets[has]
    for layer in range(n_layers + 1):
        x = np.concatenate([normed[layer][has], np.ones((int(has.sum()), 1))], axis=1)
        gram = x.T @ x + RIDGE * x.shape[0] * np.eye(x.shape[1])
        w = np.linalg.solve(gram, x.T @ y)
        pred = x @ w
        r2.append(float(1 - ((pred - y) ** 2).sum() / max(((y - y.mean(axis=0)) ** 2).sum(), 1e-12)))
        probes.append(w)
    dims = [intrinsic_dimension(res[layer]) for layer in range(n_layers + 1)]
    return ReferenceFit(mean, scale, maps, linearity, probes, r2, dims, int(ids.size))


@register_result
@dataclass
class MicroscopeResult(StoredFields):
    """LLM-Microscope measures of one prompt.

    nonlinearity:   (L, seq) E_i^l for the step l -> l+1 (l = 0..L-1)
    context:        (L+1, seq) prefix-recoverability proxy (cosine; NaN for the first token)
    paper_lens_*:   (L+1, seq) the paper's lens top-1 token and its -log p
    our_lens_*:     (L+1, seq) our lens (final norm at every layer) top-1 token and its probability
    layers:         per layer: linearity (reference), id_prompt, id_reference, probe_r2
    """

    kind: ClassVar[str] = "microscope"

    model: str = in_meta()
    prompt: str = in_meta(json=False)
    tokens: list[str] = in_meta()
    word_classes: list[str] = in_meta(json=False)
    nonlinearity: np.ndarray = in_table()
    context: np.ndarray = in_table()
    paper_lens_token: list[list[str]] = in_table()
    paper_lens_nll: np.ndarray = in_table()
    our_lens_token: list[list[str]] = in_table()
    our_lens_prob: np.ndarray = in_table()
    layers: dict[str, list[float]] = in_table()
    params: dict[str, Any] = in_meta(json=False)
    seconds: float = in_meta(decode=float)
    notes: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    @property
    def n_layers(self) -> int:
        return int(self.context.shape[0] - 1)

    @property
    def seq_len(self) -> int:
        return len(self.tokens)

    def context_memory(self) -> np.ndarray:
        """(seq,) each token's mean context score over layers (NaN for the first token)."""
        with np.errstate(all="ignore"):
            return np.nanmean(self.context, axis=0) if self.seq_len > 1 else np.full(self.seq_len, np.nan)

    def ranking(self) -> list[dict[str, Any]]:
        """Tokens ranked by context memory (highest first), with their class and mean non-linearity."""
        mem = self.context_memory()
        nonlin = self.nonlinearity.mean(axis=0)
        order = [int(i) for i in np.argsort(-np.nan_to_num(mem, nan=-np.inf), kind="stable")]
        return [
            {
                "position": i,
                "token": self.tokens[i],
                "class": self.word_classes[i],
                "context_memory": None if np.isnan(mem[i]) else float(mem[i]),
                "nonlinearity": float(nonlin[i]),
            }
            for i in order
        ]

    def class_ranking(self) -> list[dict[str, Any]]:
        mem = self.context_memory()
        out = []
        for cls in dict.fromkeys(self.word_classes):
            vals = [mem[i] for i, c in enumerate(self.word_classes) if c == cls and not np.isnan(mem[i])]
            if vals:
                out.append({"class": cls, "tokens": len(vals), "mean_context_memory": float(np.mean(vals))})
        return sorted(out, key=lambda r: -r["mean_context_memory"])

    def cells_table(self) -> pa.Table:
        n_l, seq = self.context.shape
        layer, pos = np.meshgrid(np.arange(n_l), np.arange(seq), indexing="ij")
        nonlin = np.full((n_l, seq), np.nan)
        nonlin[:-1] = self.nonlinearity
        return pa.table(
            {
                "layer": layer.ravel().astype(np.int16),
                "position": pos.ravel().astype(np.int32),
                "token": pa.array([self.tokens[p] for p in pos.ravel()], pa.string()),
                "nonlinearity": nonlin.ravel().astype(np.float32),
                "context": self.context.ravel().astype(np.float32),
                "paper_lens_token": pa.array([t for row in self.paper_lens_token for t in row], pa.string()),
                "paper_lens_nll": self.paper_lens_nll.ravel().astype(np.float32),
                "our_lens_token": pa.array([t for row in self.our_lens_token for t in row], pa.string()),
                "our_lens_prob": self.our_lens_prob.ravel().astype(np.float32),
            }
        )

    def layers_table(self) -> pa.Table:
        return pa.table({"layer": np.arange(self.n_layers + 1, dtype=np.int16), **{
            k: pa.array(v, pa.float64()) for k, v in self.layers.items()}})  # fmt: skip

    def json_views(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "layers": _no_nan(self.layers_table().to_pylist()),
            "cells": _no_nan(self.cells_table().to_pylist()),
            "ranking": self.ranking(),
            "class_ranking": self.class_ranking(),
        }

    def to_tables(self) -> dict[str, pa.Table]:
        return {"cells": self.cells_table(), "layers": self.layers_table()}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        cells = tables["cells"].sort_by([("layer", "ascending"), ("position", "ascending")])
        layers = tables["layers"].sort_by("layer")
        seq = len(meta["tokens"])
        n_l = cells.num_rows // seq

        def grid(name: str) -> np.ndarray:
            return cells[name].to_numpy(zero_copy_only=False).astype(np.float64).reshape(n_l, seq)

        def words(name: str) -> list[list[str]]:
            flat = cells[name].to_pylist()
            return [flat[i * seq : (i + 1) * seq] for i in range(n_l)]

        return {
            "nonlinearity": grid("nonlinearity")[:-1],
            "context": grid("context"),
            "paper_lens_token": words("paper_lens_token"),
            "paper_lens_nll": grid("paper_lens_nll"),
            "our_lens_token": words("our_lens_token"),
            "our_lens_prob": grid("our_lens_prob"),
            "layers": {
                k: [float(v) for v in layers[k].to_pylist()] for k in layers.column_names if k != "layer"
            },
        }


def _no_nan(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON-safe rows: NaN (no value, e.g. the first token's context) becomes None."""
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()} for row in rows
    ]


@torch.inference_mode()
def microscope(
    lm: Any,
    prompt: str,
    *,
    max_tokens: int,
    params: MicroscopeParams | None = None,
    progress: ProgressFn | None = None,
) -> MicroscopeResult:
    from explorer.trace import capture, encode

    params = params or MicroscopeParams()
    params.validate()
    t0 = time.perf_counter()
    say = progress or (lambda f, m: None)
    ids = encode(lm, prompt, max_tokens)
    if ids.numel() < 2:
        raise InputError("the LLM-Microscope measures need a prompt of at least 2 tokens")
    embed = lm.embed_module().weight.detach().float().cpu().numpy()
    say(0.05, f"Fitting the layer maps on {params.reference_tokens} reference tokens")
    ref = fit_reference(lm, embed, params.reference_tokens, params.prefix_window)
    say(0.7, "Measuring the prompt")
    trace = capture(lm, ids, attentions=False)
    res = trace.residual.cpu().numpy().astype(np.float64)  # (L+1, seq, d)
    n_layers = res.shape[0] - 1
    seq = trace.seq_len
    normed = [(res[layer] - ref.mean[layer]) / max(ref.scale[layer], 1e-12) for layer in range(n_layers + 1)]
    nonlin = np.stack(
        [
            np.linalg.norm(normed[layer] @ ref.maps[layer] - normed[layer + 1], axis=1)
            for layer in range(n_layers)
        ]
    )
    targets, has = prefix_targets(embed, ids.numpy(), params.prefix_window)
    context = np.full((n_layers + 1, seq), np.nan)
    for layer in range(n_layers + 1):
        x = np.concatenate([normed[layer], np.ones((seq, 1))], axis=1)
        pred = x @ ref.probes[layer]
        cos = (pred * targets).sum(axis=1) / np.maximum(
            np.linalg.norm(pred, axis=1) * np.linalg.norm(targets, axis=1), 1e-12
        )
        context[layer, has] = cos[has]
    # the two lenses
    hidden = trace.residual.to(lm.device)
    paper_tok, ours_tok = [], []
    paper_nll = np.zeros((n_layers + 1, seq))
    ours_prob = np.zeros((n_layers + 1, seq))
    for layer in range(n_layers + 1):
        h = hidden[layer]
        paper_logits = lm.unembed(h, normalize=layer == n_layers).float()
        our_logits = lm.unembed(h, normalize=True).float()
        pl = torch.log_softmax(paper_logits, dim=-1)
        top = pl.argmax(dim=-1)
        paper_nll[layer] = (-pl.gather(1, top.unsqueeze(1)).squeeze(1)).cpu().numpy()
        paper_tok.append(lm.tokens_str(top.tolist()))
        ol = torch.softmax(our_logits, dim=-1)
        otop = ol.argmax(dim=-1)
        ours_prob[layer] = ol.gather(1, otop.unsqueeze(1)).squeeze(1).cpu().numpy()
        ours_tok.append(lm.tokens_str(otop.tolist()))
    id_prompt = [
        intrinsic_dimension(res[layer]) if seq >= MIN_ID_POINTS else float("nan")
        for layer in range(n_layers + 1)
    ]
    specials = special_ids(lm.tokenizer)
    classes = [
        word_class(t, token_type(t, int(i), specials))
        for t, i in zip(trace.tokens, ids.tolist(), strict=True)
    ]
    notes = [
        f"Layer maps A_l and context probes are fitted on {ref.n_tokens} reference tokens (CPython's pydoc "
        "topics; the paper uses enwik8) and applied to the prompt.",
        "Contextualisation is a linear proxy (ridge probe from the residual to the mean input embedding of the "
        f"{params.prefix_window} preceding tokens, cosine), not the paper's trained prefix decoder.",
        "The paper's lens: LM head without the final norm (except at the last layer); ours: final norm + LM head "
        "at every layer.",
        "Residuals are the raw block outputs (hooks), as in the other tabs; the paper uses HF's hidden_states, "
        "which differ only at the last layer (final norm applied).",
    ]
    if seq < MIN_ID_POINTS:
        notes.append(
            f"Intrinsic dimension of the prompt needs at least {MIN_ID_POINTS} tokens; only the reference's is shown."
        )
    return MicroscopeResult(
        model=lm.model_id,
        prompt=prompt,
        tokens=trace.tokens,
        word_classes=classes,
        nonlinearity=nonlin,
        context=context,
        paper_lens_token=paper_tok,
        paper_lens_nll=paper_nll,
        our_lens_token=ours_tok,
        our_lens_prob=ours_prob,
        layers={
            "linearity": ref.linearity + [float("nan")],
            "id_prompt": id_prompt,
            "id_reference": ref.intrinsic_dim,
            "probe_r2": ref.probe_r2,
        },
        params={**params.to_json(), "ridge": RIDGE},
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
