"""Figures for papers: journal sizes, print styling, provenance in the file, byte-for-byte
reproducible exports, the `explorer export` flags and multi-panel figures."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest

from explorer.cli import main
from explorer.plots.paper import (
    DASHES,
    OKABE_ITO,
    ExportOptions,
    export_command,
    paper_figure,
    visible_label,
)
from explorer.plots.provenance import png_dpi, read_provenance


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two stored lens runs of a tiny random Llama, in their own store."""
    from conftest import make_tiny_lm

    import explorer
    from explorer.config import Settings

    settings = Settings.from_env(db_path=tmp_path_factory.mktemp("paper") / "runs.duckdb")
    lm = make_tiny_lm("llama")
    a = explorer.logit_lens(lm, "the cat sat\non the mat", targets=["dog"], generate=2, settings=settings)
    b = explorer.logit_lens(lm, "hello there", settings=settings)
    return {"settings": settings, "a": a.run_id, "b": b.run_id, "db": str(settings.database)}


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_export_twice_gives_the_same_bytes_and_carries_provenance(
    stored: dict[str, Any], tmp_path: Path, fmt: str
) -> None:
    import explorer

    first = explorer.export_figure(stored["a"], fmt, "heatmap", tmp_path / "1", settings=stored["settings"])
    second = explorer.export_figure(stored["a"], fmt, "heatmap", tmp_path / "2", settings=stored["settings"])
    data = first.read_bytes()
    assert data == second.read_bytes()
    meta = read_provenance(data, fmt)
    assert meta is not None
    assert meta["run_id"] == stored["a"] and meta["figure"] == "heatmap"
    assert meta["model"] == "tiny-llama" and len(meta["weight_hash"]) >= 8
    assert meta["params"]["targets"] == ["dog"] and meta["version"]
    assert meta["command"] == f"explorer export {stored['a']} --figure heatmap --format {fmt}"
    if fmt == "png":
        assert png_dpi(data) == pytest.approx(300, abs=0.1)
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        assert image.size[0] == round(7.0 * 300)  # double column at 300 dpi
    if fmt == "svg":
        assert b'width="672"' in data[:400]  # 7 in at 96 px/in
        ids = set(re.findall(rb'\bid="([^"]+)"', data)) - {b"explorer-provenance"}
        assert ids and all(re.fullmatch(rb"e\d+", i) for i in ids)  # no random per-render ids
    if fmt == "pdf":
        from pypdf import PdfReader

        reader = PdfReader(io.BytesIO(data))
        fonts = reader.pages[0]["/Resources"]["/Font"]
        assert fonts, "no fonts in the PDF"
        for ref in fonts.values():
            font = ref.get_object()
            descendants = font.get("/DescendantFonts")
            desc = (descendants[0].get_object() if descendants else font)["/FontDescriptor"].get_object()
            assert any(k in desc for k in ("/FontFile", "/FontFile2", "/FontFile3")), "a font is not embedded"
        assert reader.metadata["/CreationDate"] == "D:20000101000000+00'00'"


def test_single_column_no_title_transparent(stored: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    code, out, _ = cli(
        ["--db", stored["db"], "export", stored["a"], "--figure", "tracked", "--format", "svg", "--size", "single",
         "--no-title", "--font-size", "9", "--background", "transparent", "--out", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    data = Path(out["path"]).read_bytes()
    assert b'width="317"' in data[:400]
    assert b"fill: rgb(255, 255, 255); fill-opacity: 1" not in data[:600]  # transparent background
    meta = read_provenance(data, "svg")
    assert meta is not None and meta["options"] == {
        "size": "single", "title": False, "font_pt": 9.0, "background": "transparent",
    }  # fmt: skip
    assert "--size single --no-title --font-size 9 --background transparent" in meta["command"]


def test_list_needs_no_format_and_a_missing_format_is_a_clear_error(
    stored: dict[str, Any], capsys: Any
) -> None:
    code, out, _ = cli(["--db", stored["db"], "export", stored["a"], "--list"], capsys)
    assert code == 0 and [f["name"] for f in out["figures"]][:2] == ["heatmap", "tracked"]
    code, out, err = cli(["--db", stored["db"], "export", stored["a"]], capsys)
    assert code == 2 and "--format is required" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--font-size", "5"], "font size must be between 7"),
        (["--format", "svg", "--figure", "nope"], "unknown figure"),
    ],
)
def test_bad_export_options_exit_2(
    stored: dict[str, Any], capsys: Any, flags: list[str], message: str
) -> None:
    args = ["--db", stored["db"], "export", stored["a"], *flags]
    if "--format" not in flags:
        args += ["--format", "svg"]
    code, _, err = cli(args, capsys)
    assert code == 2 and message in err


def test_panel_figure_labels_each_part_and_records_every_source(
    stored: dict[str, Any], tmp_path: Path, capsys: Any
) -> None:
    code, out, _ = cli(
        ["--db", stored["db"], "export", f"{stored['a']}:heatmap", f"{stored['b']}:tracked", "--panel",
         "--format", "svg", "--size", "single", "--out", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    data = Path(out["path"]).read_bytes()
    assert b"(a)" in data and b"(b)" in data and b'width="317"' in data[:400]
    meta = read_provenance(data, "svg")
    assert meta is not None
    assert [(p["run_id"], p["figure"]) for p in meta["panels"]] == [
        (stored["a"], "heatmap"),
        (stored["b"], "tracked"),
    ]
    code, _, err = cli(["--db", stored["db"], "export", stored["a"], "--panel", "--format", "svg"], capsys)
    assert code == 2 and "at least two" in err


def test_panels_stack_without_overlap_in_the_api(stored: dict[str, Any], tmp_path: Path) -> None:
    import explorer
    from explorer.plots import figure_spec
    from explorer.plots.panel import compose_panels

    a = explorer.load_run(stored["a"], settings=stored["settings"])
    figs = [figure_spec(a, "heatmap").build(a), figure_spec(a, "tracked").build(a)]
    panel = compose_panels(figs, ExportOptions(size="double"))
    singles = [paper_figure(f, ExportOptions(size="double", title=False)) for f in figs]
    assert panel.layout.height > sum(f.layout.height for f in singles)
    ys = sorted(tuple(panel.layout[k].domain) for k in panel.layout if k.startswith("yaxis"))
    for lower, upper in zip(ys, ys[1:], strict=False):
        assert lower[1] <= upper[0] + 1e-9  # the panels' plot areas do not overlap
    labels = [a.text for a in panel.layout.annotations if a.text.startswith("<b>(")]
    assert [re.match(r"<b>\((\w)\)", t).group(1) for t in labels] == ["a", "b"]  # type: ignore[union-attr]


def test_print_safe_styles_survive_greyscale() -> None:
    fig = go.Figure([go.Scatter(x=[0, 1], y=[i, i + 1], mode="lines", name=f"s{i}") for i in range(4)])
    fig.add_trace(go.Heatmap(z=[[0, 1], [1, 0]], colorscale="Reds", xaxis="x2", yaxis="y2"))
    fig.update_layout(xaxis2={"domain": [0.6, 1]}, xaxis={"domain": [0, 0.4]}, yaxis2={"anchor": "x2"})
    out = paper_figure(fig, ExportOptions(size="single"))
    lines = [t for t in out.data if t.type == "scatter"]
    assert [t.line.color for t in lines] == OKABE_ITO[:4]
    assert [t.line.dash for t in lines] == DASHES[:4]  # distinguishable without colour
    assert len({t.marker.symbol for t in lines}) == 4
    heat = next(t for t in out.data if t.type == "heatmap")
    assert heat.colorscale[0][1] == go.Figure(go.Heatmap(colorscale="Viridis")).data[0].colorscale[0][1]
    assert out.layout.font.size >= 7 * 96 / 72


def test_long_token_axes_are_thinned_and_invisible_characters_show() -> None:
    tokens = [f" tok{i}" for i in range(200)]
    fig = go.Figure(go.Heatmap(z=[[float(i)] * 200 for i in range(3)], x=list(range(200))))
    fig.update_xaxes(tickvals=list(range(200)), ticktext=tokens)
    out = paper_figure(fig, ExportOptions(size="single"))
    shown = list(out.layout.xaxis.ticktext)
    assert 2 <= len(shown) < 40 and shown[0] == "␣tok0"
    assert visible_label("a\nb") == "a↵b" and visible_label("x\\n") == "x↵" and visible_label("") == "∅"


def test_categories_repeated_within_a_trace_get_a_margin_for_their_labels() -> None:
    """A bar trace that repeats its category (one bar per token, all on the tokenizer's row) still
    gets explicit tick labels, so the left margin is measured from them (they used to leave the canvas)."""
    fig = go.Figure()
    for row in ("all-minilm-l6-v2 (71)", "smollm2-135m (69)"):
        fig.add_bar(y=[row] * 5, x=[1] * 5, base=list(range(5)), orientation="h")
    out = paper_figure(fig, ExportOptions(size="single"))
    labels = list(out.layout.yaxis.ticktext)  # clipped to ~38% of a single column
    assert len(labels) == 2 and labels[0].startswith("all-minilm") and labels[1] == "smollm2-135m (69)"
    assert out.layout.margin.l > max(len(t) for t in labels) * 0.5 * ExportOptions(size="single").font_px


def test_a_tall_stack_of_panels_keeps_series_styles_and_few_ticks() -> None:
    """Six stacked panels with the same two series (a sweep's aggregate): each series keeps one colour
    and dash in every panel, and each short panel gets at most the ticks its height holds."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=6, cols=1)
    for row in range(1, 7):
        for name in ("random", "self_information"):
            fig.add_scatter(x=[25, 50, 100], y=[0.1, 0.5, 0.9], mode="lines", name=name, legendgroup=name,
                            row=row, col=1)  # fmt: skip
    out = paper_figure(fig, ExportOptions(size="single"))
    styles = {(t.name, t.line.color, t.line.dash) for t in out.data}
    assert len(styles) == 2
    y_axes = [out.layout[k] for k in out.layout if k.startswith("yaxis")]
    assert len(y_axes) == 6 and all(2 <= (ax.nticks or 0) < 6 for ax in y_axes)


def test_export_command_round_trips_through_the_cli_parser() -> None:
    from explorer.cli import build_parser

    cmd = export_command("abc123", "heatmap", "pdf", ExportOptions(size="single", title=False, font_pt=8.5))
    parser, _ = build_parser()
    args = parser.parse_args(cmd.split()[1:])
    assert (args.size, args.no_title, args.font_size, args.format, args.figure) == (
        "single",
        True,
        8.5,
        "pdf",
        "heatmap",
    )


def test_ui_export_row_uses_the_options_and_shows_the_reproducing_snippet(stored: dict[str, Any]) -> None:
    import explorer
    from explorer.ui.common import export_handler, snippet_handler

    result = explorer.load_run(stored["a"], settings=stored["settings"])
    text = snippet_handler(result, "single", False, 9, "light", figure="heatmap")
    assert (
        f"explorer export {stored['a']} --figure heatmap --format pdf --size single --no-title --font-size 9"
        in text
    )
    assert f"explorer.export_figure('{stored['a']}', 'pdf', figure='heatmap', size='single'" in text
    file = export_handler(
        result, "single", False, 9, "light", fmt="svg", settings=stored["settings"], figure="heatmap"
    )
    data = (
        Path(file.value).read_bytes()
        if isinstance(file.value, str)
        else Path(file.value["path"]).read_bytes()
    )
    meta = read_provenance(data, "svg")
    assert meta is not None and meta["weight_hash"] and meta["options"]["size"] == "single"
    assert b'width="317"' in data[:400]
