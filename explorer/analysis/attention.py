"""Attention patterns of a causal LM over one captured trace: per-head matrices, rollout,
attention flow, per-head entropy and attention-sink shares.

Everything here is a pure function of the attention tensor a single `capture` returned
(`Trace.attentions`, shape (n_layers, n_heads, seq, seq), query x key, rows sum to 1), so
every view of a run comes from the one forward pass of that request.

Layers are numbered by block: attention layer l is block l (0-based). In the rollout and
flow graphs, node layer 0 is the input tokens and node layer l + 1 is the output of block l.

The maths (rollout, attention flow, row entropy) lives in `analysis.attention_math`, shared
with vision attention and attention-based attribution.

- Rollout (Abnar & Zuidema 2020): per block A'_l = 0.5 * mean_heads(A_l) + 0.5 * I (the
  residual connection), rows re-normalised; the rollout after block l is the product
  A'_l @ A'_{l-1} @ ... @ A'_0. Rows of a product of row-stochastic matrices sum to 1.
- Attention flow (same paper): exact max-flow per (output, input) pair, so it is computed only
  for chosen output positions and prompts of at most `MAX_FLOW_TOKENS` tokens.
- Entropy: Shannon entropy (bits) of each attention row, averaged over queries 1..seq-1
  (query 0 can only attend to itself, entropy 0).
- Sink share: the attention mass a head gives a set of key positions (the first token, or
  punctuation / delimiter / special tokens), averaged over queries 1..seq-1 (query 0 has no
  choice). The "initial token" sink (Xiao et al. 2023 "attention sinks"; discussed again by
  ZeroTuning and LLM-Microscope) shows up as a share near 1 in most heads of middle layers.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.analysis.attention_math import (
    attention_flow,
    attention_rollout,
    check_attention_tokens,
    check_attentions,
    row_entropy,
)
from explorer.backends.language import LanguageModel, capture, encode
from explorer.backends.trace import Trace
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import register_result

MAX_FLOW_TOKENS = 64
MAX_FLOW_POSITIONS = 8
SINK_FIRST = "first"
SINK_DELIMITER = "delimiter"
SINK_SPECIAL = "special"


# ---- parameters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionParams:
    """Everything besides model and prompt that determines an attention result.

    flow:           also compute attention flow (expensive: one max-flow per (output, input) pair)
    flow_positions: output (query) positions for the flow; negative counts from the end
                    (default: the last position only)
    """

    flow: bool = False
    flow_positions: tuple[int, ...] = field(default=(-1,), metadata={"key_if": "flow"})

    def validate(self) -> None:
        if self.flow:
            if not self.flow_positions:
                raise InputError(
                    "attention flow needs at least one output position (e.g. -1 = the last token)"
                )
            if len(self.flow_positions) > MAX_FLOW_POSITIONS:
                raise InputError(
                    f"attention flow is expensive: choose at most {MAX_FLOW_POSITIONS} output positions, "
                    f"got {len(self.flow_positions)}"
                )

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


def resolve_positions(positions: Sequence[int], seq: int, what: str = "position") -> list[int]:
    """Map possibly negative positions to 0..seq-1 (sorted, unique); InputError when out of range."""
    out = []
    for p in positions:
        q = int(p) + seq if int(p) < 0 else int(p)
        if not 0 <= q < seq:
            raise InputError(
                f"{what} {p} is outside the prompt: it has {seq} tokens (0..{seq - 1}, or -1 for the last)"
            )
        out.append(q)
    return sorted(set(out))


# ---- pure functions over attention tensors ----------------------------------------------
def head_entropy(attentions: np.ndarray) -> np.ndarray:
    """(L, H, seq, seq) -> (L, H): mean Shannon entropy (bits) of the rows of queries 1..seq-1.

    Low entropy = a head that focuses on one or few keys; log2(q + 1) is the maximum for row q."""
    check_attentions(attentions)
    rows = attentions[:, :, 1:, :] if attentions.shape[2] > 1 else attentions
    return row_entropy(rows).mean(axis=-1)  # type: ignore[no-any-return]


def sink_share(attentions: np.ndarray, positions: Sequence[int]) -> np.ndarray:
    """(L, H, seq, seq), key positions -> (L, H): attention mass given to `positions`, averaged
    over queries 1..seq-1 (query 0 can only attend to itself). Zeros when `positions` is empty."""
    check_attentions(attentions)
    n_l, n_h, seq, _ = attentions.shape
    keys = sorted({int(p) for p in positions if 0 <= int(p) < seq})
    if not keys:
        return np.zeros((n_l, n_h))
    rows = attentions[:, :, 1:, :] if seq > 1 else attentions
    return rows[..., keys].astype(np.float64).sum(axis=-1).mean(axis=-1)  # type: ignore[no-any-return]


def is_delimiter(token: str) -> bool:
    """Whitespace-only, newline, or punctuation-only tokens (".", ",", "\\n", " :", ...)."""
    stripped = token.strip()
    if not stripped:
        return True
    return all(unicodedata.category(c).startswith("P") for c in stripped)


def find_sink_tokens(
    tokens: Sequence[str], ids: Sequence[int], special_ids: Sequence[int] = ()
) -> list[dict[str, Any]]:
    """Candidate attention-sink positions: the first token, special tokens (BOS/EOS/SEP...) and
    delimiter tokens (punctuation, newlines, whitespace). Returns [{position, token, reason}]."""
    special = {int(i) for i in special_ids}
    out: list[dict[str, Any]] = []
    for pos, (tok, tid) in enumerate(zip(tokens, ids, strict=True)):
        if pos == 0:
            reason = SINK_FIRST
        elif int(tid) in special:
            reason = SINK_SPECIAL
        elif is_delimiter(tok):
            reason = SINK_DELIMITER
        else:
            continue
        out.append({"position": pos, "token": tok, "reason": reason})
    return out


# ---- display helper shared by plots ----------------------------------------------------
def block_aggregate(matrix: np.ndarray, max_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Downsample a (seq, seq) query x key matrix to at most (max_size, max_size) for display.

    Positions are cut into contiguous blocks; a cell is the mean over the block's queries of
    the total attention to the block's keys, so rows still sum to 1. Returns the matrix and
    the (first, last) position of each block."""
    seq = matrix.shape[-1]
    if seq <= max_size:
        return matrix, [(i, i) for i in range(seq)]
    edges = np.linspace(0, seq, max_size + 1).round().astype(int)
    spans = [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    starts = np.array([a for a, _ in spans])
    key_sum = np.add.reduceat(matrix, starts, axis=-1)  # sum over key blocks
    counts = np.array([b - a + 1 for a, b in spans], dtype=np.float64)
    query_mean = np.add.reduceat(key_sum, starts, axis=-2) / counts[:, None]
    return query_mean, spans


# ---- result ------------------------------------------------------------------------------
@register_result
@dataclass
class AttentionResult:
    """Attention of one causal LM over one prompt.

    tokens:          seq strings; input_ids: seq ints
    attentions:      (n_layers, n_heads, seq, seq) float32, query x key, rows sum to 1
    rollout:         (n_layers, seq, seq) float32, rollout[l] = product of A' up to block l
    entropy:         (n_layers, n_heads) float32, mean row entropy in bits (queries 1..seq-1)
    sink_share:      (n_layers, n_heads) float32, attention to the first token (queries 1..seq-1)
    delimiter_share: (n_layers, n_heads) float32, attention to the other sink tokens
    sink_tokens:     [{position, token, reason}] detected sinks (first, special, delimiter)
    flow:            (len(flow_positions), seq) float32 normalised attention flow, or None
    flow_raw:        same shape, raw max-flow values, or None
    view:            display choices (layer, head, token, sinks) used by the figures and their
                     exports; not stored and not part of the JSON
    """

    kind: ClassVar[str] = "attention"

    model: str
    tokens: list[str]
    input_ids: list[int]
    attentions: np.ndarray
    rollout: np.ndarray
    entropy: np.ndarray
    sink_share: np.ndarray
    delimiter_share: np.ndarray
    sink_tokens: list[dict[str, Any]]
    params: dict[str, Any]
    flow_positions: list[int] = field(default_factory=list)
    flow: np.ndarray | None = None
    flow_raw: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    seconds: float = 0.0
    view: dict[str, Any] = field(default_factory=dict, compare=False)

    # ---- views ----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def seq_len(self) -> int:
        return len(self.tokens)

    @property
    def delimiter_positions(self) -> list[int]:
        return [int(s["position"]) for s in self.sink_tokens if s["reason"] != SINK_FIRST]

    def head_matrix(self, layer: int, head: int | None = None) -> np.ndarray:
        """(seq, seq) attention of one head, or the mean over heads when `head` is None."""
        self._check_layer(layer)
        if head is None:
            return self.attentions[layer].mean(axis=0)  # type: ignore[no-any-return]
        if not 0 <= head < self.n_heads:
            raise InputError(
                f"head {head} does not exist: the model has {self.n_heads} heads (0..{self.n_heads - 1})"
            )
        return self.attentions[layer, head]  # type: ignore[no-any-return]

    def token_view(self, position: int, head: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For token `position`: (attends_to, attended_by), each (n_layers, seq).

        attends_to[l, k] = attention from `position` to key k in layer l; attended_by[l, q] =
        attention query q gives `position`. Mean over heads when `head` is None."""
        if not 0 <= position < self.seq_len:
            raise InputError(f"token position {position} is outside the prompt (0..{self.seq_len - 1})")
        att = self.attentions.mean(axis=1) if head is None else self.attentions[:, head]
        return att[:, position, :], att[:, :, position]

    def sink_share_for(self, positions: Sequence[int]) -> np.ndarray:
        """(n_layers, n_heads) attention mass to any set of key positions (from the stored matrices)."""
        return sink_share(self.attentions, positions)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise InputError(
                f"layer {layer} does not exist: the model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )

    # ---- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        layers = [
            {
                "layer": layer,
                "heads": [
                    {
                        "head": head,
                        "attention": self.attentions[layer, head].tolist(),
                        "sink_share": float(self.sink_share[layer, head]),
                        "delimiter_share": float(self.delimiter_share[layer, head]),
                        "entropy": float(self.entropy[layer, head]),
                    }
                    for head in range(self.n_heads)
                ],
            }
            for layer in range(self.n_layers)
        ]
        out: dict[str, Any] = {
            "run_id": self.run_id,
            "model": self.model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "tokens": self.tokens,
            "layers": layers,
            "rollout": self.rollout[-1].tolist(),
            "sink_tokens": self.sink_tokens,
            "params": self.params,
            "seconds": self.seconds,
        }
        if self.flow is not None and self.flow_raw is not None:
            out["flow"] = [
                {"position": p, "flow": self.flow[i].tolist(), "raw": self.flow_raw[i].tolist()}
                for i, p in enumerate(self.flow_positions)
            ]
        if self.notes:
            out["notes"] = self.notes
        return out

    def to_meta(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tokens": self.tokens,
            "input_ids": self.input_ids,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "sink_tokens": self.sink_tokens,
            "params": self.params,
            "flow_positions": self.flow_positions,
            "notes": self.notes,
            "seconds": self.seconds,
        }

    def to_tables(self) -> dict[str, pa.Table]:
        n_l, n_h, seq, _ = self.attentions.shape
        # keep the causal triangle plus any non-zero cell: exact round trip, half the rows
        query, key = np.meshgrid(np.arange(seq), np.arange(seq), indexing="ij")
        keep = (key <= query)[None, None] | (self.attentions != 0)  # (L, H, seq, seq)
        li, hi, qi, ki = np.nonzero(keep)
        matrix = pa.table(
            {
                "layer": li.astype(np.int16),
                "head": hi.astype(np.int16),
                "query": qi.astype(np.int32),
                "key": ki.astype(np.int32),
                "weight": self.attentions[li, hi, qi, ki].astype(np.float32),
            }
        )
        layer, head = np.meshgrid(np.arange(n_l), np.arange(n_h), indexing="ij")
        heads = pa.table(
            {
                "layer": layer.ravel().astype(np.int16),
                "head": head.ravel().astype(np.int16),
                "sink_share": self.sink_share.ravel().astype(np.float32),
                "delimiter_share": self.delimiter_share.ravel().astype(np.float32),
                "entropy": self.entropy.ravel().astype(np.float32),
            }
        )
        keep_r = (key <= query)[None] | (self.rollout != 0)
        lr, qr, kr = np.nonzero(keep_r)
        rollout = pa.table(
            {
                "layer": lr.astype(np.int16),
                "query": qr.astype(np.int32),
                "key": kr.astype(np.int32),
                "weight": self.rollout[lr, qr, kr].astype(np.float32),
            }
        )
        tables = {"matrix": matrix, "heads": heads, "rollout": rollout}
        if self.flow is not None and self.flow_raw is not None:
            out_pos, key_pos = np.meshgrid(np.arange(len(self.flow_positions)), np.arange(seq), indexing="ij")
            tables["flow"] = pa.table(
                {
                    "position": np.asarray(self.flow_positions, dtype=np.int32)[out_pos.ravel()],
                    "key": key_pos.ravel().astype(np.int32),
                    "flow": self.flow.ravel().astype(np.float32),
                    "raw": self.flow_raw.ravel().astype(np.float32),
                }
            )
        return tables

    @classmethod
    def from_store(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> AttentionResult:
        n_l, n_h, seq = int(meta["n_layers"]), int(meta["n_heads"]), len(meta["tokens"])
        m = tables["matrix"]
        attentions = np.zeros((n_l, n_h, seq, seq), dtype=np.float32)
        attentions[
            m["layer"].to_numpy().astype(np.int64),
            m["head"].to_numpy().astype(np.int64),
            m["query"].to_numpy().astype(np.int64),
            m["key"].to_numpy().astype(np.int64),
        ] = m["weight"].to_numpy()
        r = tables["rollout"]
        rollout = np.zeros((n_l, seq, seq), dtype=np.float32)
        rollout[
            r["layer"].to_numpy().astype(np.int64),
            r["query"].to_numpy().astype(np.int64),
            r["key"].to_numpy().astype(np.int64),
        ] = r["weight"].to_numpy()
        h = tables["heads"]
        hl = h["layer"].to_numpy().astype(np.int64)
        hh = h["head"].to_numpy().astype(np.int64)

        def per_head(column: str) -> np.ndarray:
            out = np.zeros((n_l, n_h), dtype=np.float32)
            out[hl, hh] = h[column].to_numpy()
            return out

        flow_positions = [int(p) for p in meta.get("flow_positions", [])]
        flow = flow_raw = None
        if "flow" in tables and flow_positions:
            f = tables["flow"]
            row_of = {p: i for i, p in enumerate(flow_positions)}
            rows = np.array([row_of[int(p)] for p in f["position"].to_pylist()], dtype=np.int64)
            keys = f["key"].to_numpy().astype(np.int64)
            flow = np.zeros((len(flow_positions), seq), dtype=np.float32)
            flow_raw = np.zeros_like(flow)
            flow[rows, keys] = f["flow"].to_numpy()
            flow_raw[rows, keys] = f["raw"].to_numpy()
        return cls(
            model=meta["model"],
            tokens=list(meta["tokens"]),
            input_ids=[int(i) for i in meta["input_ids"]],
            attentions=attentions,
            rollout=rollout,
            entropy=per_head("entropy"),
            sink_share=per_head("sink_share"),
            delimiter_share=per_head("delimiter_share"),
            sink_tokens=list(meta["sink_tokens"]),
            params=dict(meta["params"]),
            flow_positions=flow_positions,
            flow=flow,
            flow_raw=flow_raw,
            notes=list(meta.get("notes", [])),
            run_id=meta.get("run_id"),
            seconds=float(meta.get("seconds", 0.0)),
        )


# ---- entry points ------------------------------------------------------------------------
def attention_from_trace(
    trace: Trace,
    *,
    model_id: str,
    special_ids: Sequence[int] = (),
    params: AttentionParams | None = None,
    progress: ProgressFn | None = None,
) -> AttentionResult:
    """Every attention view of one captured trace (no model call)."""
    params = params or AttentionParams()
    params.validate()
    if trace.attentions is None:
        raise ValueError("the trace has no attentions: capture it with attentions=True")
    attentions = trace.attentions.detach().cpu().numpy().astype(np.float32)  # (L, H, seq, seq)
    seq = trace.seq_len
    if seq < 2:
        raise InputError(
            "the prompt is a single token; attention needs at least 2 tokens (token 0 can only attend to itself)"
        )
    ids = trace.input_ids.tolist()
    sinks = find_sink_tokens(trace.tokens, ids, special_ids)
    delimiters = [s["position"] for s in sinks if s["reason"] != SINK_FIRST]
    notes: list[str] = []
    flow = flow_raw = None
    flow_positions: list[int] = []
    if params.flow:
        if seq > MAX_FLOW_TOKENS:
            raise InputError(
                f"attention flow is limited to prompts of at most {MAX_FLOW_TOKENS} tokens (exact max-flow per "
                f"token pair); this prompt has {seq}. Use rollout, or shorten the prompt"
            )
        flow_positions = resolve_positions(params.flow_positions, seq, "flow output position")
        flow64, raw64 = attention_flow(attentions, flow_positions, progress)
        flow, flow_raw = flow64.astype(np.float32), raw64.astype(np.float32)
    return AttentionResult(
        model=model_id,
        tokens=list(trace.tokens),
        input_ids=[int(i) for i in ids],
        attentions=attentions,
        rollout=attention_rollout(attentions).astype(np.float32),
        entropy=head_entropy(attentions).astype(np.float32),
        sink_share=sink_share(attentions, [0]).astype(np.float32),
        delimiter_share=sink_share(attentions, delimiters).astype(np.float32),
        sink_tokens=sinks,
        params=params.to_json(),
        flow_positions=flow_positions,
        flow=flow,
        flow_raw=flow_raw,
        notes=notes,
    )


def analyze_attention(
    lm: LanguageModel,
    prompt: str,
    *,
    params: AttentionParams | None = None,
    max_tokens: int = 512,
    max_attention_tokens: int = 256,
    progress: ProgressFn | None = None,
) -> AttentionResult:
    """Tokenise `prompt`, run ONE forward pass with attentions, and compute every attention view.

    `max_tokens` is the prompt limit, `max_attention_tokens` the attention view's (every head's
    full matrix is stored); both come from `Settings`."""
    prog = progress or (lambda f, m: None)
    params = params or AttentionParams()
    params.validate()
    t0 = time.perf_counter()
    ids = encode(lm, prompt, max_tokens)
    check_attention_tokens(int(ids.numel()), max_attention_tokens)
    if params.flow and ids.numel() > MAX_FLOW_TOKENS:
        raise InputError(
            f"attention flow is limited to prompts of at most {MAX_FLOW_TOKENS} tokens; this prompt has "
            f"{ids.numel()}. Untick flow (rollout is always computed) or shorten the prompt"
        )
    prog(0.1, "Tracing one forward pass")
    trace = capture(lm, ids, attentions=True)
    prog(0.5, "Rollout, entropy and sink shares")
    special = list(getattr(lm.tokenizer, "all_special_ids", []) or [])

    def flow_progress(fraction: float, message: str) -> None:
        prog(0.5 + 0.45 * fraction, message)

    result = attention_from_trace(
        trace, model_id=lm.model_id, special_ids=special, params=params, progress=flow_progress
    )
    result.seconds = time.perf_counter() - t0
    prog(1.0, "Done")
    return result
