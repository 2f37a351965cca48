"""Paper-ready restyling of any registered figure: journal column widths, print font sizes,
print-safe colours, readable labels, and a layout whose texts neither overlap nor leave the canvas.

Units: an exported SVG is sized in CSS pixels (96 per inch), so a single-column figure is
3.3 in x 96 = 317 px wide and a 7 pt font is 7 x 96 / 72 = 9.33 px; placed at its natural size
in a paper, the figure is at print size. PNG renders the same layout at 300 dpi (scale 300 / 96).

`paper_figure(fig, options)` works on the finished plotly figure, so every builder gets the same
treatment without knowing about print: the height follows the content (rows of a heatmap, bars,
images' aspect ratio), categorical tick labels are thinned to what fits, long titles wrap, and
legends and colour bars are placed where they cannot collide with the title or the axes.
"""

from __future__ import annotations

import functools
import html
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from explorer.errors import InputError

PX_PER_IN = 96
PNG_DPI = 300
COLUMN_WIDTH_IN = {"single": 3.3, "double": 7.0}  # about 84 mm and 178 mm
MIN_FONT_PT = 7.0
MAX_HEIGHT_IN = {"single": 6.0, "double": 8.5}
BACKGROUNDS = ("light", "transparent")
FONT_FAMILY = "Arial, Helvetica, sans-serif"  # DejaVu Sans is what Chromium falls back to here

# Okabe & Ito (2008), colour-blind safe; black last so it is used least.
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "triangle-down", "cross", "star"]
SEQUENTIAL = "Viridis"
CHAR_EM = 0.58  # mean glyph advance of a sans-serif font, as a fraction of its size
LINE_EM = 1.3


@dataclass(frozen=True)
class ExportOptions:
    """How a figure is exported.

    size: "single" (3.3 in) or "double" (7 in) journal column, or "screen" (the UI's own layout);
    title: keep the figure title (papers usually put it in the caption);
    font_pt: base font size at print size (>= 7 pt; ticks and legends use it, titles a bit more);
    background: "light" (white) or "transparent".
    """

    size: str = "double"
    title: bool = True
    font_pt: float = 8.0
    background: str = "light"

    def validate(self) -> ExportOptions:
        if self.size not in (*COLUMN_WIDTH_IN, "screen"):
            raise InputError(f"unknown size {self.size!r}; choose from {[*COLUMN_WIDTH_IN, 'screen']}")
        if not MIN_FONT_PT <= float(self.font_pt) <= 14:
            raise InputError(f"font size must be between {MIN_FONT_PT:g} and 14 pt, got {self.font_pt:g}")
        if self.background not in BACKGROUNDS:
            raise InputError(f"unknown background {self.background!r}; choose from {list(BACKGROUNDS)}")
        return self

    @property
    def width_px(self) -> int:
        return round(COLUMN_WIDTH_IN.get(self.size, 7.0) * PX_PER_IN)

    @property
    def font_px(self) -> float:
        return float(self.font_pt) * PX_PER_IN / 72

    @property
    def max_height_px(self) -> int:
        return round(MAX_HEIGHT_IN.get(self.size, 8.5) * PX_PER_IN)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---- text measures -------------------------------------------------------------------------
_TAG = re.compile(r"<[^>]+>")


def plain(text: str | None) -> str:
    """Text without plotly's HTML tags and entities (for measuring)."""
    return html.unescape(_TAG.sub("", (text or "").replace("<br>", "\n")))


def text_width(text: str | None, font_px: float) -> float:
    lines = plain(text).split("\n") or [""]
    return max(len(line) for line in lines) * CHAR_EM * font_px


def text_lines(text: str | None) -> int:
    return plain(text).count("\n") + 1 if text else 0


def wrap(text: str, max_px: float, font_px: float) -> str:
    """Insert <br> between words so that no line is wider than `max_px`."""
    words = plain(text).replace("\n", " ").split(" ")
    per_line = max(8, int(max_px / (CHAR_EM * font_px)))
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= per_line:
            lines[-1] += " " + word
        else:
            while len(word) > per_line:
                lines.append(word[:per_line])
                word = word[per_line:]
            lines.append(word)
    return "<br>".join(html.escape(line, quote=False) for line in lines)


# ---- the restyle ---------------------------------------------------------------------------
def _axes(fig: go.Figure, letter: str) -> list[Any]:
    return [fig.layout[name] for name in fig.layout if name.startswith(f"{letter}axis")]


def _n_categories(fig: go.Figure, letter: str) -> int:
    """How many rows (y) or columns (x) the figure's heatmaps / bars / tables show."""
    n = 0
    for trace in fig.data:
        if trace.type == "heatmap" and trace.z is not None:
            rows = len(trace.z)
            cols = len(trace.z[0]) if rows else 0
            n = max(n, rows if letter == "y" else cols)
        elif trace.type == "bar":
            cats = trace.y if (trace.orientation == "h") == (letter == "y") else None
            n = max(n, len({str(c) for c in cats}) if cats is not None else 0)
    return n


def _subplot_grid(fig: go.Figure) -> tuple[int, int]:
    """(rows, columns) of subplots, from the distinct axis domains."""
    xs = {tuple(ax.domain) for ax in _axes(fig, "x") if ax.domain is not None}
    ys = {tuple(ax.domain) for ax in _axes(fig, "y") if ax.domain is not None}
    return max(1, len(ys)), max(1, len(xs))


def _image_aspect(fig: go.Figure) -> float | None:
    """Height / width of one subplot when its axes are locked to the data (images, scaleanchor)."""
    for trace in fig.data:
        if trace.type == "image" and trace.z is not None:
            return len(trace.z) / max(1, len(trace.z[0]))
    if any(ax.scaleanchor for ax in _axes(fig, "y")):
        for trace in fig.data:
            if trace.type == "heatmap" and trace.z is not None and len(trace.z):
                return len(trace.z) / max(1, len(trace.z[0]))
        return 1.0
    return None


def _thin_ticks(axis: Any, length_px: float, need_px: float) -> None:
    """Keep every k-th categorical tick label so that labels `need_px` apart fit `length_px`."""
    vals = list(axis.tickvals) if axis.tickvals is not None else None
    texts = list(axis.ticktext) if axis.ticktext is not None else None
    if not vals or texts is None or len(vals) != len(texts):
        return
    capacity = max(1, int(length_px // max(need_px, 1.0)))
    if len(vals) <= capacity:
        return
    step = math.ceil(len(vals) / capacity)
    axis.update(tickvals=vals[::step], ticktext=texts[::step])


# named maps an export keeps: perceptually uniform sequential, greyscale, diverging (signed data)
# and cyclic ones; every other named sequential map becomes viridis (same direction)
KEPT_SCALES = (
    "viridis", "cividis", "inferno", "magma", "plasma", "greys", "gray",
    "rdbu", "rdgy", "piyg", "prgn", "brbg", "puor", "rdylbu", "balance", "curl", "delta", "icefire",
    "twilight", "phase", "edge", "hsv", "mrybm", "mygbm",
)  # fmt: skip

ScaleKey = tuple[tuple[float, str], ...]


def _scale_key(scale: Any) -> ScaleKey | None:
    return tuple((float(v), str(c)) for v, c in scale) if scale else None


@functools.cache
def _replaced_scales() -> dict[ScaleKey, bool]:
    """Stops of every named plotly scale an export replaces (plotly stores a named scale as its
    stops) -> whether it is the reversed ("_r") variant."""
    from plotly.colors import named_colorscales

    out: dict[ScaleKey, bool] = {}
    for name in named_colorscales():
        if name in KEPT_SCALES:
            continue
        for variant, reversed_ in ((name, False), (name + "_r", True)):
            key = _scale_key(go.Heatmap(colorscale=variant).colorscale)
            if key:
                out.setdefault(key, reversed_)
    return out


def _decade_ticks(fig: go.Figure) -> None:
    """Log axes tick at powers of ten only: plotly draws its in-between labels ("2", "5") at 75%
    of the tick font, below the print minimum."""
    for letter in ("x", "y"):
        for key in [k for k in fig.layout if k.startswith(f"{letter}axis")]:
            axis = fig.layout[key]
            if axis.type != "log" or axis.dtick is not None or axis.tickvals is not None:
                continue
            ref = letter + key[5:]
            values = [
                float(v)
                for trace in fig.data
                if (getattr(trace, f"{letter}axis", None) or letter) == ref
                and getattr(trace, letter, None) is not None
                for v in np.asarray(getattr(trace, letter), dtype=float).ravel()
                if np.isfinite(v) and v > 0
            ]
            if not values:
                continue
            # under ~a decade (with autorange's padding) plotly labels linear ticks in full
            if math.log10(max(values)) - math.log10(min(values)) >= 0.8:
                axis.update(dtick=1)


def _style_traces(fig: go.Figure, font_px: float) -> None:
    bar_index = 0
    series: dict[str, int] = {}  # a series drawn in several panels (same legend group) keeps one style
    for trace in fig.data:
        if trace.type == "scatter" and trace.mode and "lines" in trace.mode:
            key = str(trace.legendgroup or trace.name or f"#{len(series)}")
            i = series.setdefault(key, len(series))
            trace.update(
                line={"color": OKABE_ITO[i % len(OKABE_ITO)], "dash": DASHES[i % len(DASHES)], "width": 1.5},
                marker={
                    "color": OKABE_ITO[i % len(OKABE_ITO)],
                    "symbol": SYMBOLS[i % len(SYMBOLS)],
                    "size": 6,
                },
                mode="lines+markers",
            )
        elif trace.type == "bar":
            # one colour per bar trace (groups, classes); per-bar colour lists are the figure's own
            colour = trace.marker.color if trace.marker else None
            if colour is None or isinstance(colour, str):
                trace.update(marker={"color": OKABE_ITO[bar_index % len(OKABE_ITO)]})
            bar_index += 1
            if trace.text is not None or trace.texttemplate:
                trace.update(textfont={"size": font_px})
        elif trace.type in ("heatmap", "contour"):
            # plotly's default and named non-uniform maps become viridis; a figure's own colour
            # lists (translucent overlays on an image, a grey mask) are kept
            scale = _scale_key(trace.colorscale)
            if scale is None or scale in _replaced_scales():
                flipped = scale is not None and _replaced_scales()[scale]
                trace.update(colorscale=SEQUENTIAL, reversescale=bool(trace.reversescale) != flipped)
            if trace.textfont is not None:
                trace.update(textfont={"size": font_px * 0.9})


def _drop_cell_text_that_does_not_fit(fig: go.Figure, area_w: float, area_h: float, font_px: float) -> None:
    ncols = _n_categories(fig, "x")
    nrows = _n_categories(fig, "y")
    grid_r, grid_c = _subplot_grid(fig)
    for trace in fig.data:
        if trace.type != "heatmap" or not (trace.texttemplate or trace.text is not None):
            continue
        texts = (
            [str(t) for t in np.asarray(trace.text, dtype=object).ravel()] if trace.text is not None else []
        )
        longest = max((len(plain(t)) for t in texts), default=0)
        cell_w = area_w / grid_c / max(1, ncols)
        cell_h = area_h / grid_r / max(1, nrows)
        if longest * CHAR_EM * font_px * 0.9 > cell_w or font_px * 1.1 > cell_h:
            trace.update(texttemplate="", text=None)


def paper_figure(fig: go.Figure, options: ExportOptions | None = None) -> go.Figure:
    """A copy of `fig` laid out for a journal column (see the module docstring)."""
    opts = (options or ExportOptions()).validate()
    out = go.Figure(fig)
    if opts.size == "screen":
        return _background(out, opts)
    f = opts.font_px
    width = opts.width_px
    _style_traces(out, f)
    layout = out.layout
    # a printed figure cannot be dragged: drop sliders, buttons and animation frames (the figure
    # shows its current step, as on screen)
    layout.sliders = ()
    layout.updatemenus = ()
    out.frames = ()
    colour_axes = _used_coloraxes(out)
    has_colorbar = (
        any(
            t.type in ("heatmap", "contour") and t.showscale is not False and not t.coloraxis
            for t in out.data
        )
        or any(_marker_scale(t) is not None for t in out.data)
        or any(layout[k].showscale is not False for k in colour_axes)
    )
    legend_items = [
        t.name
        for t in out.data
        if t.type in ("scatter", "bar", "scattergl") and t.showlegend is not False and t.name
    ]
    show_legend = bool(legend_items) and (layout.showlegend is not False) and len(legend_items) > 1
    if layout.showlegend is True and legend_items:
        show_legend = True
    is_table = all(t.type == "table" for t in out.data)

    _explicit_categories(out)
    _decade_ticks(out)
    for ax in [*_axes(out, "x"), *_axes(out, "y")]:
        if ax.ticktext is not None:
            ax.update(ticktext=[visible_label(str(t)) for t in ax.ticktext])
    y_limit = max(14, int(width * 0.38 / (CHAR_EM * f)))  # y tick labels: at most ~38% of the width
    for ax in _axes(out, "y"):
        if ax.ticktext is not None:
            ax.update(ticktext=[_clip(str(t), y_limit) for t in ax.ticktext])
    for ax in _axes(out, "x"):
        if ax.ticktext is not None:
            ax.update(ticktext=[_clip(str(t), 12) for t in ax.ticktext])

    # margins from what sits in them
    x_axes, y_axes = _axes(out, "x"), _axes(out, "y")
    x_title = next((ax.title.text for ax in x_axes if ax.title and ax.title.text), None)
    y_title = next((ax.title.text for ax in y_axes if ax.title and ax.title.text), None)
    x_ticks = [str(t) for ax in x_axes if ax.ticktext is not None for t in ax.ticktext]
    y_ticks = [str(t) for ax in y_axes if ax.ticktext is not None for t in ax.ticktext]
    x_rotated = any(ax.tickangle not in (None, 0) for ax in x_axes)
    x_hidden = all(ax.visible is False or ax.showticklabels is False for ax in x_axes) if x_axes else True
    y_hidden = all(ax.visible is False or ax.showticklabels is False for ax in y_axes) if y_axes else True
    x_top = any(ax.side == "top" for ax in x_axes)

    longest_x = max((text_width(t, f) for t in x_ticks), default=3 * CHAR_EM * f)
    longest_y = max((text_width(t, f) for t in y_ticks), default=4 * CHAR_EM * f)
    tick_x_extent = 0.0 if x_hidden else (min(longest_x, 12 * CHAR_EM * f) + f if x_rotated else f * LINE_EM)
    left = 8 + (0 if y_hidden else longest_y + 6) + (f * LINE_EM * 2 if y_title else 0)
    right = 10.0
    if has_colorbar:
        right += 10 + 6 + 4 * CHAR_EM * f + f * LINE_EM * 2 + 8  # bar, ticks, title (rotated, 2 lines)
    right_axes = [ax for ax in y_axes if ax.side == "right" and ax.visible is not False]
    if right_axes:  # a secondary y axis: its tick labels and (up to two-line) title sit in the right margin
        right_ticks = [str(t) for ax in right_axes if ax.ticktext is not None for t in ax.ticktext]
        right += 6 + max((text_width(t, f) for t in right_ticks), default=4 * CHAR_EM * f)
        if any(ax.title and ax.title.text for ax in right_axes):
            right += f * LINE_EM * 2
    bottom = 6 + (0 if x_top else tick_x_extent + (f * LINE_EM * 2 if x_title else 0))
    top = 6 + (tick_x_extent + (f * LINE_EM * 2 if x_title else 0) if x_top else 0)

    title_text = layout.title.text if (opts.title and layout.title and layout.title.text) else None
    title_font = f * 1.15
    if title_text:
        title_text = wrap(title_text, width - 12, title_font)
        top += text_lines(title_text) * title_font * LINE_EM + 6

    # subplot titles (annotations standing on a subplot's top edge): wrapped to the subplot's width;
    # those of the top row get room in the top margin, under the figure title
    grid_r0, grid_c0 = _subplot_grid(out)
    cell_w = max(40.0, (width - left - right) / grid_c0 - 6)
    top_row = 0
    for ann in layout.annotations or ():
        if ann.showarrow is False and ann.yref in (None, "paper") and ann.yanchor == "bottom" and ann.text:
            ann.update(text=wrap(ann.text, cell_w, f), font={"size": f})
            if (ann.y or 0) >= 0.97:
                top_row = max(top_row, text_lines(ann.text))
    top += top_row * f * LINE_EM + (4 if top_row else 0)

    # notes under the plot (annotations hanging from its bottom edge): wrapped to the width, in
    # the bottom margin under the x axis
    notes = [
        ann
        for ann in layout.annotations or ()
        if ann.showarrow is False
        and ann.yref in (None, "paper")
        and ann.yanchor == "top"
        and (ann.y or 0) <= 0
        and ann.text
    ]
    note_h = bottom - 6 + 2
    for ann in notes:
        text = wrap(ann.text, width - left - 8, f)
        ann.update(text=text, font={"size": f}, x=0, xanchor="left", align="left", yshift=-note_h)
        note_h += text_lines(text) * f * LINE_EM + 4
    bottom = max(bottom, note_h + 6)

    legend_h = 0.0
    if show_legend:
        # a horizontal legend under everything. Plotly puts it on one row when every entry fits,
        # else in columns as wide as the widest entry
        # (wrapping at the plot area's width, not the figure's: plotly wraps a horizontal legend
        # earlier than the full width, so estimating with the narrower width never under-counts)
        entry_w = [text_width(str(n), f) + 40 for n in legend_items]
        wrap_w = max(60.0, min(width - 16, width - left - right))
        if sum(entry_w) <= wrap_w:
            rows = 1
        else:
            rows = math.ceil(len(entry_w) / max(1, int(wrap_w // max(entry_w))))
        legend_title = layout.legend.title.text if layout.legend and layout.legend.title else None
        legend_h = rows * f * 1.9 + 8 + (f * 1.6 if legend_title else 0)
        bottom += legend_h

    area_w = max(60.0, width - left - right)
    # the plot's height follows its content
    grid_r, grid_c = _subplot_grid(out)
    aspect = _image_aspect(out)
    rows = _n_categories(out, "y")
    if is_table:
        area_h = _layout_tables(out, width - 8, f) + 4
        layout.update(margin={"l": 4, "r": 4, "t": top, "b": 4, "autoexpand": False})
    else:
        if aspect is not None:
            area_h = area_w / grid_c * aspect * grid_r * 1.08
        elif grid_r * grid_c > 4:  # a grid of thumbnails: square cells
            area_h = area_w / grid_c * grid_r * 1.08
        elif rows:
            area_h = rows * max(f * 1.25, min(f * 2.2, 320 / rows)) * (1 if grid_r == 1 else 1.1)
        else:
            area_h = area_w * 0.62
        cb_title = max(
            (
                text_width(t.colorbar.title.text, f)
                for t in out.data
                if t.type == "heatmap" and t.colorbar and t.colorbar.title and t.colorbar.title.text
            ),
            default=0.0,
        )
        area_h = max(area_h, 100.0, cb_title / 2 + 20, text_width(y_title, f) / 2 + 10 if y_title else 0.0)
        capped = opts.max_height_px - top - bottom
        if aspect is not None and area_h > capped:
            # locked axes shrink the plot's width to keep the aspect ratio: centre the plot and
            # keep the colour bar next to it, instead of leaving a gap on the right
            natural_w = capped / (aspect * grid_r * 1.08) * grid_c
            left += (area_w - natural_w) / 2
            right += (area_w - natural_w) / 2
            area_w = natural_w
        area_h = min(area_h, capped)
    height = round(top + bottom + area_h)

    # axes: fonts, thinning, wrapped titles
    for ax in x_axes:
        ax.update(tickfont={"size": f}, title_font={"size": f}, automargin=False, title_standoff=4)
        if ax.title and ax.title.text:
            _two_line_title(ax, area_w / grid_c, f, grows_towards_axis=ax.side == "top")
        # rotated labels are parallel boxes a line high: apart by spacing x sin(angle)
        angle = abs(float(ax.tickangle)) if isinstance(ax.tickangle, int | float) else 90.0
        need = f * 1.3 / max(0.5, math.sin(math.radians(angle))) if x_rotated else (longest_x + f)
        _thin_ticks(ax, area_w / grid_c, need)
    for ax in y_axes:
        ax.update(tickfont={"size": f}, title_font={"size": f}, automargin=False, title_standoff=4)
        if ax.title and ax.title.text:
            _two_line_title(ax, area_h / grid_r, f)
        _thin_ticks(ax, area_h / grid_r, f * 1.25)
        _fewer_numeric_ticks(ax, area_h, f)

    def bar(colorbar: Any) -> dict[str, Any]:
        title = colorbar.title.text if colorbar and colorbar.title else None
        return {
            "thickness": 10, "len": 1.0, "lenmode": "fraction", "y": 0.5, "yanchor": "middle", "x": 1.0, "xpad": 8,
            "xanchor": "left", "xref": "paper", "yref": "paper", "tickfont": {"size": f}, "outlinewidth": 0,
            "title": {"text": wrap(plain(title), area_h * 0.95, f) if title else None, "side": "right",
                      "font": {"size": f}},
        }  # fmt: skip

    for trace in out.data:
        if trace.type in ("heatmap", "contour") and trace.showscale is not False and not trace.coloraxis:
            trace.update(colorbar=bar(trace.colorbar))
        marker = _marker_scale(trace)
        if marker is not None:
            marker.update(colorbar=bar(marker.colorbar))
    for key in colour_axes:
        if layout[key].showscale is not False:
            layout[key].update(colorbar=bar(layout[key].colorbar))
    _drop_cell_text_that_does_not_fit(out, area_w, area_h, f)

    if any(t.type == "bar" and (t.text is not None or t.texttemplate) for t in out.data):
        layout.update(uniformtext={"minsize": f, "mode": "hide"})  # no bar label below the print minimum
    layout.update(
        width=width,
        height=height,
        font={"family": FONT_FAMILY, "size": f, "color": "black"},
        template="plotly_white",
        hovermode=False,
        showlegend=show_legend,
        title={"text": ""},
    )
    plot_h = height - (4 + top if is_table else top + bottom)
    plot_w = width - (8 if is_table else left + right)
    m_left = 4 if is_table else left
    if title_text:
        out.add_annotation(
            text=title_text, xref="paper", yref="paper", x=(6 - m_left) / plot_w, y=1 + (top - 5) / plot_h,
            xanchor="left", yanchor="top", align="left", showarrow=False, font={"size": title_font},
        )  # fmt: skip
    if not is_table:
        layout.update(margin={"l": left, "r": right, "t": top, "b": bottom, "autoexpand": False})
    if show_legend:
        layout.update(
            legend={
                "orientation": "h",
                "xref": "container",
                "yref": "container",
                "x": 0,
                "xanchor": "left",
                "y": 0,
                "yanchor": "bottom",
                "font": {"size": f},
                "title": {"font": {"size": f}, "side": "top left"},
                "itemwidth": 30,
                "entrywidthmode": "pixels",
            }
        )
    for ann in layout.annotations or ():
        ann.update(font={"size": max(f, (ann.font.size or f) if ann.font else f)})
    return _background(out, opts)


def _fewer_numeric_ticks(axis: Any, plot_h: float, font_px: float) -> None:
    """A short numeric y axis (a panel of a tall stack) gets at most as many ticks as fit its
    height. Plotly picks at least ~4 ticks however short the axis, so their labels would overlap;
    `nticks` caps them (plotly still chooses round values)."""
    if axis.tickvals is not None or axis.dtick is not None or axis.type in ("category", "multicategory"):
        return
    if axis.visible is False or axis.showticklabels is False:
        return
    domain = axis.domain if axis.domain is not None else (0.0, 1.0)
    fit = int((domain[1] - domain[0]) * plot_h // (font_px * 1.5))
    if fit < 6:
        axis.update(nticks=max(2, fit))


def _used_coloraxes(fig: go.Figure) -> list[str]:
    """Layout keys ("coloraxis", "coloraxis2", ...) of the shared colour axes some trace uses."""
    used = set()
    for trace in fig.data:
        for ref in (
            getattr(trace, "coloraxis", None),
            getattr(getattr(trace, "marker", None), "coloraxis", None),
        ):
            if ref:
                used.add(str(ref))
    return sorted(used)


def _marker_scale(trace: Any) -> Any:
    """The marker of a scatter trace that shows its own colour bar, else None."""
    marker = getattr(trace, "marker", None) if trace.type in ("scatter", "scattergl") else None
    return marker if marker is not None and marker.showscale and not marker.coloraxis else None


def _two_line_title(axis: Any, length_px: float, font_px: float, grows_towards_axis: bool = True) -> None:
    """An axis title wrapped to the axis length, at most two lines (the margin holds two). Plotly
    grows a multi-line title on the left or top towards the axis, so the standoff moves it back
    by a line; one under the axis grows away from it."""
    lines = wrap(axis.title.text, length_px, font_px).split("<br>")
    if len(lines) > 2:
        lines = [lines[0], _clip(" ".join(lines[1:]), max(8, int(length_px / (CHAR_EM * font_px))))]
    extra = (len(lines) - 1) * font_px * LINE_EM if grows_towards_axis else 0.0
    axis.update(title_text="<br>".join(lines), title_standoff=4 + extra)


def visible_label(text: str) -> str:
    """A tick label whose invisible characters show: leading/trailing spaces as "␣", newlines as
    "↵", tabs as "⇥" (already-escaped "\\n" / "\\t" too), an empty label as "∅"."""
    if text == "":
        return "∅"
    out = text.replace("\\n", "↵").replace("\n", "↵").replace("\\t", "⇥").replace("\t", "⇥")
    stripped = out.lstrip(" ")
    out = "␣" * (len(out) - len(stripped)) + stripped
    stripped = out.rstrip(" ")
    return stripped + "␣" * (len(out) - len(stripped))


def _explicit_categories(fig: go.Figure) -> None:
    """Give categorical axes explicit tickvals/ticktext (their category names), so that the labels
    can be measured, clipped and thinned like any other."""
    for letter in ("x", "y"):
        for key in [k for k in fig.layout if k.startswith(f"{letter}axis")]:
            axis = fig.layout[key]
            if (
                axis.ticktext is not None
                or axis.tickvals is not None
                or axis.type not in (None, "-", "category")
            ):
                continue
            ref = letter + key[5:]
            cats: list[str] = []
            for trace in fig.data:
                if trace.type not in ("heatmap", "bar", "scatter", "box"):
                    continue
                if (getattr(trace, f"{letter}axis", None) or letter) != ref:
                    continue
                values = getattr(trace, letter, None)
                if values is None or not len(values) or not all(isinstance(v, str) for v in values):
                    continue
                cats += [c for c in dict.fromkeys(str(v) for v in values) if c not in cats]
            if axis.categoryorder == "array" and axis.categoryarray is not None:
                order = [str(c) for c in axis.categoryarray]
                cats = [c for c in order if c in set(cats)] + [c for c in cats if c not in set(order)]
            if cats and len(set(cats)) == len(cats):
                axis.update(tickmode="array", tickvals=cats, ticktext=cats)


TABLE_PAD = 8  # plotly's padding on each side of a table cell's text (fixed in plotly.js)
TABLE_EM = 0.62  # a table cell's glyph advance: wider than CHAR_EM (digits, capitals, bold)
MAX_UNBROKEN = 14  # characters; a longer word is broken to fit a narrow column
_BREAK_AFTER = re.compile(r"(?<=[_:/\-])")


def _pieces(word: str, chars: int) -> list[str]:
    """`word` cut to at most `chars` characters a piece, after "_", ":", "/" or "-" when it can."""
    out: list[str] = []
    for part in _BREAK_AFTER.split(word):
        while len(part) > chars:
            out.append(part[:chars])
            part = part[chars:]
        if out and len(out[-1]) + len(part) <= chars:
            out[-1] += part
        elif part:
            out.append(part)
    return out or [""]


def _wrap_lines(text: str, chars: int) -> list[str]:
    """Plain `text` in lines of at most `chars` characters (its own line breaks kept)."""
    lines: list[str] = []
    for para in plain(text).split("\n"):
        line = ""
        for word in (w for w in para.split(" ") if w):
            for i, piece in enumerate(_pieces(word, chars)):
                sep = "" if i else " "
                if line and len(line) + len(sep) + len(piece) <= chars:
                    line += sep + piece
                else:
                    if line:
                        lines.append(line)
                    line = piece
        lines.append(line)
    return [ln for ln in lines if ln] or [""]


def _longest_piece(texts: list[str]) -> int:
    """Characters of the widest unbreakable piece of `texts` (at most MAX_UNBROKEN)."""
    return max((len(p) for t in texts for w in plain(t).split() for p in _pieces(w, MAX_UNBROKEN)), default=1)


def _column_values(trace: Any) -> tuple[list[str], list[list[str]]]:
    """(header per column, cell texts per column) of a table trace, as strings."""
    header = [
        " ".join(str(v) for v in h) if isinstance(h, list | tuple) else str(h)
        for h in (trace.header.values if trace.header and trace.header.values is not None else [])
    ]
    cells = [[str(v) for v in col] for col in (trace.cells.values or [])]
    n = max(len(header), len(cells))
    return (header + [""] * n)[:n], (cells + [[]] * n)[:n]


def _per_column(value: Any, columns: list[int]) -> Any:
    """A per-column table property (fill colour, alignment) restricted to `columns`."""
    if isinstance(value, list | tuple) and len(value) > max(columns):
        return [value[c] for c in columns]
    return value


def _row_height(lines: int, font_px: float) -> float:
    """A table row's height in plotly: the cell height (one line and padding), or its text's box
    and padding when that is taller; +1 px of slack."""
    return max(font_px * LINE_EM, (lines - 1) * font_px * LINE_EM + 1.25 * font_px) + 2 * TABLE_PAD + 1


def _wrapped_cell(text: str, chars: int, bold: bool = False) -> tuple[str, int]:
    """A cell's text wrapped to `chars` characters a line, as plotly markup, and its line count."""
    lines = [html.escape(ln, quote=False) for ln in _wrap_lines(text, chars)]
    if bold:
        lines = [f"<b>{ln}</b>" for ln in lines]
    return "<br>".join(lines), len(lines)


def _layout_tables(fig: go.Figure, width: float, font_px: float) -> float:
    """Lay out a figure of tables for `width` px: every cell's text is wrapped (explicit line
    breaks) to column widths that follow the content, so nothing spills into the next column;
    a table too wide for the column is split into several tables stacked top to bottom, each
    repeating the first (key) column, as printed tables are. Sets the traces' domains and
    returns the height they need."""
    em = TABLE_EM * font_px
    line = font_px * LINE_EM
    tables: list[tuple[Any, list[int], list[float], list[str], list[list[str]]]] = []
    for trace in fig.data:
        header, cells = _column_values(trace)
        n = len(header)
        if not n:
            continue
        longest_piece = [_longest_piece([header[c], *cells[c]]) for c in range(n)]
        longest_line = [
            max(len(ln) for t in [header[c], *cells[c]] for ln in plain(t).split("\n")) for c in range(n)
        ]
        min_w = [p * em + 2 * TABLE_PAD + 2 for p in longest_piece]
        want_w = [max(m, ln * em + 2 * TABLE_PAD + 2) for m, ln in zip(min_w, longest_line, strict=True)]
        groups: list[list[int]] = []
        if sum(min_w) <= width:
            groups = [list(range(n))]
        else:
            rest = list(range(1, n))
            while rest:
                group, used = [0], min_w[0]
                while rest and (len(group) == 1 or used + min_w[rest[0]] <= width):
                    used += min_w[rest[0]]
                    group.append(rest.pop(0))
                groups.append(group)
        for group in groups:
            widths = [min_w[c] for c in group]
            spare = width - sum(widths)
            grow = [want_w[c] - min_w[c] for c in group]
            if spare > 0 and sum(grow) > 0:
                widths = [w + min(g, spare * g / sum(grow)) for w, g in zip(widths, grow, strict=True)]
            spare = width - sum(widths)
            if spare > 0:
                widths = [w + spare * w / sum(widths) for w in widths]
            tables.append((trace, group, widths, header, cells))
    out: list[go.Table] = []
    heights: list[float] = []
    for trace, group, widths, header, cells in tables:
        chars = [max(1, int((w - 2 * TABLE_PAD - 2) / em + 1e-6)) for w in widths]

        head = [
            _wrapped_cell(header[c], chars[k], header[c].strip().startswith("<b>"))
            for k, c in enumerate(group)
        ]
        columns = [[_wrapped_cell(t, chars[k]) for t in cells[c]] for k, c in enumerate(group)]
        n_rows = max((len(col) for col in columns), default=0)
        row_lines = [max((col[r][1] for col in columns if r < len(col)), default=1) for r in range(n_rows)]
        head_lines = max(n for _, n in head)
        heights.append(sum(_row_height(n, font_px) for n in [head_lines, *row_lines]))
        table = go.Table(trace)
        table.update(
            columnwidth=widths,
            columnorder=None,
            header={
                "values": [t for t, _ in head], "font": {"size": font_px}, "height": line + 2 * TABLE_PAD,
                "fill": {"color": _per_column(trace.header.fill.color, group)},
                "align": _per_column(trace.header.align, group),
            },
            cells={
                "values": [[t for t, _ in col] for col in columns], "font": {"size": font_px},
                "height": line + 2 * TABLE_PAD, "fill": {"color": _per_column(trace.cells.fill.color, group)},
                "align": _per_column(trace.cells.align, group),
            },
        )  # fmt: skip
        out.append(table)
    gap = font_px
    total = sum(heights) + gap * (len(heights) - 1)
    y = total
    for table, h in zip(out, heights, strict=True):
        table.update(domain={"x": [0, 1], "y": [max(0.0, (y - h) / total), y / total]})
        y -= h + gap
    fig.data = ()
    fig.add_traces(out)
    return total


def _clip(text: str, limit: int) -> str:
    raw = plain(text)
    if len(raw) <= limit:
        return text
    return html.escape(raw[: limit - 1], quote=False) + "…"


def _background(fig: go.Figure, opts: ExportOptions) -> go.Figure:
    if opts.background == "transparent":
        fig.update_layout(paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    else:
        fig.update_layout(paper_bgcolor="white", plot_bgcolor="white")
    return fig


# ---- the command that reproduces an export ---------------------------------------------------
def option_flags(options: ExportOptions) -> list[str]:
    """CLI flags for `options` that differ from the defaults."""
    default = ExportOptions()
    flags: list[str] = []
    if options.size != default.size:
        flags += ["--size", options.size]
    if not options.title:
        flags.append("--no-title")
    if float(options.font_pt) != float(default.font_pt):
        flags += ["--font-size", f"{float(options.font_pt):g}"]
    if options.background != default.background:
        flags += ["--background", options.background]
    return flags


def export_command(run_id: str | None, figure: str, fmt: str, options: ExportOptions) -> str:
    """The shell command that regenerates this export from the store."""
    import shlex

    args = [
        "explorer",
        "export",
        run_id or "RUN_ID",
        "--figure",
        figure,
        "--format",
        fmt,
        *option_flags(options),
    ]
    return " ".join(shlex.quote(a) for a in args)


def export_python(run_id: str | None, figure: str, fmt: str, options: ExportOptions) -> str:
    """The Python call that regenerates this export from the store."""
    default = ExportOptions()
    kwargs = [f"figure={figure!r}"]
    for field in ("size", "title", "font_pt", "background"):
        value = getattr(options, field)
        if value != getattr(default, field):
            kwargs.append(f"{field}={value!r}")
    return f"explorer.export_figure({(run_id or 'RUN_ID')!r}, {fmt!r}, {', '.join(kwargs)})"
