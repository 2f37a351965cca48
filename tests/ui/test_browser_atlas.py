"""Browser test: the Token atlas tab, the newcomer's three things on the embedded SmolLM2.

1. a prompt's token states on a UMAP, all layers in one fit, moved through with the layer slider,
   one token's trajectory, and lassoed points listed with their tokens;
2. the vocabulary's under-trained tokens, verified by prompting (a fast setting: 10 suspects
   verified, 500 map points, large GlitchHunter clusters; the complete run is bench/atlas_vocab.py);
3. which tokens carry context (LLM-Microscope).

Each figure must be drawn with non-zero size and rendered traces; screenshots are saved (into
`EXPLORER_SCREENSHOT_DIR` when set).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect
from test_browser import (  # noqa: F401  (module-scoped fixtures: the app and the browser)
    COMPUTE_TIMEOUT_MS,
    Page,
    app_settings,
    app_url,
    browser,
    set_slider,
)

pytestmark = [pytest.mark.browser, pytest.mark.real]

MAP_PROMPT = "The cat sat on the mat, and the dog ran away."


def _title(page: Any, elem_id: str) -> str:
    return str(
        page.evaluate(
            f"() => document.querySelector('#{elem_id} .js-plotly-plot')._fullLayout.title.text || ''"
        )
    )


def _lasso(page: Any, elem_id: str) -> None:
    """Drag a lasso around the middle of the plot area (the map's default drag mode)."""
    box = page.locator(f"#{elem_id} .nsewdrag").first.bounding_box()
    assert box, "the map has no drag layer"
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    points = [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9), (0.1, 0.12)]
    page.mouse.move(x0 + w * points[0][0], y0 + h * points[0][1])
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + w * fx, y0 + h * fy, steps=8)
    page.mouse.up()


def _settled(page: Any, elem_id: str) -> None:
    """Wait until Gradio no longer shows the component as processing, and plotly has drawn."""
    page.wait_for_function(
        f"() => !document.querySelector('#{elem_id}').innerText.includes('processing')",
        timeout=COMPUTE_TIMEOUT_MS,
    )
    page.wait_for_timeout(500)


def test_token_atlas_newcomer(app_url, browser, tmp_path) -> None:  # noqa: F811
    app = Page(browser, app_url, height=2600)
    page = app.page
    app.tab("Token atlas")

    # 1. a prompt's token states fly across the layers on a UMAP
    page.locator("#atlas-map").wait_for(state="attached", timeout=30_000)
    page.get_by_label("Prompt").filter(visible=True).first.fill(MAP_PROMPT)
    page.get_by_role("button", name="Map token states").click()
    app.assert_visible({"map": "atlas-map"})
    assert "UMAP of token states, all layers" in _title(page, "atlas-map")
    n_points = page.evaluate(
        "() => document.querySelector('#atlas-map .js-plotly-plot')._fullData.reduce((a, d) => a + d.x.length, 0)"
    )
    assert n_points >= 31 * 10  # 31 residual layers x the prompt's tokens, one fit
    page.get_by_role("checkbox", name="Show all layers").uncheck()
    set_slider(page, "Layer shown (uncheck 'Show all layers')", 20)
    page.wait_for_function(
        "() => { const el = document.querySelector('#atlas-map .js-plotly-plot');"
        " return el && el._fullLayout.title.text.includes('showing layer 20'); }",
        timeout=COMPUTE_TIMEOUT_MS,
    )
    app.assert_visible({"map at layer 20": "atlas-map"})
    names = page.evaluate(
        "() => document.querySelector('#atlas-map .js-plotly-plot')._fullData.map(d => d.name)"
    )
    assert "other layers" in names  # the other layers stay as a grey backdrop of the same fit
    page.get_by_label("Trajectory of token").click()
    page.get_by_role("option").filter(has_text="' on'").first.click()
    page.wait_for_function(
        "() => document.querySelector('#atlas-map .js-plotly-plot')._fullData.some("
        "d => d.name && d.name.startsWith('path of') && d.x.length === 31)",
        timeout=COMPUTE_TIMEOUT_MS,
    )
    _settled(page, "atlas-map")
    app.screenshot(tmp_path, "atlas_map")
    # 2. the vocabulary's under-trained tokens, verified (a fast setting)
    app.tab("Vocabulary health")
    set_slider(page, "Suspects to verify", 10)
    set_slider(page, "Points in the vocabulary map (0 = none)", 500)
    page.get_by_text("GlitchHunter-style detector settings").click()
    set_slider(page, "Leiden resolution (higher = smaller communities, more screens)", 1)
    page.get_by_role("button", name="Check the vocabulary").click()
    app.assert_visible({"vocabulary atlas": "atlas-vocab-map", "indicators": "atlas-vocab-indicators"})
    summary = page.locator("#atlas-vocab-summary").inner_text()
    assert "49152 tokens" in summary and "candidates verified under-trained" in summary, summary
    expect(page.locator("#atlas-vocab-suspects")).to_contain_text(
        "strong_verified", timeout=COMPUTE_TIMEOUT_MS
    )
    assert "GlitchHunter:" in summary and "Agreement (verified tokens):" in summary, summary
    _settled(page, "atlas-vocab-map")
    app.screenshot(tmp_path, "atlas_vocab")

    # 3. which tokens carry context
    app.tab("LLM-Microscope")
    page.get_by_role("button", name="Measure", exact=True).click()
    app.assert_visible(
        {
            "heatmap": "atlas-microscope-heatmap",
            "ranking": "atlas-microscope-ranking",
            "per layer": "atlas-microscope-layers",
        }
    )
    assert "Most context:" in page.locator("#atlas-microscope-summary").inner_text()
    _settled(page, "atlas-microscope-ranking")
    app.screenshot(tmp_path, "atlas_microscope")

    # back to the map: lasso points and list their tokens
    app.tab("Map of token states")
    _lasso(page, "atlas-map")
    selected = page.evaluate(
        "() => document.querySelector('#atlas-map .js-plotly-plot').data"
        ".reduce((a, t) => a + (t.selectedpoints ? t.selectedpoints.length : 0), 0)"
    )
    assert selected > 0, "the lasso selected no point"
    page.get_by_role("button", name="List selected (lasso) points").click()
    expect(page.locator("#atlas-map-points")).to_contain_text(
        "[", timeout=COMPUTE_TIMEOUT_MS
    )  # "…[token]…" contexts
    text = page.locator("#atlas-map-points").inner_text()
    assert any(w in text for w in ("cat", "mat", "dog", "sat")), text
    app.close()
