"""Compare two stored runs of the same kind: aligned views and their differences (B minus A).

Works from the store alone (no model). Runs are aligned by position (the first
min(seq_a, seq_b) positions; a note says when the tokens differ, e.g. two prompts) and, for
models of different depth, by relative depth (layer l of the deeper run maps to the nearest
fraction of the shallower one's layers; a note says so).

- lens: `top1_agree` (layers x positions, 1 where both runs' lens top-1 tokens are equal),
  `next_log_rank_delta` (log10 rank of the actual next input token, B - A: negative = B ranks it
  higher), `final_prob_delta` (probability of each run's own final prediction, B - A).
- attention: `attention_delta` (positions x positions, mean over layers and heads, B - A),
  `head_delta` (layers x heads, mean |B - A| per head) and `entropy_delta` (layers x heads).
- other kinds: the parameter differences only (a note says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from explorer.errors import InputError
from explorer.store import RunInfo, Store


@dataclass
class RunComparison:
    """Two runs side by side. matrices: name -> 2-D float array (difference views, B minus A)."""

    kind: str
    run_a: RunInfo
    run_b: RunInfo
    tokens_a: list[str]
    tokens_b: list[str]
    aligned_positions: int
    summary: dict[str, Any]
    matrices: dict[str, np.ndarray] = field(default_factory=dict)
    param_changes: dict[str, list[Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_a": self.run_a.to_dict(),
            "run_b": self.run_b.to_dict(),
            "tokens_a": self.tokens_a,
            "tokens_b": self.tokens_b,
            "aligned_positions": self.aligned_positions,
            "summary": self.summary,
            "param_changes": self.param_changes,
            "differences": {name: _json_matrix(m) for name, m in self.matrices.items()},
            "notes": self.notes,
        }


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    """Rows of floats rounded to 6 digits, None where undefined (NaN/inf are not JSON)."""
    return [[round(float(v), 6) if np.isfinite(v) else None for v in row] for row in np.atleast_2d(matrix)]


def _layer_map(n_from: int, n_to: int) -> np.ndarray:
    """Indices into a run with `n_to` layer rows for each of `n_from` rows (relative depth)."""
    if n_from == n_to:
        return np.arange(n_from)
    return np.rint(np.linspace(0, n_to - 1, n_from)).astype(int)


def _param_changes(a: RunInfo, b: RunInfo) -> dict[str, list[Any]]:
    keys = sorted(set(a.params) | set(b.params))
    changes = {k: [a.params.get(k), b.params.get(k)] for k in keys if a.params.get(k) != b.params.get(k)}
    if a.model_id != b.model_id:
        changes["model"] = [a.model_id, b.model_id]
    if a.prompt != b.prompt:
        changes["prompt"] = [a.prompt, b.prompt]
    return changes


def _compare_lens(ra: Any, rb: Any, out: RunComparison) -> None:
    from explorer.analysis.logit_lens import ROLE_FINAL, ROLE_NEXT

    n = out.aligned_positions
    rows = max(ra.n_layers, rb.n_layers) + 1
    map_a = _layer_map(rows, ra.n_layers + 1)
    map_b = _layer_map(rows, rb.n_layers + 1)
    if ra.n_layers != rb.n_layers:
        out.notes.append(
            f"different depths ({ra.n_layers} vs {rb.n_layers} layers): layers are aligned by relative depth"
        )
    top_a = ra.topk_tokens[map_a, :n, 0]
    top_b = rb.topk_tokens[map_b, :n, 0]
    agree = (top_a == top_b).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rank_a = np.log10(ra.tracked_matrix(ROLE_NEXT, "rank")[map_a, :n])
        rank_b = np.log10(rb.tracked_matrix(ROLE_NEXT, "rank")[map_b, :n])
    prob_a = ra.tracked_matrix(ROLE_FINAL, "prob")[map_a, :n]
    prob_b = rb.tracked_matrix(ROLE_FINAL, "prob")[map_b, :n]
    out.matrices = {
        "top1_agree": agree,
        "next_log_rank_delta": rank_b - rank_a,
        "final_prob_delta": prob_b - prob_a,
    }
    last = min(ra.prompt_len, rb.prompt_len) - 1
    sa, sb = ra.summaries[last], rb.summaries[last]
    out.summary = {
        "top1_agreement": float(agree.mean()) if agree.size else None,
        "top1_agreement_last_layer": float(agree[-1].mean()) if agree.size else None,
        "mean_abs_final_prob_delta": float(np.nanmean(np.abs(prob_b - prob_a))) if n else None,
        "last_prompt_position": last,
        "prediction": [sa.token, sb.token],
        "prediction_prob": [float(sa.final_prob), float(sb.final_prob)],
        "first_top1_layer": [sa.first_top1_layer, sb.first_top1_layer],
    }


def _compare_attention(ra: Any, rb: Any, out: RunComparison) -> None:
    n = out.aligned_positions
    blocked_a, blocked_b = getattr(ra, "spans", None), getattr(rb, "spans", None)
    if blocked_a is not None or blocked_b is not None:
        if blocked_a != blocked_b:
            # a long prompt stores block-aggregated matrices: only the same blocks line up
            out.notes.append("long prompts store block-aggregated attention: runs with different lengths are "
                             "compared by their per-head entropy and sink shares only")  # fmt: skip
            if ra.entropy.shape == rb.entropy.shape:
                out.matrices = {"entropy_delta": (rb.entropy - ra.entropy).astype(float)}
                out.summary["mean_abs_entropy_delta"] = float(np.abs(rb.entropy - ra.entropy).mean())
            return
        n = len(blocked_a or [])
        out.notes.append(f"long prompts: attention compared over {n} blocks of tokens (what is stored)")
    mean_a = ra.attentions[:, :, :n, :n].mean(axis=(0, 1))
    mean_b = rb.attentions[:, :, :n, :n].mean(axis=(0, 1))
    out.matrices = {"attention_delta": (mean_b - mean_a).astype(float)}
    if ra.attentions.shape[:2] == rb.attentions.shape[:2]:
        diff = np.abs(rb.attentions[:, :, :n, :n] - ra.attentions[:, :, :n, :n]).mean(axis=(2, 3))
        out.matrices["head_delta"] = diff.astype(float)
        out.matrices["entropy_delta"] = (rb.entropy - ra.entropy).astype(float)
        layer, head = np.unravel_index(int(np.argmax(diff)), diff.shape)
        out.summary["most_changed_head"] = {
            "layer": int(layer),
            "head": int(head),
            "mean_abs_delta": float(diff.max()),
        }
    else:
        out.notes.append("different layer/head counts: only the mean attention pattern is compared")
    out.summary["mean_abs_attention_delta"] = float(np.abs(mean_b - mean_a).mean()) if n else None


def compare_runs(store: Store, run_a: str, run_b: str) -> RunComparison:
    """Compare stored runs `run_a` and `run_b` (same kind). InputError for unknown ids or kinds."""
    info_a, info_b = store.info(run_a.strip()), store.info(run_b.strip())
    if info_a.kind != info_b.kind:
        raise InputError(f"run {info_a.run_id} is a {info_a.kind!r} run and {info_b.run_id} a {info_b.kind!r} run: "
                         "compare two runs of the same kind")  # fmt: skip
    ra, rb = store.load(info_a.run_id), store.load(info_b.run_id)
    tokens_a = list(getattr(ra, "tokens", []) or [])
    tokens_b = list(getattr(rb, "tokens", []) or [])
    out = RunComparison(
        kind=info_a.kind,
        run_a=info_a,
        run_b=info_b,
        tokens_a=tokens_a,
        tokens_b=tokens_b,
        aligned_positions=min(len(tokens_a), len(tokens_b)),
        summary={},
        param_changes=_param_changes(info_a, info_b),
    )
    if tokens_a and tokens_b and tokens_a[: out.aligned_positions] != tokens_b[: out.aligned_positions]:
        out.notes.append("the runs' tokens differ: positions are compared one to one (first "
                         f"{out.aligned_positions} positions)")  # fmt: skip
    if info_a.kind == "lens":
        _compare_lens(ra, rb, out)
    elif info_a.kind == "attention" and hasattr(ra, "attentions"):
        _compare_attention(ra, rb, out)
    else:
        out.notes.append(f"no aligned difference view for {info_a.kind!r} runs yet: parameters are compared")
    return out


def compare(run_a: str, run_b: str, db: Any = None, settings: Any = None) -> RunComparison:
    """Public API: compare two stored runs of the default (or given) store; `.to_dict()` is the
    CLI's JSON (`explorer compare RUN_A RUN_B`)."""
    from explorer.api import open_store

    store = open_store(db, settings)
    if store is None:
        raise InputError("compare needs a store")
    return compare_runs(store, run_a, run_b)
