"""Figures of "vlm_attention" runs (the Attention tab with an image and a VLM).

- `text_to_image_attention`: the attention one text query (prompt or generated; default the
  last) gives each image patch, for one head, the mean over heads or the rollout, as an
  overlay on the image with a block slider (shared with "vlm_tokens" runs).
- `attention_shares`: per block, the share of the text queries' attention on image, text and
  sink tokens (stacked; shared with "vlm_tokens" runs).
- `image_share_heads`: blocks x heads, the share of the text queries' attention on the image.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure
from explorer.plots.vlm_tokens import attention_data, attention_shares, shares_data, text_to_image_attention
from explorer.vlm.attention import VLMAttentionResult

KIND = VLMAttentionResult.kind


def image_share_heads(result: VLMAttentionResult) -> go.Figure:
    """Blocks x heads heatmap of the share of the text queries' attention that lands on the image."""
    L, H = result.head_image.shape
    fig = go.Figure(
        go.Heatmap(
            z=result.head_image,
            x=list(range(H)),
            y=list(range(1, L + 1)),
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": "on image", "side": "right"}},
            hovertemplate="block %{y}, head %{x}: %{z:.3f} of the text queries' attention on the image"
            "<extra></extra>",
        )
    )
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="LM block", autorange="reversed")
    uniform = result.n_image / len(result.tokens)
    return base_layout(
        fig,
        f"Share of text → image attention per block and head ({result.n_image} visual of "
        f"{len(result.tokens)} tokens: {uniform:.2f} if uniform over all tokens)",
        height=max(360, 16 * L + 160),
    )


def image_share_data(result: VLMAttentionResult) -> pa.Table:
    L, H = result.head_image.shape
    block, head = np.meshgrid(np.arange(1, L + 1), np.arange(H), indexing="ij")
    return pa.table({"block": block.ravel(), "head": head.ravel(), "image_share": result.head_image.ravel()})


register_figure(
    KIND, "text_to_image_attention", "Text -> image attention", text_to_image_attention, attention_data
)
register_figure(
    KIND, "attention_shares", "Attention shares: image / text / sink", attention_shares, shares_data
)
register_figure(KIND, "image_share_heads", "Image share: blocks x heads", image_share_heads, image_share_data)
