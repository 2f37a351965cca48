"""Several figures composed into one multi-panel figure, as papers use: each figure is laid out for
the column first (`paper_figure`), then the panels are stacked top to bottom on one canvas and
labelled (a), (b), (c)... Every panel keeps its own axes, colour bar and legend; their positions
are mapped from the panel's own pixels into the shared canvas, so nothing moves relative to its
plot and panels cannot overlap.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import plotly.graph_objects as go

from explorer.plots.paper import LINE_EM, ExportOptions, paper_figure, plain, text_lines, wrap

_AXIS_KEY = re.compile(r"^([xy])axis(\d*)$")
_AXIS_REF = re.compile(r"^([xy])(\d*)( domain)?$")
LABEL_PT = 1.2  # panel label size, relative to the base font


class _Panel:
    """Pixel geometry of one laid-out figure placed at `top` px on a `width` x `height` canvas."""

    def __init__(self, fig: go.Figure, top: float, width: float, height: float) -> None:
        m = fig.layout.margin
        self.fig, self.top, self.width, self.height = fig, top, width, height
        self.h = float(fig.layout.height)
        self.l, self.r, self.t, self.b = float(m.l or 0), float(m.r or 0), float(m.t or 0), float(m.b or 0)

    def x(self, u: float) -> float:
        """Panel paper x -> canvas paper x."""
        return (self.l + u * (self.width - self.l - self.r)) / self.width

    def y(self, v: float) -> float:
        """Panel paper y -> canvas paper y (0 at the bottom)."""
        px = self.top + self.t + (1 - v) * (self.h - self.t - self.b)
        return 1 - px / self.height

    def y_container(self, v: float) -> float:
        px = self.top + (1 - v) * self.h
        return 1 - px / self.height

    def y_len(self, length: float) -> float:
        return length * (self.h - self.t - self.b) / self.height


def compose_panels(
    figures: list[go.Figure], options: ExportOptions, labels: list[str] | None = None
) -> go.Figure:
    """One figure holding `figures` stacked top to bottom, labelled (a), (b), ..."""
    opts = options.validate()
    if opts.size == "screen":
        opts = replace(opts, size="double")
    laid = [paper_figure(f, replace(opts, title=False)) for f in figures]
    width = float(laid[0].layout.width)
    label_px = opts.font_px * LABEL_PT
    labels = labels or [f"({chr(ord('a') + i)})" for i in range(len(laid))]
    heads = []
    for label, fig in zip(labels, figures, strict=True):
        title = fig.layout.title.text if (opts.title and fig.layout.title and fig.layout.title.text) else ""
        text = wrap(f"{label} {plain(title)}", width - 12, label_px) if title else label
        text = text.replace(label, f"<b>{label}</b>", 1)
        heads.append((text, text_lines(text) * label_px * LINE_EM + 8))
    height = sum(float(f.layout.height) + gap for f, (_, gap) in zip(laid, heads, strict=True))
    out = go.Figure()
    out.update_layout(laid[0].layout)
    out.layout.annotations, out.layout.shapes, out.layout.images = (), (), ()
    for key in list(out.layout):
        if _AXIS_KEY.match(key) or key.startswith(("coloraxis", "legend")):
            out.layout[key] = None
    out.update_layout(
        width=width,
        height=height,
        title={"text": ""},
        margin={"l": 0, "r": 0, "t": 0, "b": 0, "autoexpand": False},
    )
    top, n_x, n_y, n_c = 0.0, 0, 0, 0
    annotations: list[Any] = []
    for i, fig in enumerate(laid):
        head, gap = heads[i]
        top += gap
        panel = _Panel(fig, top, width, height)
        rename: dict[str, str] = {}
        for key in fig.layout:
            m = _AXIS_KEY.match(key)
            if m:
                letter = m.group(1)
                if letter == "x":
                    n_x += 1
                    rename[f"x{m.group(2)}"] = f"x{n_x}"
                else:
                    n_y += 1
                    rename[f"y{m.group(2)}"] = f"y{n_y}"
        rename.setdefault("x", rename.get("x1", "x1" if n_x == 0 else f"x{n_x}"))
        rename.setdefault("y", rename.get("y1", "y1" if n_y == 0 else f"y{n_y}"))

        def ref(value: Any, rename: dict[str, str] = rename) -> Any:
            m = _AXIS_REF.match(str(value)) if value is not None else None
            if not m:
                return value
            new = rename.get(m.group(1) + m.group(2)) or rename.get(m.group(1) + "1") or value
            return new + (m.group(3) or "")

        for key in fig.layout:
            m = _AXIS_KEY.match(key)
            if not m:
                continue
            axis = fig.layout[key].to_plotly_json()
            d0, d1 = axis.get("domain", [0, 1])
            if m.group(1) == "x":
                axis["domain"] = [panel.x(d0), panel.x(d1)]
            else:
                axis["domain"] = sorted([panel.y(d0), panel.y(d1)])
            for field in ("anchor", "overlaying", "matches", "scaleanchor"):
                if field in axis and axis[field] not in (None, "free", False):
                    axis[field] = ref(axis[field])
            name = rename[m.group(1) + m.group(2)]
            out.layout[f"{m.group(1)}axis{name[1:]}"] = axis
        coloraxes = {}
        for key in fig.layout:
            if key.startswith("coloraxis") and fig.layout[key] is not None:
                n_c += 1
                coloraxes[key] = f"coloraxis{n_c}"
                ca = fig.layout[key].to_plotly_json()
                _move_colorbar(ca.setdefault("colorbar", {}), panel)
                out.layout[coloraxes[key]] = ca
        legend = f"legend{i + 1}" if i else "legend"
        if fig.layout.showlegend:
            lg = fig.layout.legend.to_plotly_json()
            lg["y"] = panel.y_container(lg.get("y", 0))
            out.layout[legend] = lg
        for trace in fig.data:
            t = trace.to_plotly_json()
            if "xaxis" in t or t.get("type") not in ("table", "pie", "sunburst"):
                t["xaxis"], t["yaxis"] = ref(t.get("xaxis", "x")), ref(t.get("yaxis", "y"))
            if t.get("type") in ("table", "pie", "sunburst"):
                t.pop("xaxis", None), t.pop("yaxis", None)
                dom = t.get("domain", {})
                dx, dy = dom.get("x", [0, 1]), dom.get("y", [0, 1])
                t["domain"] = {
                    "x": [panel.x(dx[0]), panel.x(dx[1])],
                    "y": sorted([panel.y(dy[0]), panel.y(dy[1])]),
                }
            if t.get("coloraxis"):
                t["coloraxis"] = coloraxes.get(t["coloraxis"], t["coloraxis"])
            if "colorbar" in t:
                _move_colorbar(t["colorbar"], panel)
            t["legend"] = legend
            if not fig.layout.showlegend:
                t["showlegend"] = False
            out.add_trace(t)
        for ann in fig.layout.annotations or ():
            a = ann.to_plotly_json()
            _move_ref(a, panel, ref)
            annotations.append(a)
        for shape in fig.layout.shapes or ():
            s = shape.to_plotly_json()
            _move_ref(s, panel, ref, ("x0", "x1"), ("y0", "y1"))
            out.add_shape(s)
        for image in fig.layout.images or ():
            im = image.to_plotly_json()
            _move_ref(im, panel, ref)
            out.add_layout_image(im)
        annotations.append(
            {
                "text": head,
                "xref": "paper",
                "yref": "paper",
                "x": 6 / width,
                "y": 1 - (top - gap + 4) / height,
                "xanchor": "left",
                "yanchor": "top",
                "showarrow": False,
                "align": "left",
                "font": {"size": label_px},
            }
        )
        top += panel.h
    out.update_layout(annotations=annotations)
    return out


def _move_colorbar(cb: dict[str, Any], panel: _Panel) -> None:
    cb["x"] = panel.x(cb.get("x", 1.02))
    if cb.get("lenmode", "fraction") == "fraction":
        cb["len"] = panel.y_len(cb.get("len", 1.0))
    cb["y"] = panel.y(cb.get("y", 0.5))
    cb["yanchor"] = cb.get("yanchor", "middle")


def _move_ref(
    obj: dict[str, Any],
    panel: _Panel,
    ref: Any,
    x_keys: tuple[str, ...] = ("x",),
    y_keys: tuple[str, ...] = ("y",),
) -> None:
    xref, yref = obj.get("xref", "x"), obj.get("yref", "y")
    if xref == "paper":
        for k in x_keys:
            if k in obj:
                obj[k] = panel.x(obj[k])
    else:
        obj["xref"] = ref(xref)
    if yref == "paper":
        for k in y_keys:
            if k in obj:
                obj[k] = panel.y(obj[k])
        if "sizey" in obj:
            obj["sizey"] = panel.y_len(obj["sizey"])
    else:
        obj["yref"] = ref(yref)
    if xref == "paper" and "sizex" in obj:
        obj["sizex"] = obj["sizex"] * (panel.x(1) - panel.x(0))
