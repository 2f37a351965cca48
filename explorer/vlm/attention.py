"""Attention from text tokens to the image patches inside a VLM's language model.

One traced forward pass over (image, prompt) + the model's greedy answer gives, for every
text query after the image (the prompt's text and every generated token):

- its attention to each image patch, per LM block and head (query x key rows of the eager
  attention, read at the image positions);
- its rolled-out attention to each patch after every block (Abnar & Zuidema 2020, the same
  `attention_rollout` as the text views: 0.5 * mean-over-heads + 0.5 * I, multiplied through
  the blocks), so a patch's relevance includes what reached the query through other tokens;
- per block, the share of the text queries' attention (mean over heads and queries) that
  goes to image tokens, to text tokens and to sink tokens; and per block and head the share
  on the image.

Sink tokens: position 0 (the classic attention sink of causal LMs) plus, at each block, the
visual tokens that are norm outliers *and* draw more than their share of the text queries'
image attention (the EmbedLens sink criterion of explorer.vlm.tokens, which reuses
`visual_sinks` and `attention_shares` from here). A sink is counted only as sink, never also
as image or text, so the three shares sum to 1.

Text tokens before the image cannot attend to it (causal mask), so they are not queries.
Every VLM whose LM the backend can trace works, hub VLMs included (their own forward runs).
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from explorer.analysis.attention import LONG_PROMPT_BLOCKS, attention_rollout, block_spans
from explorer.analysis.attention_math import rollout_carry
from explorer.backends.images import image_to_png
from explorer.backends.vlm import (
    MODALITY_IMAGE,
    MODALITY_TEXT,
    VisionLanguageModel,
    VLMInputs,
    capture_vlm,
    generate,
    position_labels,
    vlm_attention_pass,
)
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result

MAX_GENERATE = 64
MAX_QUERY_ROWS = LONG_PROMPT_BLOCKS  # query rows kept per block and head past the full-token threshold
EXACT_LAST_QUERIES = MAX_GENERATE  # of those, the last queries kept one row each (the answer fits)
SHARE_NAMES = ("image", "text", "sink")


# ---------------------------------------------------------------------------------------------
# Pure functions over one attention tensor (shared with explorer.vlm.tokens)
# ---------------------------------------------------------------------------------------------
def text_queries(modality: list[str]) -> list[int]:
    """Text positions after the last image position (the only text that can see the image)."""
    img = [i for i, m in enumerate(modality) if m == MODALITY_IMAGE]
    if not img:
        return []
    return [q for q in range(img[-1] + 1, len(modality)) if modality[q] != MODALITY_IMAGE]


def image_attention(att: np.ndarray, queries: list[int], img: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """att (L, H, T, T) -> (attention (L, H, Q, n_img) of each text query to each patch,
    received (L, n_img): each patch's share of the queries' image attention, mean over heads
    and queries; rows of `received` sum to 1)."""
    to_img = att[:, :, queries][:, :, :, img]
    mass = to_img.sum(axis=-1, keepdims=True)
    received = (to_img / np.maximum(mass, 1e-12)).mean(axis=(1, 2))
    return to_img, received


def visual_sinks(norms: np.ndarray, received: np.ndarray, norm_k: float, share_k: float) -> np.ndarray:
    """(L + 1, n_img) residual norms, (L, n_img) received shares -> (L, n_img) bool sinks.

    Block l (0-based) reads the residual norms[l]: a sink there has norm > norm_k x the median
    visual-token norm AND receives > share_k x its uniform share (1 / n_img)."""
    n_img = norms.shape[1]
    median = np.median(norms[:-1], axis=1, keepdims=True)
    return (norms[:-1] > norm_k * np.maximum(median, 1e-12)) & (received > share_k / max(n_img, 1))


def attention_shares(att: np.ndarray, queries: list[int], img: list[int], sinks: np.ndarray) -> np.ndarray:
    """(L, 3): mean over heads and text queries of the attention on image / text / sink tokens.

    Sinks at block l: position 0 plus the visual tokens with sinks[l] True (L, n_img)."""
    rows = np.stack([att[layer][:, queries].mean(axis=(0, 1)) for layer in range(att.shape[0])])
    return shares_from_rows(rows, img, sinks)


def shares_from_rows(rows: np.ndarray, img: list[int], sinks: np.ndarray) -> np.ndarray:
    """(L, T) each block's attention row averaged over heads and text queries -> (L, 3) its
    mass on image / text / sink tokens (a sink is counted only as sink; see `attention_shares`)."""
    seq = rows.shape[-1]
    out = np.zeros((rows.shape[0], 3))
    is_img = np.zeros(seq, dtype=bool)
    is_img[img] = True
    img_arr = np.asarray(img, dtype=np.int64)
    for layer in range(rows.shape[0]):
        sink = np.zeros(seq, dtype=bool)
        sink[0] = True
        sink[img_arr[sinks[layer]]] = True
        row = rows[layer]
        out[layer] = [row[is_img & ~sink].sum(), row[~is_img & ~sink].sum(), row[sink].sum()]
    return out


def query_blocks(queries: list[int], max_units: int, exact_last: int) -> list[tuple[int, int]] | None:
    """How a long run keeps its text queries' rows: None (every query its own row) when there
    are at most `max_units`; else the last `exact_last` queries (the end of the question and the
    generated answer) one row each, and the earlier ones in contiguous (first, last) blocks, at
    most `max_units - exact_last` of them, each row the mean over its block's queries.
    `queries` are contiguous positions (all text after the last image position)."""
    if len(queries) <= max_units:
        return None
    head, tail = queries[:-exact_last], queries[-exact_last:]
    spans = [(head[a], head[b]) for a, b in block_spans(len(head), max_units - exact_last)]
    return spans + [(q, q) for q in tail]


# ---------------------------------------------------------------------------------------------
# What both VLM attention results ("vlm_attention", "vlm_tokens") share
# ---------------------------------------------------------------------------------------------
@dataclass
class TextImageAttention(StoredFields):
    """Base of the results that hold text -> image attention ("vlm_attention", "vlm_tokens"):
    the run's text, the image, its positions and the text queries (all stored in the meta).

    tokens / modality: the sequence (prompt then answer), "text" / "image" per position
    grid:  [rows, cols] of the image tokens; image_png: the image as the model saw it (base64 PNG)
    query_positions: the text positions after the image whose attention is kept"""

    json_kind: ClassVar[bool] = True

    model: str = in_meta()
    prompt: str = in_meta()
    n_layers: int = in_meta()
    n_heads: int = in_meta()
    tokens: list[str] = in_meta(json=False)  # "vlm_attention" shows them (json_views)
    modality: list[str] = in_meta(json=False)
    grid: list[int] = in_meta()
    image_png: str = in_meta(json=False)
    answer: list[str] = in_meta()
    query_positions: list[int] = in_meta()

    @property
    def image_positions(self) -> list[int]:
        return [i for i, m in enumerate(self.modality) if m == MODALITY_IMAGE]

    @property
    def n_image(self) -> int:
        return len(self.image_positions)

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(self.image_png))).convert("RGB")

    @property
    def query_units(self) -> list[tuple[int, int]]:
        """(first, last) text positions behind each query row of the per-patch arrays: one per
        query, or blocks of queries in a long run (`query_spans`)."""
        spans = getattr(self, "query_spans", None)
        if spans:
            return [(int(a), int(b)) for a, b in spans]
        return [(q, q) for q in self.query_positions]

    def json_views(self) -> dict[str, Any]:
        """The key both kinds show for a long run: the (first, last) positions of each query row."""
        if not getattr(self, "query_spans", None):
            return {}
        return {"query_blocks": [list(u) for u in self.query_units]}

    def query_index(self, query: int | None) -> int:
        """A text query position (default: the last one) -> the index of its row (the block
        holding it, in a long run) in the per-patch arrays."""
        units = self.query_units
        if query is None:
            return len(units) - 1
        for i, (a, b) in enumerate(units):
            if a <= query <= b:
                return i
        first, last = self.query_positions[0], self.query_positions[-1]
        raise InputError(
            f"position {query} is not a text query after the image; choose one of {first}..{last}"
        )


def decode_spans(stored: Any) -> list[tuple[int, int]] | None:
    """The stored `query_spans` meta -> [(first, last), ...], or None (one row per query)."""
    return [(int(a), int(b)) for a, b in stored] if stored else None


def attention_tables(attention: np.ndarray, rollout: np.ndarray) -> dict[str, pa.Table]:
    """(L, H, Q, n) attention and (L, Q, n) rollout -> long-form tables (layers 1-based)."""
    L, H, Q, n = attention.shape
    li, hi, qi, pi = np.meshgrid(np.arange(L), np.arange(H), np.arange(Q), np.arange(n), indexing="ij")
    lr, qr, pr = np.meshgrid(np.arange(L), np.arange(Q), np.arange(n), indexing="ij")
    return {
        "attention": pa.table(
            {
                "layer": (li.ravel() + 1).astype(np.int32),
                "head": hi.ravel().astype(np.int32),
                "query": qi.ravel().astype(np.int32),
                "patch": pi.ravel().astype(np.int32),
                "weight": attention.ravel().astype(np.float64),
            }
        ),
        "rollout": pa.table(
            {
                "layer": (lr.ravel() + 1).astype(np.int32),
                "query": qr.ravel().astype(np.int32),
                "patch": pr.ravel().astype(np.int32),
                "weight": rollout.ravel().astype(np.float64),
            }
        ),
    }


def table_column(tables: dict[str, pa.Table], table: str, name: str, order: list[str]) -> np.ndarray:
    """One column of a stored table, sorted by `order` (the row-major order it was written in)."""
    t = tables[table].sort_by([(k, "ascending") for k in order])
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False))


def attention_from_tables(
    tables: dict[str, pa.Table], shape: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `attention_tables`: -> (attention (L, H, Q, n), rollout (L, Q, n))."""
    L, H, Q, n = shape
    att = table_column(tables, "attention", "weight", ["layer", "head", "query", "patch"]).reshape(L, H, Q, n)
    rolled = table_column(tables, "rollout", "weight", ["layer", "query", "patch"]).reshape(L, Q, n)
    return att.astype(np.float64), rolled.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Parameters and result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VLMAttentionParams:
    """generate: greedy answer tokens appended (each one a query); sink_norm_k / sink_share_k:
    the visual-sink criterion (see `visual_sinks`)."""

    generate: int = 8
    sink_norm_k: float = 4.0
    sink_share_k: float = 2.0

    def validate(self) -> None:
        if not 0 <= self.generate <= MAX_GENERATE:
            raise InputError(f"generate must be in 0..{MAX_GENERATE}, got {self.generate}")
        if self.sink_norm_k <= 1.0:
            raise InputError(f"sink_norm_k must be > 1 (got {self.sink_norm_k})")
        if self.sink_share_k <= 0:
            raise InputError(f"sink_share_k must be > 0 (got {self.sink_share_k})")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


@register_result
@dataclass
class VLMAttentionResult(TextImageAttention):
    """Text -> image attention of one (image, prompt) + answer.

    Per-patch arrays cover the grid's n = rows * cols visual tokens (the base view: the first n
    image positions); shares and head_image count every image token.

    attention:   (n_layers, n_heads, n_queries, n) query -> patch attention per block, head
    rollout:     (n_layers, n_queries, n) rolled-out attention after each block
    shares:      (n_layers, 3) mean share of the queries' attention on image / text / sink
    head_image:  (n_layers, n_heads) share of the queries' attention on image tokens (sinks included)
    sinks:       (n_layers, n) bool, visual sinks at each block
    norms:       (n_layers + 1, n) residual norm of each visual token (0 = input embeddings)

    Long runs (more than `Settings.attention_full_tokens` positions) are computed block by block
    without holding every layer's (T, T) matrices; with more than `MAX_QUERY_ROWS` text queries,
    `query_spans` lists the (first, last) positions behind each row of `attention` and
    `rollout` (n_queries there is the number of rows): the last `EXACT_LAST_QUERIES` queries
    one row each, earlier ones block means. shares, head_image, sinks, norms stay exact.
    """

    kind: ClassVar[str] = "vlm_attention"

    attention: np.ndarray = in_table()
    rollout: np.ndarray = in_table()
    shares: np.ndarray = in_table()
    head_image: np.ndarray = in_table()
    sinks: np.ndarray = in_table()
    norms: np.ndarray = in_table()
    params: dict[str, Any] = in_meta(default_factory=dict)
    notes: list[str] = in_meta(default_factory=list)
    seconds: float = in_meta(default=0.0, decode=float)
    run_id: str | None = None
    query_spans: list[tuple[int, int]] | None = in_meta(default=None, decode=decode_spans, json=False)

    @property
    def prompt_len(self) -> int:
        return len(self.tokens) - len(self.answer)

    def json_views(self) -> dict[str, Any]:
        return self.query_views(None)

    def to_dict_at(self, query: int | None) -> dict[str, Any]:
        """The CLI's JSON with the per-head grids of one text query (None: the last, as `to_dict`)."""
        return self.json_with(self.query_views(query))

    def query_views(self, query: int | None) -> dict[str, Any]:
        """`json_views` for one text query: per-head grids are for it (default: the last text token)."""
        rows, cols = self.grid
        qi = self.query_index(query)

        def grid(values: np.ndarray) -> list[list[float]]:
            return np.round(np.asarray(values, dtype=np.float64).reshape(rows, cols), 6).tolist()

        return {
            **super().json_views(),
            "tokens": self.tokens,
            "modality": self.modality,
            "query": self._query_json(qi),
            "layers": [
                {
                    "layer": layer + 1,
                    "shares": dict(zip(SHARE_NAMES, map(float, self.shares[layer]), strict=True)),
                    "sink_patches": [int(i) for i in np.flatnonzero(self.sinks[layer])],
                    "mean": grid(self.attention[layer, :, qi].mean(axis=0)),
                    "rollout": grid(self.rollout[layer, qi]),
                    "heads": [
                        {
                            "head": h,
                            "image_share": float(self.head_image[layer, h]),
                            "attention": grid(self.attention[layer, h, qi]),
                        }
                        for h in range(self.n_heads)
                    ],
                }
                for layer in range(self.n_layers)
            ],
            "rollout": grid(self.rollout[-1, qi]),
        }

    def _query_json(self, row: int) -> dict[str, Any]:
        """The query behind row `row`: its position and token, or (a long run's block) its span."""
        a, b = self.query_units[row]
        out: dict[str, Any] = {"position": a, "token": self.tokens[a], "generated": a >= self.prompt_len}
        if b > a:
            out.update(last_position=b, n_tokens=b - a + 1, block_mean=True)
        return out

    def to_tables(self) -> dict[str, pa.Table]:
        L, H = self.head_image.shape
        n = self.norms.shape[1]
        lh, hh = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
        ln, pn = np.meshgrid(np.arange(L + 1), np.arange(n), indexing="ij")
        sinks = np.vstack([np.zeros((1, n), dtype=bool), self.sinks])
        return {
            **attention_tables(self.attention, self.rollout),
            "layers": pa.table(
                {
                    "layer": np.arange(1, L + 1, dtype=np.int32),
                    **{name: self.shares[:, i].astype(np.float64) for i, name in enumerate(SHARE_NAMES)},
                }
            ),
            "heads": pa.table(
                {
                    "layer": (lh.ravel() + 1).astype(np.int32),
                    "head": hh.ravel().astype(np.int32),
                    "image_share": self.head_image.ravel().astype(np.float64),
                }
            ),
            "patches": pa.table(
                {
                    "layer": ln.ravel().astype(np.int32),
                    "patch": pn.ravel().astype(np.int32),
                    "norm": self.norms.ravel().astype(np.float64),
                    "sink": sinks.ravel(),
                }
            ),
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        L, H = int(meta["n_layers"]), int(meta["n_heads"])
        n = int(meta["grid"][0]) * int(meta["grid"][1])
        spans = decode_spans(meta.get("query_spans"))
        n_rows = len(spans) if spans else len(meta["query_positions"])
        attention, rollout = attention_from_tables(tables, (L, H, n_rows, n))

        def column(table: str, name: str, order: list[str]) -> np.ndarray:
            return table_column(tables, table, name, order)

        return {
            "attention": attention,
            "rollout": rollout,
            "shares": np.stack([column("layers", k, ["layer"]) for k in SHARE_NAMES], axis=1).astype(
                np.float64
            ),
            "head_image": column("heads", "image_share", ["layer", "head"]).reshape(L, H).astype(np.float64),
            "sinks": column("patches", "sink", ["layer", "patch"]).reshape(L + 1, n)[1:].astype(bool),
            "norms": column("patches", "norm", ["layer", "patch"]).reshape(L + 1, n).astype(np.float64),
        }


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def vlm_attention(
    vlm: VisionLanguageModel,
    prompt: str,
    image: Image.Image | None,
    *,
    params: VLMAttentionParams | None = None,
    max_tokens: int = 512,
    full_tokens: int = 256,
    progress: ProgressFn | None = None,
) -> VLMAttentionResult:
    """Text -> image attention for (image, prompt) on `vlm`, with the greedy answer's tokens as
    further queries: one generation, then one traced forward pass with attentions.

    `max_tokens` is the prompt limit (visual tokens included); sequences (answer included) of
    more than `full_tokens` positions run block by block (`streamed_text_image`), keeping only
    what is stored; both come from `Settings`."""
    params = params or VLMAttentionParams()
    params.validate()
    prog = progress or (lambda f, m: None)
    if image is None:
        raise InputError("attention to image patches needs an image")
    t0 = time.perf_counter()
    prog(0.05, "Encoding the image and the prompt")
    inputs = vlm.prepare(prompt, image, max_tokens)
    img = inputs.image_positions
    if not img or inputs.grid is None or inputs.image is None:
        raise InputError("the model produced no visual tokens for this image")
    answer: list[int] = []
    if params.generate:
        answer = generate(vlm, inputs, params.generate, progress=lambda f, m: prog(0.1 + 0.4 * f, m))
    modality = inputs.modality + [MODALITY_TEXT] * len(answer)
    queries = text_queries(modality)
    if not queries:
        raise InputError("no text follows the image, so no text token attends to it")
    # per-patch views keep the grid's positions: models that add tiles after a base view
    # (LLaVA-NeXT) have more image tokens than grid cells, and the grid is the base view
    cells = int(inputs.grid[0]) * int(inputs.grid[1])
    notes = []
    if len(modality) > full_tokens:
        prog(0.55, "One forward pass, reduced block by block")
        views = streamed_text_image(vlm, inputs, answer, img, queries, cells, params, progress=prog)
        notes.append(views.note(len(modality), len(queries)))
    else:
        prog(0.55, "Tracing one forward pass with attentions")
        trace, _ = capture_vlm(vlm, inputs, answer, attentions=True)
        assert trace.attentions is not None
        att = trace.attentions.numpy().astype(np.float64)  # (L, H, T, T)
        prog(0.8, "Rollout and attention shares")
        to_img, received = image_attention(att, queries, img)
        norms = trace.residual[:, img].norm(dim=-1).numpy().astype(np.float64)  # (L + 1, n_img)
        sinks = visual_sinks(norms, received, params.sink_norm_k, params.sink_share_k)
        views = TextImageViews(
            attention=to_img[..., :cells],
            rollout=attention_rollout(att)[:, queries][:, :, img[:cells]],  # (L, Q, cells)
            shares=attention_shares(att, queries, img, sinks),
            head_image=to_img.sum(axis=-1).mean(axis=-1),  # (L, H), every image token
            sinks=sinks,
            norms=norms,
            received=received,
        )
    if vlm.uses_model_forward:
        notes.append(
            "this hub VLM runs its own forward: attention masks (e.g. bidirectional image attention) are the "
            "model's own"
        )
    prog(1.0, "Done")
    return VLMAttentionResult(
        model=vlm.model_id,
        prompt=prompt,
        n_layers=vlm.n_layers,
        n_heads=int(views.head_image.shape[1]),
        tokens=position_labels(vlm, inputs.input_ids.tolist() + answer, modality, inputs.grid),
        modality=modality,
        grid=[int(inputs.grid[0]), int(inputs.grid[1])],
        image_png=base64.b64encode(image_to_png(inputs.image)).decode(),
        answer=[vlm.lm.token_str(i) for i in answer],
        query_positions=queries,
        attention=views.attention,
        rollout=views.rollout,
        shares=views.shares,
        head_image=views.head_image,
        sinks=views.sinks[:, :cells],
        norms=views.norms[:, :cells],
        params=params.to_json(),
        notes=notes,
        seconds=time.perf_counter() - t0,
        query_spans=views.query_spans,
    )


@dataclass
class TextImageViews:
    """What a run keeps, however it was computed (shapes as in `VLMAttentionResult`; sinks and
    norms cover every image token, the result keeps the grid's)."""

    attention: np.ndarray
    rollout: np.ndarray
    shares: np.ndarray
    head_image: np.ndarray
    sinks: np.ndarray
    norms: np.ndarray
    received: np.ndarray  # (L, n_img): each image token's share of the queries' image attention
    query_spans: list[tuple[int, int]] | None = None

    def note(self, n_positions: int, n_queries: int) -> str:
        text = (
            f"long sequence ({n_positions} positions): computed block by block without keeping every block's "
            "full attention matrices; shares, sinks, norms and the image share per head are exact"
        )
        if self.query_spans is None:
            return text
        blocks = sum(1 for a, b in self.query_spans if b > a)
        return (
            f"{text}. Of the {n_queries} text queries, the last {len(self.query_spans) - blocks} keep their own "
            f"per-head attention and rollout rows; the earlier ones are kept as {blocks} block means (pick a "
            "block by any of its positions)"
        )


@torch.no_grad()
def streamed_text_image(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    answer: list[int],
    img: list[int],
    queries: list[int],
    cells: int,
    params: VLMAttentionParams,
    *,
    max_rows: int | None = None,
    exact_last: int | None = None,
    progress: ProgressFn | None = None,
) -> TextImageViews:
    """The views of `vlm_attention` from ONE pass that reduces each block's (H, T, T) weights as
    soon as the block has run (`vlm_attention_pass`) and drops them: memory is one layer's
    matrices plus what is kept, never n_layers x n_heads x T^2.

    Every number equals the full path's (`image_attention`, `attention_rollout`,
    `attention_shares`); with more than `max_rows` queries, the per-patch rows are kept per
    `query_blocks` (defaults: `MAX_QUERY_ROWS`, `EXACT_LAST_QUERIES`). The rollout is carried at the grid's columns only: X_l = A'_l @ X_{l-1},
    X_-1 the (T, cells) indicator of the grid positions, so X_l = rollout_l[:, grid] exactly."""
    prog = progress or (lambda f, m: None)
    n_l = vlm.n_layers
    q0 = queries[0]
    if queries != list(range(q0, q0 + len(queries))):
        raise ValueError("text queries must be contiguous positions after the image")
    spans = query_blocks(
        queries, max_rows or MAX_QUERY_ROWS, EXACT_LAST_QUERIES if exact_last is None else exact_last
    )
    img_idx = torch.tensor(img, dtype=torch.long)
    grid_idx = img_idx[:cells]
    kept: dict[str, list[torch.Tensor]] = {
        name: [] for name in ("attention", "rollout", "head_image", "received", "rows", "norms")
    }
    carried: list[torch.Tensor] = []

    def rows_of(x: torch.Tensor) -> torch.Tensor:
        """(..., Q, m) per-query rows -> (..., rows, m): as they are, or `spans` block means."""
        if spans is None:
            return x
        return torch.stack([x[..., a - q0 : b - q0 + 1, :].mean(dim=-2) for a, b in spans], dim=-2)

    def on_layer(layer: int, w: torch.Tensor) -> None:  # w: (H, T, T) float32
        rows = w[:, q0:, :]  # (H, Q, T): a view, the queries are contiguous
        to_img = rows[:, :, img_idx.to(w.device)]  # (H, Q, n_img)
        mass = to_img.sum(dim=-1, keepdim=True)
        share = to_img / mass.clamp_min(1e-12)
        kept["received"].append(share.sum(dim=0).double().mean(dim=0).cpu() / share.shape[0])
        kept["head_image"].append(mass[..., 0].mean(dim=-1, dtype=torch.float64).cpu())
        kept["attention"].append(rows_of(to_img[..., :cells].double()).cpu())
        kept["rows"].append(  # heads summed in float32, queries in float64 (no float64 copy of rows)
            rows.sum(dim=0).double().sum(dim=0).cpu() / (rows.shape[0] * rows.shape[1])
        )
        if not carried:
            carried.append(torch.zeros(w.shape[-1], cells, dtype=torch.float64, device=w.device))
            carried[0][grid_idx.to(w.device), torch.arange(cells, device=w.device)] = 1.0
        carried[0] = rollout_carry(w.mean(dim=0), carried[0])
        kept["rollout"].append(rows_of(carried[0][q0:]).cpu())
        prog(0.55 + 0.4 * (layer + 1) / n_l, f"Attention of block {layer + 1}/{n_l}")

    def on_residual(layer: int, h: torch.Tensor) -> None:  # h: (T, d_model) float32
        kept["norms"].append(h[img_idx.to(h.device)].norm(dim=-1).double().cpu())

    vlm_attention_pass(vlm, inputs, answer, on_layer, on_residual)

    def stacked(name: str) -> np.ndarray:
        return torch.stack(kept[name]).numpy().astype(np.float64)

    norms = stacked("norms")  # (L + 1, n_img)
    received = stacked("received")  # (L, n_img)
    sinks = visual_sinks(norms, received, params.sink_norm_k, params.sink_share_k)
    return TextImageViews(
        attention=stacked("attention"),
        rollout=stacked("rollout"),
        shares=shares_from_rows(stacked("rows"), img, sinks),
        head_image=stacked("head_image"),
        sinks=sinks,
        norms=norms,
        received=received,
        query_spans=spans,
    )
