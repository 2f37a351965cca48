"""Visual tokens inside a VLM's language model: EmbedLens-style categories and text->image attention.

EmbedLens (Fan et al. 2026, "What Do Visual Tokens Really Encode?") finds that visual tokens
partition into *sink*, *dead* and *alive* groups and that only the alive ones carry
image-specific meaning. We use operational definitions (the paper clusters tokens; its exact
clustering procedure was not available to us, only its abstract):

- sink at block l: the residual entering block l has norm > `sink_norm_k` x the median norm of
  the visual tokens there, AND the token receives more than `sink_share_k` x its uniform share
  of the attention that text queries (after the image) give to the image (mean over heads);
- dead: dropping the token from the input changes the answer's log-probability by less than
  `dead_logprob_eps` nats AND the last prompt position's final output (logits) by less than
  `dead_hidden_eps` (relative L2). One ablation per visual token, batched; an input-level
  property, so the same at every layer (the paper's categories are also input-level);
- alive: the rest. A token that is both sink and dead counts as sink.

Attention views: for every text query (prompt text after the image, and generated tokens) the
attention it gives each image patch, per layer and head, and rolled out (Abnar & Zuidema 2020:
0.5 * mean-over-heads + 0.5 * I, multiplied through the layers); and per layer the share of the
text queries' attention going to image tokens, text tokens and sink tokens (the first position,
the classic attention sink, plus the visual sinks of that layer).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from explorer.analysis.attention_math import attention_rollout
from explorer.backends.images import image_to_png
from explorer.backends.vlm import (
    MODALITY_IMAGE,
    MODALITY_TEXT,
    VisionLanguageModel,
    capture_vlm,
    generate,
    position_labels,
)
from explorer.errors import InputError
from explorer.params import params_json
from explorer.progress import ProgressFn
from explorer.results import in_meta, in_table, register_result
from explorer.vlm.attention import (
    TextImageAttention,
    VLMAttentionParams,
    attention_from_tables,
    attention_shares,
    attention_tables,
    decode_spans,
    image_attention,
    streamed_text_image,
    table_column,
    text_queries,
    visual_sinks,
)

ALIVE, DEAD, SINK = 0, 1, 2
CATEGORY_NAMES = ("alive", "dead", "sink")


@dataclass(frozen=True)
class TokenParams:
    """Thresholds of the categories and the answer that the ablations score."""

    sink_norm_k: float = 4.0
    sink_share_k: float = 2.0
    dead_logprob_eps: float = 0.05
    dead_hidden_eps: float = 0.02
    answer_tokens: int = 3
    batch_size: int = 16

    def validate(self) -> None:
        if self.sink_norm_k <= 1.0:
            raise InputError(f"sink_norm_k must be > 1 (got {self.sink_norm_k})")
        if self.sink_share_k <= 0:
            raise InputError(f"sink_share_k must be > 0 (got {self.sink_share_k})")
        if self.dead_logprob_eps < 0 or self.dead_hidden_eps < 0:
            raise InputError("the dead-token epsilons must be >= 0")
        if not 1 <= self.answer_tokens <= 32:
            raise InputError(f"answer_tokens must be in 1..32 (got {self.answer_tokens})")
        if self.batch_size < 1:
            raise InputError("batch_size must be >= 1")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


@register_result
@dataclass
class VisualTokensResult(TextImageAttention):
    """Per visual token and layer: norm, received attention, category; text->image attention.

    norms:      (n_layers + 1, n_img) residual L2 norm (0 = input embeddings)
    received:   (n_layers, n_img) share of the text queries' image attention at block l
    categories: (n_layers, n_img) ALIVE / DEAD / SINK at block l (1-based blocks stored 0-based)
    delta_logprob, delta_hidden: (n_img,) the ablation effects behind "dead"
    attention:  (n_layers, n_heads, n_queries, n_img) text query -> image patch attention
    rollout:    (n_layers, n_queries, n_img) rolled-out attention after each block
    shares:     (n_layers, 3) mean share of text queries' attention on image / text / sink

    Long runs (more than `Settings.attention_full_tokens` positions) are computed block by block
    (`streamed_text_image`, as "vlm_attention") without holding every layer's (T, T) matrices;
    with more than `MAX_QUERY_ROWS` text queries, `query_spans` lists the (first, last) positions
    behind each row of `attention` and `rollout` (block means but for the last queries). norms,
    received, categories and shares stay exact.
    """

    kind: ClassVar[str] = "vlm_tokens"

    norms: np.ndarray = in_table()
    received: np.ndarray = in_table()
    categories: np.ndarray = in_table()
    delta_logprob: np.ndarray = in_table()
    delta_hidden: np.ndarray = in_table()
    attention: np.ndarray = in_table()
    rollout: np.ndarray = in_table()
    shares: np.ndarray = in_table()
    params: dict[str, Any] = in_meta(default_factory=dict, json="thresholds")
    notes: list[str] = in_meta(default_factory=list)
    seconds: float = in_meta(default=0.0, decode=float)
    run_id: str | None = None
    query_spans: list[tuple[int, int]] | None = in_meta(default=None, decode=decode_spans, json=False)

    def counts(self) -> list[dict[str, int]]:
        """Per block: how many visual tokens are alive / dead / sink."""
        return [
            {"layer": layer + 1, **{name: int((row == c).sum()) for c, name in enumerate(CATEGORY_NAMES)}}
            for layer, row in enumerate(self.categories)
        ]

    def json_views(self) -> dict[str, Any]:
        rows, cols = self.grid
        return {
            **super().json_views(),
            "counts": self.counts(),
            "categories": [
                {
                    "layer": layer + 1,
                    "grid": [[CATEGORY_NAMES[int(c)] for c in r] for r in cat.reshape(rows, cols)],
                }
                for layer, cat in enumerate(self.categories)
            ],
            "ablation": [
                {
                    "patch": i,
                    "row": i // cols,
                    "col": i % cols,
                    "delta_logprob": float(d),
                    "delta_hidden": float(h),
                }
                for i, (d, h) in enumerate(zip(self.delta_logprob, self.delta_hidden, strict=True))
            ],
            "shares": [
                {"layer": layer + 1, "image": float(s[0]), "text": float(s[1]), "sink": float(s[2])}
                for layer, s in enumerate(self.shares)
            ],
            "query_tokens": [self.tokens[q] for q in self.query_positions],
            "rollout_last_query": np.round(self.rollout[-1, -1].reshape(rows, cols), 6).tolist(),
        }

    def to_tables(self) -> dict[str, pa.Table]:
        n_layers1, n_img = self.norms.shape
        lay, patch = np.meshgrid(np.arange(n_layers1), np.arange(n_img), indexing="ij")
        blocks = np.arange(1, n_layers1)
        recv = np.vstack([np.full((1, n_img), np.nan), self.received])
        cats = np.vstack([np.full((1, n_img), -1), self.categories])
        tokens = pa.table(
            {
                "layer": lay.ravel().astype(np.int32),
                "patch": patch.ravel().astype(np.int32),
                "norm": self.norms.ravel().astype(np.float64),
                "received": recv.ravel().astype(np.float64),
                "category": cats.ravel().astype(np.int8),
            }
        )
        ablation = pa.table(
            {
                "patch": np.arange(n_img, dtype=np.int32),
                "delta_logprob": self.delta_logprob.astype(np.float64),
                "delta_hidden": self.delta_hidden.astype(np.float64),
            }
        )
        shares = pa.table(
            {
                "layer": blocks.astype(np.int32),
                "image": self.shares[:, 0].astype(np.float64),
                "text": self.shares[:, 1].astype(np.float64),
                "sink": self.shares[:, 2].astype(np.float64),
            }
        )
        return {
            "tokens": tokens,
            "ablation": ablation,
            **attention_tables(self.attention, self.rollout),
            "shares": shares,
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        n_layers, n_heads = int(meta["n_layers"]), int(meta["n_heads"])
        n_img = sum(1 for m in meta["modality"] if m == MODALITY_IMAGE)
        spans = decode_spans(meta.get("query_spans"))
        n_q = len(spans) if spans else len(meta["query_positions"])

        def column(table: str, name: str, order: list[str]) -> np.ndarray:
            return table_column(tables, table, name, order)

        tok_order = ["layer", "patch"]
        attention, rollout = attention_from_tables(tables, (n_layers, n_heads, n_q, n_img))
        shares = np.stack([column("shares", k, ["layer"]) for k in ("image", "text", "sink")], axis=1)
        return {
            "norms": column("tokens", "norm", tok_order).reshape(n_layers + 1, n_img).astype(np.float64),
            "received": column("tokens", "received", tok_order)
            .reshape(n_layers + 1, n_img)[1:]
            .astype(np.float64),
            "categories": column("tokens", "category", tok_order)
            .reshape(n_layers + 1, n_img)[1:]
            .astype(np.int64),
            "delta_logprob": column("ablation", "delta_logprob", ["patch"]).astype(np.float64),
            "delta_hidden": column("ablation", "delta_hidden", ["patch"]).astype(np.float64),
            "attention": attention.astype(np.float64),
            "rollout": rollout.astype(np.float64),
            "shares": shares.astype(np.float64),
        }


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------
def _answer_logprob_and_hidden(
    vlm: VisionLanguageModel, embeds: torch.Tensor, answer: list[int], prompt_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """embeds (B, T, d) = prompt (prompt_len positions) + answer; -> (B,) sum log p(answer),
    (B, vocab) final output (logits) of the last prompt position, which predicts the answer."""
    # logits of positions prompt_len - 1 .. T - 1 only (row 0 predicts the answer's first token):
    # bounded at any length, where every position's logits would be T x vocab per sequence
    keep = embeds.shape[1] - (prompt_len - 1)
    out = vlm.lm.forward(inputs_embeds=embeds, output_attentions=False, logits_to_keep=keep)
    idx = torch.arange(len(answer))
    logp = torch.log_softmax(out.logits[:, idx].float(), dim=-1)
    target = torch.tensor(answer, dtype=torch.long)
    score = logp[:, idx, target].sum(dim=1)
    hidden = out.logits[:, 0].float()
    return score.cpu().numpy().astype(np.float64), hidden.cpu().numpy().astype(np.float64)


@torch.inference_mode()
def ablate_visual_tokens(
    vlm: VisionLanguageModel,
    embeds: torch.Tensor,
    image_positions: list[int],
    answer: list[int],
    prompt_len: int,
    batch_size: int,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop each visual token from the sequence in turn (batched): -> (|delta log p(answer)|,
    relative L2 change of the last prompt position's logits) per visual token.

    `embeds` (T, d) is prompt + answer; the answer is scored by teacher forcing."""
    base_lp, base_h = _answer_logprob_and_hidden(vlm, embeds.unsqueeze(0), answer, prompt_len)
    keep_all = np.arange(embeds.shape[0])
    d_lp = np.zeros(len(image_positions))
    d_h = np.zeros(len(image_positions))
    for start in range(0, len(image_positions), batch_size):
        chunk = image_positions[start : start + batch_size]
        batch = torch.stack([embeds[torch.from_numpy(keep_all[keep_all != p])] for p in chunk])
        lp, h = _answer_logprob_and_hidden(vlm, batch, answer, prompt_len - 1)
        d_lp[start : start + len(chunk)] = np.abs(lp - base_lp[0])
        d_h[start : start + len(chunk)] = np.linalg.norm(h - base_h[0], axis=1) / max(
            float(np.linalg.norm(base_h[0])), 1e-12
        )
        if progress is not None:
            progress(
                (start + len(chunk)) / len(image_positions), f"Ablated {start + len(chunk)} visual tokens"
            )
    return d_lp, d_h


def classify(
    norms: np.ndarray,
    received: np.ndarray,
    d_lp: np.ndarray,
    d_h: np.ndarray,
    params: TokenParams,
) -> np.ndarray:
    """(n_layers + 1, n_img) norms, (n_layers, n_img) received shares -> (n_layers, n_img) categories.

    Block l (0-based index) reads the residual norms[l]."""
    sink = visual_sinks(norms, received, params.sink_norm_k, params.sink_share_k)
    dead = (d_lp < params.dead_logprob_eps) & (d_h < params.dead_hidden_eps)
    cats = np.full(received.shape, ALIVE, dtype=np.int64)
    cats[:, dead] = DEAD
    cats[sink] = SINK
    return cats


def visual_tokens(
    vlm: VisionLanguageModel,
    prompt: str,
    image: Image.Image | None,
    *,
    params: TokenParams | None = None,
    max_tokens: int = 512,
    full_tokens: int = 256,
    progress: ProgressFn | None = None,
) -> VisualTokensResult:
    """Categories of the visual tokens and text->image attention for (image, prompt) on a VLM.

    Sequences (answer included) of more than `full_tokens` positions (`Settings`) run the
    attention block by block (`streamed_text_image`); the ablations behind "dead" keep no attention."""
    params = params or TokenParams()
    params.validate()
    prog = progress or (lambda f, m: None)
    if image is None:
        raise InputError("visual-token analysis needs an image")
    if vlm.uses_model_forward:
        raise InputError("visual-token ablations need a VLM whose LM takes input embeddings (e.g. tiny-vlm)")
    t0 = time.perf_counter()
    prog(0.02, "Encoding the image and the prompt")
    inputs = vlm.prepare(prompt, image, max_tokens)
    answer = generate(vlm, inputs, params.answer_tokens, progress=lambda f, m: prog(0.05 + 0.15 * f, m))
    img = inputs.image_positions
    prompt_len = inputs.seq_len
    modality = inputs.modality + [MODALITY_TEXT] * len(answer)
    queries = text_queries(modality)
    if not queries:
        raise InputError("no text follows the image, so no text token attends to it")
    long_note: list[str] = []
    if len(modality) > full_tokens:
        prog(0.2, "One forward pass, reduced block by block")
        sink_params = VLMAttentionParams(
            generate=0, sink_norm_k=params.sink_norm_k, sink_share_k=params.sink_share_k
        )
        views = streamed_text_image(
            vlm,
            inputs,
            answer,
            img,
            queries,
            len(img),
            sink_params,
            progress=lambda f, m: prog(0.2 + 0.15 * f, m),
        )
        tokens = position_labels(vlm, inputs.input_ids.tolist() + answer, modality, inputs.grid)
        norms, received, n_heads = views.norms, views.received, int(views.head_image.shape[1])
        text_to_img, rolled, shares, spans = views.attention, views.rollout, views.shares, views.query_spans
        long_note.append(views.note(len(modality), len(queries)))
    else:
        prog(0.2, "Tracing one forward pass with attentions")
        trace, _ = capture_vlm(vlm, inputs, answer, attentions=True)
        assert trace.attentions is not None
        att = trace.attentions.numpy().astype(np.float64)  # (L, H, T, T)
        tokens, n_heads, spans = trace.tokens, int(att.shape[1]), None
        norms = trace.residual[:, img].norm(dim=-1).numpy().astype(np.float64)  # (L+1, n_img)
        text_to_img, received = image_attention(att, queries, img)  # (L, H, Q, n_img), (L, n_img)
        rolled = attention_rollout(att)[:, queries][:, :, img]  # (L, Q, n_img)
        sinks = visual_sinks(norms, received, params.sink_norm_k, params.sink_share_k)  # = categories == SINK
        shares = attention_shares(att, queries, img, sinks)
        del att, trace
    prog(0.35, "Ablating each visual token")
    assert inputs.inputs_embeds is not None
    embeds, _ = _full_embeds(vlm, inputs, answer)
    d_lp, d_h = ablate_visual_tokens(
        vlm, embeds, img, answer, prompt_len, params.batch_size, lambda f, m: prog(0.35 + 0.55 * f, m)
    )
    cats = classify(norms, received, d_lp, d_h, params)
    notes = [
        "EmbedLens categories use operational definitions (see thresholds); the paper's clustering was not reproduced",
        "dead is input-level: one ablation per visual token, the same at every layer",
    ]
    if not answer:
        raise InputError("the model generated no answer tokens to score")
    notes += long_note
    prog(1.0, "Done")
    return VisualTokensResult(
        model=vlm.model_id,
        prompt=prompt,
        n_layers=vlm.n_layers,
        n_heads=n_heads,
        tokens=tokens,
        modality=modality,
        grid=list(inputs.grid or (1, len(img))),
        image_png=base64.b64encode(image_to_png(inputs.image)).decode() if inputs.image else "",
        answer=[vlm.lm.token_str(i) for i in answer],
        query_positions=queries,
        norms=norms,
        received=received,
        categories=cats,
        delta_logprob=d_lp,
        delta_hidden=d_h,
        attention=text_to_img,
        rollout=rolled,
        shares=shares,
        params=params.to_json(),
        notes=notes,
        seconds=time.perf_counter() - t0,
        query_spans=spans,
    )


def _full_embeds(
    vlm: VisionLanguageModel, inputs: Any, answer: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    from explorer.backends.vlm import _with_extra

    embeds, ids = _with_extra(vlm, inputs, answer)
    assert embeds is not None
    return embeds, ids
