"""Drawing values over an image's patch grid: the picture as the model saw it, a heatmap whose
cells sit exactly on the patches, and axes in pixels with the image's aspect ratio."""

from __future__ import annotations

import base64
from typing import Any

import plotly.graph_objects as go
from PIL import Image

from explorer.backends.images import image_to_png


def image_trace(image: Image.Image) -> go.Image:
    """The picture (pixel coordinates, no hover) to draw under a patch heatmap."""
    png = base64.b64encode(image_to_png(image)).decode("ascii")
    return go.Image(source="data:image/png;base64," + png, x0=0, y0=0, dx=1, dy=1, hoverinfo="skip")


def patch_geometry(size: tuple[int, int], grid: Any) -> dict[str, float]:
    """Heatmap x0/dx/y0/dy so that cell (r, c) of a rows x cols grid covers its patch."""
    (width, height), (rows, cols) = size, (int(grid[0]), int(grid[1]))
    return {"x0": width / cols / 2, "dx": width / cols, "y0": height / rows / 2, "dy": height / rows}


def image_axes(fig: go.Figure, size: tuple[int, int], grid: Any) -> go.Figure:
    """Pixel axes over the whole image, y downwards, square pixels."""
    (width, height), (rows, cols) = size, (int(grid[0]), int(grid[1]))
    fig.update_xaxes(title=f"x (pixels; {cols} visual-token columns)", range=[0, width], showgrid=False)
    fig.update_yaxes(
        title=f"y (pixels; {rows} rows)",
        range=[height, 0],
        showgrid=False,
        scaleanchor="x",
        constrain="domain",
    )
    return fig
