"""Paper-figure layout: every registered figure, exported as SVG at single- and double-column
width from runs on the embedded models (`explorer.gallery`), rendered in headless Chromium:
no two texts overlap, none leaves the canvas, and no text is smaller than 7 pt at print size.

The matrix is the figure registry: each registered (kind, figure) is one test case, so a new
figure is checked as soon as it is registered; a kind with no fixed input in
`explorer.gallery.GALLERY_RUNS` fails until one is added.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from explorer.gallery import GALLERY_RUNS, SIZES, registered_figures
from explorer.plots.paper import COLUMN_WIDTH_IN, MIN_FONT_PT, PX_PER_IN, ExportOptions

pytestmark = [pytest.mark.browser, pytest.mark.real]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
MATRIX = [
    pytest.param(kind, name, id=f"{kind}-{name}")
    for kind, names in registered_figures().items()
    for name in names
]


@pytest.fixture(scope="module")
def layout_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """(kind, figure) -> {size: report}, or a string saying why the figure was not exported."""
    from layout_check import check_svgs
    from playwright.sync_api import sync_playwright

    from explorer.config import Settings
    from explorer.plots import figure_bytes, figures_for

    out_dir = tmp_path_factory.mktemp("figures")
    settings = Settings.from_env(db_path=out_dir / "gallery.duckdb")
    reports: dict[tuple[str, str], Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        for item in GALLERY_RUNS:
            result = item.make(settings)
            svgs: dict[str, bytes] = {}
            for spec in figures_for(result):
                for size in SIZES:
                    data = figure_bytes(spec.build(result), "svg", options=ExportOptions(size=size))
                    (out_dir / f"{item.kind}_{spec.name}_{size}.svg").write_bytes(data)
                    svgs[json.dumps([item.kind, spec.name, size])] = data
            for report in check_svgs(page, svgs):  # one page load per result kind
                kind, name, size = json.loads(report["name"])
                reports.setdefault((kind, name), {})[size] = report
        browser.close()
    return reports


@pytest.mark.parametrize(("kind", "figure"), MATRIX)
def test_exported_figure_has_no_overlapping_or_clipped_text(
    kind: str, figure: str, layout_reports: dict[tuple[str, str], Any]
) -> None:
    assert any(item.kind == kind for item in GALLERY_RUNS), (
        f"no fixed input makes a {kind!r} run: add one to explorer.gallery.GALLERY_RUNS"
    )
    by_size = layout_reports.get((kind, figure))
    assert by_size, f"the gallery's {kind!r} run does not show the figure {figure!r}: change its fixed input"
    for size in SIZES:
        report = by_size[size]
        assert report["texts"] > 0, f"{size}: no text at all"
        assert report["width"] == round(COLUMN_WIDTH_IN[size] * PX_PER_IN)
        assert report["min_font_px"] >= MIN_FONT_PT * PX_PER_IN / 72 - 0.01, f"{size}: text below 7 pt"
        assert not report["problems"], f"{size}: " + "\n".join(json.dumps(p) for p in report["problems"][:8])


def test_the_layout_check_finds_overlaps_and_clipping() -> None:
    """The checker itself: two texts on top of each other, and one hanging off the canvas."""
    from layout_check import check_svgs
    from playwright.sync_api import sync_playwright

    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100">'
        b'<text x="10" y="30" font-size="12">overlapping one</text>'
        b'<text x="20" y="32" font-size="12">overlapping two</text>'
        b'<text x="150" y="80" font-size="12">far too long to fit</text>'
        b'<g transform="translate(20,90) rotate(-90)"><text font-size="12">rotated</text></g></svg>'
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        (report,) = check_svgs(browser.new_page(), {"bad": svg})
        browser.close()
    kinds = sorted(p["type"] for p in report["problems"])
    assert kinds == ["off-canvas", "overlap"], report["problems"]
    assert report["texts"] == 4
