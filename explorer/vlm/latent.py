"""LatentLens-style nearest neighbours: describe each visual token by contextual text tokens.

LatentLens (Krojer et al. 2026, arXiv 2602.00462) encodes a text corpus with the language
model and keeps the hidden state of every token *in its context*; a visual token's hidden
state is then compared, by cosine similarity, with these contextual text representations,
and its top-k nearest neighbours (token + the sentence it came from) describe it.

What we implement, following the paper's released code:
- the text bank: every token of every corpus sentence, skipping leading special tokens and
  the first content token (the paper skips BOS and position 1), skipping a token whose prefix
  was already seen (identical prefixes give identical states in a causal LM), and keeping at
  most `max_contexts` contexts per token string (first come, first served); hidden states are
  L2-normalised and stored in float16;
- the layers stored follow the paper's grid (1, 2, 4, 8, 16, 24, n-2, n-1) plus the last
  block's output n (raw, before the final norm, as every other view here reads residuals);
- similarity: cosine (dot product of L2-normalised vectors), top-k per visual token;
- `match="same"`: a visual token at layer l is compared with text at layer l only (what this
  app shows by default); `match="all"`: with text at every stored layer, ranked globally, the
  paper's cross-layer merge (which finds the "mid-layer leap": input visual tokens resemble
  mid-layer text), then visual layer 0 (the projected patches) is searched too.

Deviations (also listed in every result's `deviations`): a small shipped corpus (scene
captions + 2,400 template sentences, ~500 distinct token strings with SmolLM2's tokenizer)
instead of the paper's 117k-sentence concept corpus, so far fewer neighbours exist to choose
from; float16 storage; a fixed set of stored layers; no BOS-skipping where the model has none.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from explorer.backends.images import image_to_png
from explorer.backends.language import LanguageModel
from explorer.backends.vlm import MODALITY_IMAGE, VisionLanguageModel, capture_vlm
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import StoredFields, in_meta, in_table, register_result
from explorer.vlm.latent_corpus import Corpus

MATCH_SAME = "same"
MATCH_ALL = "all"
MATCHES = (MATCH_SAME, MATCH_ALL)
MAX_CONTEXTS = 50  # the paper's library default
MAX_SENTENCE_TOKENS = 48
CONTEXT_TOKENS = 8  # tokens of left context kept for display
BANK_FORMAT = 1


def bank_layers(n_layers: int) -> list[int]:
    """The paper's layer grid (1, 2, 4, 8, 16, 24, n-2, n-1) plus n, within 1..n."""
    grid = {x for x in (1, 2, 4, 8, 16, 24) if x < n_layers}
    grid |= {max(1, n_layers - 2), max(1, n_layers - 1), n_layers}
    return sorted(grid)


def searched_layers(n_layers: int, match: str) -> list[int]:
    """The visual-token layers a run searches: the bank's layers, plus 0 when matching all."""
    layers = bank_layers(n_layers)
    return layers if match == MATCH_SAME else [0, *layers]


# ---------------------------------------------------------------------------------------------
# The text bank
# ---------------------------------------------------------------------------------------------
@register_result
@dataclass
class TextBank(StoredFields):
    """Contextual text-token representations of one model over one corpus.

    layers:    the residual layers stored (0 = input embeddings, i = output of block i-1)
    vectors:   (len(layers), n_entries, d_model) float16, L2-normalised; None until loaded
               from `path` (the store indexes the entries, the vectors live in the cache file)
    token_ids, sentence, position: (n_entries,) the token, its sentence index, its position
    tokens, contexts, sources: n_entries strings: the token, up to CONTEXT_TOKENS tokens of
               left context, "caption" / "general"
    """

    kind: ClassVar[str] = "latent_bank"
    json_kind: ClassVar[bool] = True

    model: str = in_meta()
    weight_hash: str = in_meta()
    corpus_digest: str = in_meta(old=("corpus",), json="corpus")  # runs stored before: "corpus"
    layers: list[int] = in_meta()
    token_ids: np.ndarray = in_table()
    sentence: np.ndarray = in_table()
    position: np.ndarray = in_table()
    tokens: list[str] = in_table()
    contexts: list[str] = in_table()
    sources: list[str] = in_table()
    d_model: int = in_meta()
    n_sentences: int = in_meta()
    n_tokens_encoded: int = in_meta()
    max_contexts: int = in_meta()
    seconds: float = in_meta(decode=float)
    path: str = in_meta(default="")
    vectors: np.ndarray | None = None  # loaded from `path` on first use, never stored
    run_id: str | None = None

    @property
    def n_entries(self) -> int:
        return int(self.token_ids.shape[0])

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"the text bank has no layer {layer}; it stores layers {self.layers}")
        return self.layers.index(layer)

    def matrix(self) -> np.ndarray:
        """The vectors, loaded from the cache file on first use."""
        if self.vectors is None:
            self.vectors = load_bank_vectors(Path(self.path), self)
        return self.vectors

    def json_views(self) -> dict[str, Any]:
        return {"n_entries": self.n_entries, "dtype": "float16"}

    def to_tables(self) -> dict[str, pa.Table]:
        return {
            "entries": pa.table(
                {
                    "entry": np.arange(self.n_entries, dtype=np.int32),
                    "token_id": self.token_ids.astype(np.int64),
                    "token": self.tokens,
                    "sentence": self.sentence.astype(np.int32),
                    "position": self.position.astype(np.int32),
                    "context": self.contexts,
                    "source": self.sources,
                }
            )
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        t = tables["entries"].sort_by("entry")
        return {
            "token_ids": t.column("token_id").to_numpy().astype(np.int64),
            "sentence": t.column("sentence").to_numpy().astype(np.int32),
            "position": t.column("position").to_numpy().astype(np.int32),
            "tokens": [str(x) for x in t.column("token").to_pylist()],
            "contexts": [str(x) for x in t.column("context").to_pylist()],
            "sources": [str(x) for x in t.column("source").to_pylist()],
        }


def bank_file(
    cache_dir: Path, model: str, weight_hash: str, corpus_digest: str, layers: list[int], cap: int
) -> Path:
    """cache/latent_banks/<model>-<weights>-<corpus>-<layers+cap>.npz"""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[-60:]
    tail = f"L{'_'.join(map(str, layers))}-c{cap}-v{BANK_FORMAT}"
    return cache_dir / "latent_banks" / f"{safe}-{weight_hash[:12]}-{corpus_digest}-{tail}.npz"


def save_bank(bank: TextBank, path: Path) -> None:
    """Write the whole bank (vectors + entries) to `path` atomically: a fresh store can index
    it again without re-encoding the corpus."""
    assert bank.vectors is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**bank.to_dict(), "tokens": bank.tokens, "contexts": bank.contexts, "sources": bank.sources}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        vectors=bank.vectors,
        token_ids=bank.token_ids,
        sentence=bank.sentence,
        position=bank.position,
        meta=np.asarray(json.dumps(meta)),
    )
    tmp.replace(path)


def load_bank(path: Path) -> TextBank:
    """A bank written by `save_bank` (vectors loaded)."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return TextBank(
            model=meta["model"],
            weight_hash=meta["weight_hash"],
            corpus_digest=meta["corpus"],
            layers=[int(x) for x in meta["layers"]],
            token_ids=np.asarray(data["token_ids"]),
            sentence=np.asarray(data["sentence"]),
            position=np.asarray(data["position"]),
            tokens=meta["tokens"],
            contexts=meta["contexts"],
            sources=meta["sources"],
            d_model=int(meta["d_model"]),
            n_sentences=int(meta["n_sentences"]),
            n_tokens_encoded=int(meta["n_tokens_encoded"]),
            max_contexts=int(meta["max_contexts"]),
            seconds=float(meta["seconds"]),
            path=str(path),
            vectors=np.asarray(data["vectors"]),
        )


def load_bank_vectors(path: Path, bank: TextBank) -> np.ndarray:
    """The vectors of `bank` (indexed in the store) from its cache file."""
    if not path.exists():
        raise FileNotFoundError(f"the text bank's vectors are missing: {path}")
    with np.load(path) as data:
        if not np.array_equal(data["token_ids"], bank.token_ids):
            raise FileNotFoundError(f"{path} does not match the bank indexed in the store")
        return np.asarray(data["vectors"])


@torch.no_grad()
def build_text_bank(
    lm: LanguageModel,
    corpus: Corpus,
    *,
    layers: list[int] | None = None,
    max_contexts: int = MAX_CONTEXTS,
    batch_size: int = 32,
    encoded: list[list[int]] | None = None,
    progress: ProgressFn | None = None,
) -> TextBank:
    """Run `lm` over every corpus sentence and keep the contextual states of its tokens.

    `encoded` (optional) gives the token ids of each sentence directly (tests plant exact
    contexts with it); by default each sentence is tokenised with the tokenizer's special
    tokens, as the paper does. Sentences are batched by length (right padding, masked)."""
    t0 = time.perf_counter()
    layers = sorted(layers or bank_layers(lm.n_layers))
    tok = lm.tokenizer
    if encoded is None:
        encoded = [
            list(tok(s, add_special_tokens=True).input_ids)[:MAX_SENTENCE_TOKENS] for s in corpus.sentences
        ]
    if len(encoded) != len(corpus):
        raise ValueError("one id list per corpus sentence")
    specials = {int(i) for i in getattr(tok, "all_special_ids", [])}
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    seen: set[tuple[int, ...]] = set()
    per_token: Counter[str] = Counter()
    names: dict[int, str] = {}
    rows: list[np.ndarray] = []
    ids_out, sent_out, pos_out, tokens, contexts, sources = [], [], [], [], [], []
    n_tokens = 0
    for start in range(0, len(order), batch_size):
        chunk = [i for i in order[start : start + batch_size] if encoded[i]]
        if not chunk:
            continue
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[r, : len(encoded[i])] = 1
        picks: list[tuple[int, int]] = []
        for r, i in enumerate(chunk):
            sent = encoded[i]
            n_tokens += len(sent)
            first = next((p for p, t in enumerate(sent) if t not in specials), len(sent))
            for p in range(first + 1, len(sent)):
                tid = sent[p]
                if tid in specials:
                    continue
                prefix = tuple(sent[: p + 1])
                if prefix in seen:
                    continue
                name = names.get(tid)
                if name is None:
                    name = names[tid] = lm.token_str(tid)
                if per_token[name] >= max_contexts:
                    continue
                seen.add(prefix)
                per_token[name] += 1
                picks.append((r, p))
                ids_out.append(tid)
                sent_out.append(i)
                pos_out.append(p)
                tokens.append(name)
                contexts.append(str(tok.decode(sent[max(first, p - CONTEXT_TOKENS) : p])))
                sources.append(corpus.sources[i])
        if picks:
            states = lm.residuals(ids, mask, layers)  # (S, B, T, d)
            r_idx = torch.tensor([r for r, _ in picks])
            p_idx = torch.tensor([p for _, p in picks])
            picked = states[:, r_idx, p_idx]  # (S, n_picks, d)
            picked = picked / picked.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            rows.append(picked.numpy().astype(np.float16))
        if progress is not None:
            done = min(start + batch_size, len(order))
            progress(done / len(order), f"Text bank: encoded {done} of {len(order)} sentences")
    if not rows:
        raise InputError("the corpus produced no tokens for the text bank")
    return TextBank(
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        corpus_digest=corpus.digest,
        layers=layers,
        token_ids=np.asarray(ids_out, dtype=np.int64),
        sentence=np.asarray(sent_out, dtype=np.int32),
        position=np.asarray(pos_out, dtype=np.int32),
        tokens=tokens,
        contexts=contexts,
        sources=sources,
        d_model=lm.d_model,
        n_sentences=len(corpus),
        n_tokens_encoded=n_tokens,
        max_contexts=max_contexts,
        seconds=time.perf_counter() - t0,
        vectors=np.concatenate(rows, axis=1),
    )


def search(
    bank: TextBank, queries: np.ndarray, layers: list[int], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine top-k of `queries` (n, d) among the bank's entries at `layers` (merged and ranked
    globally when several, as the paper's cross-layer search).

    Returns (similarity (n, k) float64 descending, entry (n, k) int64, bank layer (n, k) int64)."""
    q = np.asarray(queries, dtype=np.float32)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    vectors = bank.matrix()
    k = min(k, bank.n_entries)
    sims, entries, from_layer = [], [], []
    for layer in layers:
        s = q @ vectors[bank.layer_index(layer)].astype(np.float32).T  # (n, N)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        sims.append(np.take_along_axis(s, top, axis=1))
        entries.append(top)
        from_layer.append(np.full_like(top, layer))
    s_all, e_all, l_all = (np.concatenate(x, axis=1) for x in (sims, entries, from_layer))
    best = np.argsort(-s_all, axis=1, kind="stable")[:, :k]
    return (
        np.take_along_axis(s_all, best, axis=1).astype(np.float64),
        np.take_along_axis(e_all, best, axis=1).astype(np.int64),
        np.take_along_axis(l_all, best, axis=1).astype(np.int64),
    )


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentParams:
    """k neighbours per visual token; `match`: "same" layer or "all" stored layers (the paper)."""

    k: int = 5
    match: str = MATCH_SAME

    def validate(self) -> None:
        if not 1 <= self.k <= 20:
            raise InputError(f"k must be in 1..20 (got {self.k})")
        if self.match not in MATCHES:
            raise InputError(f"match must be one of {MATCHES} (got {self.match!r})")

    def to_json(self) -> dict[str, Any]:
        return {"k": self.k, "match": self.match}


DEVIATIONS = (
    "corpus: the app's own scene captions and ~2,400 template sentences (the paper: 117k sentences over "
    "23k WordNet concepts), so far fewer candidate neighbours exist",
    "positions skipped: leading special tokens and the first content token (the paper skips positions 0 "
    "and 1, BOS and the first token; SmolLM2 adds no BOS); at most {cap} contexts per token string",
    "stored text layers: {layers} (the paper's grid plus the last block's raw output); vectors in float16",
    "hidden states are the raw residual stream (no final norm) at every layer, as in the other views",
)


@register_result
@dataclass
class LatentNeighboursResult(StoredFields):
    """Top-k contextual text neighbours of every visual token at each layer searched.

    layers:     the visual-token layers searched (0 = projected patches as the LM receives them)
    similarity: (len(layers), n_img, k) cosine similarity, descending along k
    token_ids:  (len(layers), n_img, k) the neighbours' token ids
    bank_layer: (len(layers), n_img, k) the text layer each neighbour comes from
    neighbours, contexts, sources: nested lists [layer][patch][rank] of token strings, left
               contexts and "caption" / "general"
    """

    kind: ClassVar[str] = "vlm_latent"
    json_kind: ClassVar[bool] = True

    model: str = in_meta()
    prompt: str = in_meta()
    n_layers: int = in_meta(json=False)
    tokens: list[str] = in_meta(json=False)
    modality: list[str] = in_meta(json=False)
    grid: list[int] = in_meta()
    image_png: str = in_meta(json=False)
    layers: list[int] = in_meta()
    similarity: np.ndarray = in_table()
    token_ids: np.ndarray = in_table()
    bank_layer: np.ndarray = in_table()
    neighbours: list[list[list[str]]] = in_table()
    contexts: list[list[list[str]]] = in_table()
    sources: list[list[list[str]]] = in_table()
    bank: dict[str, Any] = in_meta(default_factory=dict)
    params: dict[str, Any] = in_meta(default_factory=dict, json=False)  # its "match" is shown
    deviations: list[str] = in_meta(default_factory=list)
    seconds: float = in_meta(default=0.0, decode=float)
    run_id: str | None = None

    @property
    def n_image(self) -> int:
        return int(self.similarity.shape[1])

    @property
    def k(self) -> int:
        return int(self.similarity.shape[2])

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(self.image_png))).convert("RGB")

    def layer_index(self, layer: int | None) -> int:
        """A visual layer (default: the last searched) -> its index in `layers`."""
        if layer is None:
            return len(self.layers) - 1
        if int(layer) not in self.layers:
            raise InputError(f"layer {layer} was not searched; choose from {self.layers}")
        return self.layers.index(int(layer))

    def top_tokens(self) -> list[dict[str, Any]]:
        """Per layer: how often each token is some patch's nearest neighbour (most common first)."""
        out = []
        for li, layer in enumerate(self.layers):
            counts = Counter(self.neighbours[li][p][0] for p in range(self.n_image))
            out.append({"layer": layer, "top1": [[t, n] for t, n in counts.most_common(8)]})
        return out

    def json_views(self) -> dict[str, Any]:
        cols = self.grid[1]
        return {
            "k": self.k,
            "match": self.params.get("match", MATCH_SAME),
            "metric": "cosine",
            "most_common_top1": self.top_tokens(),
            "neighbours": [
                {
                    "layer": layer,
                    "patches": [
                        {
                            "patch": p,
                            "row": p // cols,
                            "col": p % cols,
                            "neighbours": [
                                {
                                    "token": self.neighbours[li][p][j],
                                    "similarity": round(float(self.similarity[li, p, j]), 5),
                                    "context": self.contexts[li][p][j],
                                    "text_layer": int(self.bank_layer[li, p, j]),
                                    "source": self.sources[li][p][j],
                                }
                                for j in range(self.k)
                            ],
                        }
                        for p in range(self.n_image)
                    ],
                }
                for li, layer in enumerate(self.layers)
            ],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        n_l, n_img, k = self.similarity.shape
        li, pi, ri = np.meshgrid(np.arange(n_l), np.arange(n_img), np.arange(k), indexing="ij")

        def flat(nested: list[list[list[str]]]) -> list[str]:
            return [x for layer in nested for patch in layer for x in patch]

        return {
            "neighbours": pa.table(
                {
                    "layer": np.asarray(self.layers, dtype=np.int32)[li.ravel()],
                    "patch": pi.ravel().astype(np.int32),
                    "rank": (ri.ravel() + 1).astype(np.int32),
                    "token_id": self.token_ids.ravel().astype(np.int64),
                    "token": flat(self.neighbours),
                    "similarity": self.similarity.ravel().astype(np.float64),
                    "text_layer": self.bank_layer.ravel().astype(np.int32),
                    "context": flat(self.contexts),
                    "source": flat(self.sources),
                }
            )
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        t = tables["neighbours"].sort_by(
            [("layer", "ascending"), ("patch", "ascending"), ("rank", "ascending")]
        )
        layers = [int(x) for x in meta["layers"]]
        n_img = sum(1 for m in meta["modality"] if m == MODALITY_IMAGE)
        k = t.num_rows // max(1, len(layers) * n_img)
        shape = (len(layers), n_img, k)

        def nested(name: str) -> list[list[list[str]]]:
            arr = np.asarray(t.column(name).to_pylist(), dtype=object).reshape(shape)
            return [[[str(x) for x in patch] for patch in layer] for layer in arr]

        return {
            "similarity": t.column("similarity").to_numpy().reshape(shape).astype(np.float64),
            "token_ids": t.column("token_id").to_numpy().reshape(shape).astype(np.int64),
            "bank_layer": t.column("text_layer").to_numpy().reshape(shape).astype(np.int64),
            "neighbours": nested("token"),
            "contexts": nested("context"),
            "sources": nested("source"),
        }


def latent_neighbours(
    vlm: VisionLanguageModel,
    prompt: str,
    image: Image.Image | None,
    bank: TextBank,
    *,
    params: LatentParams | None = None,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> LatentNeighboursResult:
    """The k nearest contextual text tokens of every visual token of (image, prompt)."""
    params = params or LatentParams()
    params.validate()
    prog = progress or (lambda f, m: None)
    if image is None:
        raise InputError("nearest text neighbours of visual tokens need an image")
    if (bank.model, bank.weight_hash) != (vlm.lm.model_id, vlm.lm.weight_hash):
        raise InputError(
            f"the text bank was built with {bank.model} ({bank.weight_hash[:8]}), not this VLM's LM"
        )
    t0 = time.perf_counter()
    prog(0.05, "Encoding the image and the prompt")
    inputs = vlm.prepare(prompt, image, max_tokens)
    img = inputs.image_positions
    if not img:
        raise InputError("the model placed no visual tokens in the prompt")
    prog(0.2, "Tracing the residual stream")
    trace, modality = capture_vlm(vlm, inputs)
    layers = list(bank.layers) if params.match == MATCH_SAME else [0, *bank.layers]  # = searched_layers
    sims, ids, from_layer = [], [], []
    names: list[list[list[str]]] = []
    contexts: list[list[list[str]]] = []
    sources: list[list[list[str]]] = []
    for n, layer in enumerate(layers):
        prog(0.3 + 0.65 * n / len(layers), f"Searching the text bank at layer {layer}")
        queries = trace.residual[layer, img].numpy()
        searched = [layer] if params.match == MATCH_SAME else list(bank.layers)
        s, e, fl = search(bank, queries, searched, params.k)
        sims.append(s)
        ids.append(bank.token_ids[e])
        from_layer.append(fl)
        names.append([[bank.tokens[j] for j in row] for row in e])
        contexts.append([[bank.contexts[j] for j in row] for row in e])
        sources.append([[bank.sources[j] for j in row] for row in e])
    cap, layer_list = bank.max_contexts, bank.layers
    prog(1.0, "Done")
    return LatentNeighboursResult(
        model=vlm.model_id,
        prompt=prompt,
        n_layers=trace.n_layers,
        tokens=trace.tokens,
        modality=modality,
        grid=list(inputs.grid or (1, len(img))),
        image_png=base64.b64encode(image_to_png(inputs.image)).decode() if inputs.image else "",
        layers=layers,
        similarity=np.stack(sims),
        token_ids=np.stack(ids),
        bank_layer=np.stack(from_layer),
        neighbours=names,
        contexts=contexts,
        sources=sources,
        bank={k: v for k, v in bank.to_dict().items() if k not in ("kind", "path")},
        params=params.to_json(),
        deviations=[d.format(cap=cap, layers=layer_list) for d in DEVIATIONS],
        seconds=time.perf_counter() - t0,
    )
