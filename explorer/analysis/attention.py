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
import torch

from explorer.analysis.attention_math import (
    attention_flow,
    attention_rollout,
    check_attentions,
    mean_row_entropy,
    rollout_carry,
    row_entropy,
)
from explorer.backends.language import LanguageModel, capture, encode
from explorer.backends.trace import Trace
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import (
    StoredFields,
    axis_size,
    dense_from_table,
    in_meta,
    in_table,
    long_table,
    register_result,
)

MAX_FLOW_TOKENS = 64
LONG_PROMPT_BLOCKS = 128  # block-aggregated matrix side of a long prompt (the display's own maximum)
TOP_K_KEYS = 16  # keys kept per query (mean over heads) for a long prompt
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
    spans = block_spans(seq, max_size)
    if seq <= max_size:
        return matrix, spans
    starts = np.array([a for a, _ in spans])
    key_sum = np.add.reduceat(matrix, starts, axis=-1)  # sum over key blocks
    counts = np.array([b - a + 1 for a, b in spans], dtype=np.float64)
    query_mean = np.add.reduceat(key_sum, starts, axis=-2) / counts[:, None]
    return query_mean, spans


def block_spans(seq: int, max_size: int) -> list[tuple[int, int]]:
    """Contiguous (first, last) position blocks, at most `max_size` of them (one per position
    when seq <= max_size); the same cut `block_aggregate` makes."""
    if seq <= max_size:
        return [(i, i) for i in range(seq)]
    edges = np.linspace(0, seq, max_size + 1).round().astype(int)
    return [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def compose_spans(
    outer: Sequence[tuple[int, int]], inner: Sequence[tuple[int, int]] | None
) -> list[tuple[int, int]]:
    """Spans over units (`outer`, indices into `inner`) as token positions: when a matrix is
    already block-level (`inner` = its blocks' token spans), aggregating it again groups blocks."""
    if inner is None:
        return [(int(a), int(b)) for a, b in outer]
    return [(inner[a][0], inner[b][1]) for a, b in outer]


# ---- result ------------------------------------------------------------------------------
@register_result
@dataclass
class AttentionResult(StoredFields):
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

    Long prompts (more than `Settings.attention_full_tokens` tokens) keep what fits instead of
    every head's (seq, seq) matrix (18 GB for SmolLM2 at 4,096 tokens):
    spans:           None for full matrices; else B (first, last) token blocks, and
                     `attentions` is (n_layers, n_heads, B, B), `rollout` (n_layers, B, B):
                     the exact matrices block-aggregated (mean over a block's queries of the total
                     to a block's keys; rows still sum to 1)
    received:        (n_layers, n_heads, seq) float32, attention each key receives (mean over
                     queries 1..seq-1; sink shares of any token set, exactly), or None
    top_keys:        (n_layers, seq, k) int32, each query's k most-attended keys (mean over
                     heads, exact), or None; top_weights: the same shape, their weights
    """

    kind: ClassVar[str] = "attention"

    model: str = in_meta()
    tokens: list[str] = in_meta()
    input_ids: list[int] = in_meta(json=False)
    attentions: np.ndarray = in_table()
    rollout: np.ndarray = in_table()
    entropy: np.ndarray = in_table()
    sink_share: np.ndarray = in_table()
    delimiter_share: np.ndarray = in_table()
    sink_tokens: list[dict[str, Any]] = in_meta()
    params: dict[str, Any] = in_meta()
    flow_positions: list[int] = in_meta(default_factory=list, json=False)  # in "flow" (json_views)
    flow: np.ndarray | None = in_table(default=None)
    flow_raw: np.ndarray | None = in_table(default=None)
    notes: list[str] = in_meta(default_factory=list, json=False)  # json_views: always for a long prompt
    run_id: str | None = None
    seconds: float = in_meta(default=0.0)
    spans: list[tuple[int, int]] | None = in_meta(
        default=None, decode=lambda s: [(int(a), int(b)) for a, b in s] or None, json=False
    )  # "blocks" (json_views)
    received: np.ndarray | None = in_table(default=None)
    top_keys: np.ndarray | None = in_table(default=None)
    top_weights: np.ndarray | None = in_table(default=None)

    # ---- views ----------------------------------------------------------------------------
    @property
    def is_blocked(self) -> bool:
        """True when the matrices are block-aggregated (a long prompt), False when full."""
        return self.spans is not None

    def block_of(self, position: int) -> int:
        """Index of the unit (position, or block of a long prompt) holding token `position`."""
        if self.spans is None:
            return position
        firsts = np.array([a for a, _ in self.spans])
        return int(np.searchsorted(firsts, position, side="right") - 1)

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
        if self.spans is None:
            return att[:, position, :], att[:, :, position]
        # long prompt: spread block-level values evenly over each block's positions
        sizes = np.array([b - a + 1 for a, b in self.spans], dtype=np.float64)
        unit = np.repeat(np.arange(len(self.spans)), sizes.astype(int))  # position -> block
        b = self.block_of(position)
        attends_to = (att[:, b, :] / sizes[None, :])[:, unit]
        attended_by = np.broadcast_to(att[:, :, b][:, unit] / sizes[b], attends_to.shape).copy()
        if head is None and self.top_keys is not None and self.top_weights is not None:
            attends_to = np.zeros_like(attends_to)  # exact: each layer's top-k keys of this query
            rows = np.arange(self.n_layers)[:, None]
            attends_to[rows, self.top_keys[:, position]] = self.top_weights[:, position]
        return attends_to, attended_by

    def sink_share_for(self, positions: Sequence[int]) -> np.ndarray:
        """(n_layers, n_heads) attention mass to any set of key positions (from the stored matrices)."""
        if self.received is not None:
            keys = sorted({int(p) for p in positions if 0 <= int(p) < self.seq_len})
            return self.received[:, :, keys].astype(np.float64).sum(axis=-1)  # type: ignore[no-any-return]
        return sink_share(self.attentions, positions)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise InputError(
                f"layer {layer} does not exist: the model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )

    # ---- serialisation --------------------------------------------------------------------
    def json_views(self) -> dict[str, Any]:
        if self.spans is not None:
            return self._blocked_views()
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
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "layers": layers,
            "rollout": self.rollout[-1].tolist(),
        }
        if self.flow is not None and self.flow_raw is not None:
            out["flow"] = [
                {"position": p, "flow": self.flow[i].tolist(), "raw": self.flow_raw[i].tolist()}
                for i, p in enumerate(self.flow_positions)
            ]
        if self.notes:
            out["notes"] = self.notes
        return out

    def _blocked_views(self) -> dict[str, Any]:
        """JSON views of a long prompt: per-head statistics, each layer's mean over heads and the
        rollout as block-level matrices (what is stored), and the blocks' token spans."""
        assert self.spans is not None
        mean = self.attentions.mean(axis=1)
        layers = [
            {
                "layer": layer,
                "mean_attention": mean[layer].tolist(),
                "heads": [
                    {
                        "head": head,
                        "sink_share": float(self.sink_share[layer, head]),
                        "delimiter_share": float(self.delimiter_share[layer, head]),
                        "entropy": float(self.entropy[layer, head]),
                    }
                    for head in range(self.n_heads)
                ],
            }
            for layer in range(self.n_layers)
        ]
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "blocks": [list(span) for span in self.spans],
            "layers": layers,
            "rollout": self.rollout[-1].tolist(),
            "notes": self.notes,
        }

    def to_tables(self) -> dict[str, pa.Table]:
        n_l, n_h, seq, _ = self.attentions.shape  # seq: positions, or blocks of a long prompt
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
        heads = long_table(
            {"layer": np.int16, "head": np.int16},
            {
                "sink_share": (self.sink_share, np.float32),
                "delimiter_share": (self.delimiter_share, np.float32),
                "entropy": (self.entropy, np.float32),
            },
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
        if self.received is not None:
            tables["received"] = long_table(
                {"layer": np.int16, "head": np.int16, "key": np.int32},
                {"weight": (self.received, np.float32)},
            )
        if self.top_keys is not None and self.top_weights is not None:
            tables["topk"] = long_table(
                {"layer": np.int16, "query": np.int32, "rank": np.int16},
                {"key": (self.top_keys, np.int32), "weight": (self.top_weights, np.float32)},
            )
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
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        h = tables["heads"]
        n_l, n_h, n_pos = axis_size(h, "layer"), axis_size(h, "head"), len(meta["tokens"])
        spans = meta.get("spans")
        seq = n_pos if spans is None else len(spans)  # matrix side: positions or blocks
        out: dict[str, Any] = {
            "attentions": dense_from_table(
                tables["matrix"],
                ("layer", "head", "query", "key"),
                "weight",
                (n_l, n_h, seq, seq),
                np.float32,
            ),
            "rollout": dense_from_table(
                tables["rollout"], ("layer", "query", "key"), "weight", (n_l, seq, seq), np.float32
            ),
        }
        for column in ("entropy", "sink_share", "delimiter_share"):
            out[column] = dense_from_table(h, ("layer", "head"), column, (n_l, n_h), np.float32)
        flow_positions = [int(p) for p in meta.get("flow_positions", [])]
        if "flow" in tables and flow_positions:
            f = tables["flow"]
            row_of = {p: i for i, p in enumerate(flow_positions)}
            f = f.append_column(
                "row", pa.array([row_of[int(p)] for p in f["position"].to_pylist()], pa.int64())
            )
            for column, name in (("flow", "flow"), ("raw", "flow_raw")):
                out[name] = dense_from_table(
                    f, ("row", "key"), column, (len(flow_positions), seq), np.float32
                )
        if "received" in tables:
            out["received"] = dense_from_table(
                tables["received"], ("layer", "head", "key"), "weight", (n_l, n_h, n_pos), np.float32
            )
        if "topk" in tables and tables["topk"].num_rows:
            t = tables["topk"]
            shape = (n_l, n_pos, axis_size(t, "rank"))
            out["top_keys"] = dense_from_table(t, ("layer", "query", "rank"), "key", shape, np.int32)
            out["top_weights"] = dense_from_table(t, ("layer", "query", "rank"), "weight", shape, np.float32)
        return out


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


def streamed_attention(
    lm: LanguageModel,
    ids: torch.Tensor,
    *,
    max_blocks: int = LONG_PROMPT_BLOCKS,
    top_k: int = TOP_K_KEYS,
    progress: ProgressFn | None = None,
) -> AttentionResult:
    """Every attention view of a long prompt from ONE forward pass, keeping what fits.

    Each block's (n_heads, seq, seq) weights are reduced as soon as the block has run
    (`LanguageModel.attention_pass`) and dropped, so memory is one layer's matrices, never
    n_layers x n_heads x seq^2. Kept, all exact: per-head entropy and sink shares, the attention
    every key receives (n_layers, n_heads, seq), each query's top-k keys of the mean over heads,
    and every head's matrix and the rollout block-aggregated to at most `max_blocks` blocks.
    The rollout is carried through the layers at block resolution: X_l = A'_l @ X_{l-1} with
    X_-1 the (seq, blocks) key-block indicator, so X_l = rollout_l @ indicator exactly."""
    prog = progress or (lambda f, m: None)
    seq = int(ids.numel())
    if seq < 2:
        raise InputError(
            "the prompt is a single token; attention needs at least 2 tokens (token 0 can only attend to itself)"
        )
    id_list = [int(i) for i in ids.tolist()]
    tokens = lm.tokens_str(id_list)
    sinks = find_sink_tokens(tokens, id_list, list(getattr(lm.tokenizer, "all_special_ids", []) or []))
    delimiters = [int(s["position"]) for s in sinks if s["reason"] != SINK_FIRST]
    size = -(-seq // max_blocks)  # equal blocks of `size` tokens (the last may be shorter)
    spans = [(a, min(a + size, seq) - 1) for a in range(0, seq, size)]
    n_blocks = len(spans)
    sizes = torch.tensor([b - a + 1 for a, b in spans], dtype=torch.float64)
    n_l, k = lm.n_layers, min(top_k, seq)
    per_layer: dict[str, list[torch.Tensor]] = {
        name: []
        for name in ("entropy", "sink", "delimiter", "received", "blocks", "top_k", "top_w", "rollout")
    }
    carried: list[torch.Tensor] = []  # X_l, (seq, blocks) float64

    def on_layer(layer: int, w: torch.Tensor) -> None:  # w: (H, seq, seq) float32
        rows = w[:, 1:, :]  # queries 1..seq-1 (query 0 has no choice)
        # float32 element-wise work, float64 only for the (much smaller) reductions' results
        per_layer["entropy"].append(mean_row_entropy(rows).cpu())
        per_layer["sink"].append(rows[:, :, 0].double().mean(dim=-1).cpu())
        if delimiters:
            delim = rows[:, :, delimiters].sum(dim=-1).double().mean(dim=-1)
        else:
            delim = torch.zeros(w.shape[0], dtype=torch.float64)
        per_layer["delimiter"].append(delim.cpu())
        per_layer["received"].append((rows.sum(dim=1) / (seq - 1)).cpu())
        key_sum = _block_sum(w, -1, size)  # (H, seq, blocks)
        blocks = _block_sum(key_sum, -2, size).double() / sizes.to(w.device)[None, :, None]
        per_layer["blocks"].append(blocks.float().cpu())
        mean = w.mean(dim=0)  # (seq, seq)
        top = torch.topk(mean, k, dim=-1)
        per_layer["top_k"].append(top.indices.int().cpu())
        per_layer["top_w"].append(top.values.float().cpu())
        if not carried:  # the key-block indicator (seq, blocks)
            unit = torch.arange(seq, device=w.device) // size
            carried.append(torch.nn.functional.one_hot(unit, n_blocks).double())
        x = rollout_carry(mean, carried[-1])
        carried[:] = [x]
        roll = _block_sum(x, 0, size) / sizes.to(w.device)[:, None]
        per_layer["rollout"].append(roll.float().cpu())
        prog(0.1 + 0.85 * (layer + 1) / n_l, f"Attention of layer {layer + 1}/{n_l}")

    prog(0.05, "One forward pass, reduced layer by layer")
    lm.attention_pass(ids, on_layer)

    def stacked(name: str) -> np.ndarray:
        return torch.stack(per_layer[name]).numpy()

    return AttentionResult(
        model=lm.model_id,
        tokens=tokens,
        input_ids=id_list,
        attentions=stacked("blocks").astype(np.float32),
        rollout=stacked("rollout").astype(np.float32),
        entropy=stacked("entropy").astype(np.float32),
        sink_share=stacked("sink").astype(np.float32),
        delimiter_share=stacked("delimiter").astype(np.float32),
        sink_tokens=sinks,
        params=AttentionParams().to_json(),
        notes=[
            f"long prompt ({seq} tokens): every head's matrix and the rollout are stored block-aggregated "
            f"({n_blocks} blocks of about {seq / n_blocks:.0f} tokens); entropy, sink shares, the attention "
            f"each token receives and each query's top-{k} keys (mean over heads) are exact. "
            "An exact head matrix is recomputed on demand (attention_head_window) when the model is available"
        ],
        spans=spans,
        received=stacked("received").astype(np.float32),
        top_keys=stacked("top_k").astype(np.int32),
        top_weights=stacked("top_w").astype(np.float32),
    )


def _block_sum(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Sums of consecutive groups of `size` entries along `dim` (the last group may be shorter):
    a reshape and a sum, memory-bound, where a scatter or an indicator matmul is 10-100x slower."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    full = (n // size) * size
    parts = [x[..., :full].reshape(*x.shape[:-1], n // size, size).sum(dim=-1)] if full else []
    if full < n:
        parts.append(x[..., full:].sum(dim=-1, keepdim=True))
    return torch.cat(parts, dim=-1).movedim(-1, dim)


def attention_head_window(
    lm: LanguageModel, input_ids: Sequence[int], layer: int, head: int | None, start: int, size: int = 128
) -> np.ndarray:
    """The exact (size, size) attention of one head (or the mean over heads) of `layer` for
    queries and keys start..start+size-1, recomputed with one pass that stops after `layer`:
    the per-head matrix of a long prompt on demand (the store keeps it block-aggregated)."""
    seq = len(input_ids)
    if not 0 <= layer < lm.n_layers:
        raise InputError(
            f"layer {layer} does not exist: the model has {lm.n_layers} layers (0..{lm.n_layers - 1})"
        )
    start = max(0, min(int(start), max(0, seq - size)))
    stop = min(seq, start + size)
    out: list[np.ndarray] = []

    def on_layer(_: int, w: torch.Tensor) -> None:
        if head is not None and not 0 <= head < w.shape[0]:
            raise InputError(
                f"head {head} does not exist: the model has {w.shape[0]} heads (0..{w.shape[0] - 1})"
            )
        block = w[:, start:stop, start:stop]
        out.append((block.mean(dim=0) if head is None else block[head]).cpu().numpy())

    lm.attention_pass(torch.tensor(list(input_ids), dtype=torch.long), on_layer, layers=[layer])
    return out[0]


def analyze_attention(
    lm: LanguageModel,
    prompt: str,
    *,
    params: AttentionParams | None = None,
    max_tokens: int = 4096,
    full_tokens: int = 256,
    progress: ProgressFn | None = None,
) -> AttentionResult:
    """Tokenise `prompt`, run ONE forward pass with attentions, and compute every attention view.

    `max_tokens` is the prompt limit; prompts of at most `full_tokens` tokens keep every head's
    full matrix, longer ones what fits (`streamed_attention`); both come from `Settings`."""
    prog = progress or (lambda f, m: None)
    params = params or AttentionParams()
    params.validate()
    t0 = time.perf_counter()
    ids = encode(lm, prompt, max_tokens)
    if params.flow and ids.numel() > MAX_FLOW_TOKENS:
        raise InputError(
            f"attention flow is limited to prompts of at most {MAX_FLOW_TOKENS} tokens; this prompt has "
            f"{ids.numel()}. Untick flow (rollout is always computed) or shorten the prompt"
        )
    if ids.numel() > full_tokens:
        long_result = streamed_attention(lm, ids, progress=progress)
        long_result.params = params.to_json()
        long_result.seconds = time.perf_counter() - t0
        prog(1.0, "Done")
        return long_result
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
