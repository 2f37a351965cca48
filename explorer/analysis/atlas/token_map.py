"""Maps of token states: hidden states of one layer, or of all layers in one aligned fit.

`token_map(lm, prompts, layer=...)` runs one forward pass per prompt (`explorer.trace.capture`,
no attentions; on a vision-language model `capture_vlm` over the image + prompt, so the image's
visual tokens are points too, with modality "image" and token type "visual"; on the embedded sentence
encoder all-MiniLM-L6-v2 its BERT hidden states), takes the residual stream at `layer` (0 = the embeddings as block 0 sees them,
i = the output of block i-1) or at every layer, and projects all points together with UMAP
(cosine) or PCA. With all layers the map is *one* fit over every (layer, token) point, so a
layer slider moves through one coordinate system and a token's path across layers is a
trajectory on that map. The coordinates are stored with the run: the same inputs are never
refitted (the run store serves them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.analysis.atlas.projection import ProjectionParams, project
from explorer.analysis.atlas.token_types import special_ids, token_type
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result

MAX_POINTS = 20_000
MAX_PROMPTS = 200
CONTEXT_BEFORE = 6
CONTEXT_AFTER = 2
COLOUR_BY = ("layer", "position", "token_type", "modality", "norm", "prompt")


@dataclass(frozen=True)
class TokenMapParams:
    """layer: one residual layer (0..n_layers, negative counts from the end) or None for all layers."""

    layer: int | None = None
    projection: ProjectionParams = field(default_factory=ProjectionParams)

    def validate(self) -> None:
        self.projection.validate()

    def to_json(self) -> dict[str, Any]:
        return {"layer": "all" if self.layer is None else self.layer, **self.projection.to_json()}


def context_string(tokens: list[str], position: int) -> str:
    """The token in its context: a few tokens before, the token in brackets, a few after."""
    before = "".join(tokens[max(0, position - CONTEXT_BEFORE) : position])
    after = "".join(tokens[position + 1 : position + 1 + CONTEXT_AFTER])
    lead = "…" if position > CONTEXT_BEFORE else ""
    tail = "…" if position + 1 + CONTEXT_AFTER < len(tokens) else ""
    return f"{lead}{before}[{tokens[position]}]{after}{tail}"


@register_result
@dataclass
class TokenMapResult(StoredFields):
    """A 2-D map of token states.

    coords:       (n_points, 2) float32 map coordinates
    prompt_index, position, layer, token_id: (n_points,) int arrays
    token, token_type, modality, context: n_points strings
    norm:         (n_points,) float32 L2 norm of the residual vector (before projection)
    tokens:       per prompt, its decoded tokens
    """

    kind: ClassVar[str] = "token_map"

    model: str = in_meta()
    prompts: list[str] = in_meta()
    tokens: list[list[str]] = in_meta()
    n_layers: int = in_meta()
    layer_mode: str = in_meta(decode=str, json="layer")  # "all" or the layer index as a string
    method: str = in_meta()
    coords: np.ndarray = in_table()
    prompt_index: np.ndarray = in_table()
    position: np.ndarray = in_table()
    layer: np.ndarray = in_table()
    token_id: np.ndarray = in_table()
    token: list[str] = in_table()
    token_type: list[str] = in_table()
    modality: list[str] = in_table()
    context: list[str] = in_table()
    norm: np.ndarray = in_table()
    params: dict[str, Any] = in_meta(json=False)
    fit: dict[str, Any] = in_meta()
    seconds: float = in_meta(decode=float)
    notes: list[str] = in_meta(default_factory=list)
    run_id: str | None = None
    image: str | None = in_meta(
        default=None
    )  # digest of the image (a VLM map over image + prompt), else None

    @property
    def n_points(self) -> int:
        return int(self.coords.shape[0])

    @property
    def layers(self) -> list[int]:
        return sorted({int(v) for v in self.layer})

    def trajectory(self, prompt_index: int, position: int) -> np.ndarray:
        """Indices of one token's points, ordered by layer (a path across the layers)."""
        idx = np.flatnonzero((self.prompt_index == prompt_index) & (self.position == position))
        return idx[np.argsort(self.layer[idx], kind="stable")]

    def select(self, indices: list[int]) -> list[dict[str, Any]]:
        """The points at `indices` as rows (for 'selected points' lists)."""
        rows = []
        for i in indices:
            if 0 <= i < self.n_points:
                rows.append(
                    {
                        "point": int(i),
                        "prompt": int(self.prompt_index[i]),
                        "position": int(self.position[i]),
                        "layer": int(self.layer[i]),
                        "token": self.token[i],
                        "token_type": self.token_type[i],
                        "context": self.context[i],
                    }
                )
        return rows

    def points_table(self) -> pa.Table:
        return pa.table(
            {
                "point": np.arange(self.n_points, dtype=np.int32),
                "prompt_index": self.prompt_index.astype(np.int32),
                "position": self.position.astype(np.int32),
                "layer": self.layer.astype(np.int16),
                "token_id": self.token_id.astype(np.int64),
                "token": pa.array(self.token, pa.string()),
                "token_type": pa.array(self.token_type, pa.string()),
                "modality": pa.array(self.modality, pa.string()),
                "context": pa.array(self.context, pa.string()),
                "norm": self.norm.astype(np.float32),
                "x": self.coords[:, 0].astype(np.float32),
                "y": self.coords[:, 1].astype(np.float32),
            }
        )

    def json_views(self) -> dict[str, Any]:
        return {"n_points": self.n_points, "points": self.points_table().to_pylist()}

    def to_tables(self) -> dict[str, pa.Table]:
        return {"points": self.points_table()}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        t = tables["points"].sort_by("point")
        return {
            "coords": np.stack([t["x"].to_numpy(), t["y"].to_numpy()], axis=1).astype(np.float32),
            "prompt_index": t["prompt_index"].to_numpy().astype(np.int64),
            "position": t["position"].to_numpy().astype(np.int64),
            "layer": t["layer"].to_numpy().astype(np.int64),
            "token_id": t["token_id"].to_numpy().astype(np.int64),
            "token": t["token"].to_pylist(),
            "token_type": t["token_type"].to_pylist(),
            "modality": t["modality"].to_pylist(),
            "context": t["context"].to_pylist(),
            "norm": t["norm"].to_numpy().astype(np.float32),
        }


def resolve_layer(layer: int | None, n_layers: int) -> int | None:
    if layer is None:
        return None
    value = layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= value <= n_layers:
        raise InputError(f"layer must be between 0 and {n_layers} (or negative from the end), got {layer}")
    return value


DATASET_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
PROMPT_COLUMNS = ("prompt", "question")


@dataclass
class MapDataset:
    """Rows of a sweep's dataset file: one prompt each, and the path of its image (or None)."""

    prompts: list[str]
    images: list[Path | None]


def read_map_dataset(path: str | Path, max_rows: int = MAX_PROMPTS) -> MapDataset:
    """A JSONL / CSV / Parquet file with a `prompt` (or `question`) column and an optional `image`
    column (paths relative to the file) -> its rows, every one checked before anything runs."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"dataset file {file} does not exist")
    fmt = DATASET_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise InputError(f"dataset file {file}: unknown format {file.suffix!r}; use .jsonl, .csv or .parquet")
    from explorer.table_files import read_table

    table = read_table(file, fmt)
    column = next((c for c in PROMPT_COLUMNS if c in table.column_names), None)
    if column is None:
        raise InputError(
            f"{file} has no 'prompt' or 'question' column (found: {', '.join(table.column_names) or 'none'})"
        )
    if table.num_rows == 0:
        raise InputError(f"{file} has no rows")
    if table.num_rows > max_rows:
        raise InputError(f"{file} has {table.num_rows} rows; a map takes at most {max_rows}")
    prompts: list[str] = []
    images: list[Path | None] = []
    has_image = "image" in table.column_names
    for i, row in enumerate(table.to_pylist(), start=1):
        text = row.get(column)
        if text is None or not str(text).strip():
            raise InputError(f"{file} row {i}: the column {column!r} is empty")
        prompts.append(str(text))
        value = row.get("image") if has_image else None
        if value is None or not str(value).strip():
            images.append(None)
            continue
        image = Path(str(value).strip()).expanduser()
        image = image if image.is_absolute() else file.parent / image
        if not image.is_file():
            raise InputError(f"{file} row {i}: image {value!r} not found (looked at {image})")
        images.append(image)
    if has_image and any(im is None for im in images) and any(im is not None for im in images):
        raise InputError(f"{file}: some rows have an image and some do not; a map takes one kind of input")
    return MapDataset(prompts, images)


def clean_prompts(prompts: str | list[str] | tuple[str, ...]) -> list[str]:
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    items = [p for p in items if p is not None and p.strip()]
    if not items:
        raise InputError("the prompt is empty: type some text to map")
    if len(items) > MAX_PROMPTS:
        raise InputError(f"at most {MAX_PROMPTS} prompts per map, got {len(items)}")
    return items


@dataclass
class TokenStates:
    """One input's token states.

    ids:      (seq,) token ids (image positions hold the VLM's image-token id)
    tokens:   seq display strings (image positions as `<img r,c>`)
    residual: (n_layers + 1, seq, d) residual stream, layer 0 = the input embeddings
    modality: seq strings, "text" or "image"
    """

    ids: list[int]
    tokens: list[str]
    residual: np.ndarray
    modality: list[str]


def _is_vlm(model: Any) -> bool:
    from explorer.backends.vlm import VisionLanguageModel

    return isinstance(model, VisionLanguageModel)


def _is_sentence_encoder(model: Any) -> bool:
    from explorer.backends.sentence import SentenceEncoder

    return isinstance(model, SentenceEncoder)


def token_map(
    lm: Any,
    prompts: list[str],
    *,
    params: TokenMapParams,
    max_tokens: int,
    image: Any = None,
    image_digest: str | None = None,
    cache_dir: Path | None = None,
    progress: ProgressFn | None = None,
) -> TokenMapResult:
    """Capture the residual stream of every prompt and project the chosen layer(s) to 2-D.

    `lm` is a `LanguageModel`, or a `VisionLanguageModel` with `image` (a PIL image, one per prompt
    in a list, or None): then each prompt is fed with its image, and the visual tokens are mapped
    with the text tokens."""
    from explorer.trace import capture, encode

    t0 = time.perf_counter()
    n_layers = lm.n_layers
    layer = resolve_layer(params.layer, n_layers)
    layers = list(range(n_layers + 1)) if layer is None else [layer]
    vlm = _is_vlm(lm)
    encoder = _is_sentence_encoder(lm)
    if vlm:
        pictures = image if isinstance(image, list) else [image] * len(prompts)
        inputs = [lm.prepare(p, im, max_tokens) for p, im in zip(prompts, pictures, strict=True)]
        lengths = [x.seq_len for x in inputs]
    elif encoder:
        hidden = [lm.hidden_states(p, max_tokens) for p in prompts]  # one pass each, cheap (6 layers)
        lengths = [len(h[0]) for h in hidden]
    else:
        encoded = [encode(lm, p, max_tokens) for p in prompts]
        lengths = [int(ids.numel()) for ids in encoded]
    n_points = sum(lengths) * len(layers)
    if n_points > MAX_POINTS:
        raise InputError(
            f"the map would have {n_points} points (limit {MAX_POINTS}): pick one layer, or shorter or fewer prompts"
        )

    def states(pi: int) -> TokenStates:
        if vlm:
            from explorer.backends.vlm import capture_vlm

            trace, modality = capture_vlm(lm, inputs[pi])
            return TokenStates(
                trace.input_ids.tolist(), trace.tokens, trace.residual[layers].cpu().numpy(), modality
            )
        if encoder:
            ids, toks, states_ = hidden[pi]
            return TokenStates(ids, toks, states_[layers].numpy(), ["text"] * len(ids))
        trace = capture(lm, encoded[pi], attentions=False)
        ids = encoded[pi].tolist()
        return TokenStates(ids, trace.tokens, trace.residual[layers].cpu().numpy(), ["text"] * len(ids))

    specials = special_ids(lm.tokenizer)
    vectors: list[np.ndarray] = []
    cols: dict[str, list[Any]] = {
        k: [] for k in ("prompt", "position", "layer", "token_id", "token", "type", "modality")
    }
    context: list[str] = []
    tokens_all: list[list[str]] = []
    for pi in range(len(prompts)):
        if progress is not None:
            progress(0.05 + 0.4 * pi / len(prompts), f"Forward pass {pi + 1}/{len(prompts)}")
        st = states(pi)
        res = st.residual  # (n_sel_layers, seq, d)
        seq = len(st.ids)
        tokens_all.append(st.tokens)
        types = [
            token_type(t, int(i), specials, visual=m == "image")
            for t, i, m in zip(st.tokens, st.ids, st.modality, strict=True)
        ]
        ctx = [context_string(st.tokens, p) for p in range(seq)]
        for li, lay in enumerate(layers):
            vectors.append(res[li])
            cols["prompt"] += [pi] * seq
            cols["position"] += list(range(seq))
            cols["layer"] += [lay] * seq
            cols["token_id"] += st.ids
            cols["token"] += st.tokens
            cols["type"] += types
            cols["modality"] += st.modality
            context += ctx
    x = np.concatenate(vectors, axis=0).astype(np.float32)
    if progress is not None:
        progress(0.5, f"Fitting {params.projection.method.upper()} on {x.shape[0]} points")
    coords, fit = project(x, params.projection, cache_dir)
    notes = []
    if layer is None:
        notes.append(
            "One fit over every layer's points (aligned map): residual norms grow with depth, so the cosine "
            "metric compares directions only; layer 0 is the token embedding as block 0 sees it."
        )
    if vlm:
        notes.append(
            "Vision-language model: the image's visual tokens (projected into the language model, labelled "
            "<img row,col>) are mapped with the text tokens of the chat prompt; colour by modality to tell them apart."
        )
    if encoder:
        notes.append(
            "Sentence encoder (all-MiniLM-L6-v2, BERT): bidirectional, every token's state sees the whole text; "
            "layer 0 is the embedding layer's output (word + position + type embeddings, LayerNorm)."
        )
    notes += [str(n) for n in fit.pop("notes", [])]  # type: ignore[attr-defined]
    return TokenMapResult(
        model=lm.model_id,
        prompts=prompts,
        tokens=tokens_all,
        n_layers=n_layers,
        layer_mode="all" if layer is None else str(layer),
        method=params.projection.method,
        coords=coords,
        prompt_index=np.asarray(cols["prompt"], dtype=np.int64),
        position=np.asarray(cols["position"], dtype=np.int64),
        layer=np.asarray(cols["layer"], dtype=np.int64),
        token_id=np.asarray(cols["token_id"], dtype=np.int64),
        token=cols["token"],
        token_type=cols["type"],
        modality=cols["modality"],
        context=context,
        norm=np.linalg.norm(x, axis=1).astype(np.float32),
        params=params.to_json(),
        fit=fit,
        seconds=time.perf_counter() - t0,
        notes=notes,
        image=image_digest,
    )
