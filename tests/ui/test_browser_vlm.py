"""Browser test: a picture of a red circle and a blue square into the demo VLM, in the Logit lens tab."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def vlm_app_url(tmp_path_factory: pytest.TempPathFactory):
    from explorer.backends.vlm import load_vlm
    from explorer.config import Settings
    from explorer.ui.app import CSS, build_demo

    db = tmp_path_factory.mktemp("ui-vlm") / "ui.duckdb"
    settings = Settings.from_env(db_path=db, port=_free_port())
    load_vlm("tiny-vlm", settings=settings)
    demo = build_demo(settings)
    demo.queue().launch(
        server_name="127.0.0.1",
        server_port=settings.port,
        prevent_thread_lock=True,
        css=CSS,
        enable_monitoring=False,
    )
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


def test_vlm_example_shows_the_patch_lens(vlm_app_url, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    shots = Path(os.environ.get("EXPLORER_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(vlm_app_url)
        page.wait_for_selector("button[role=tab]", timeout=60_000)
        page.get_by_text("What is in the picture?").first.click()  # the red circle + blue square example
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('textarea')).some(t => t.value === 'What is in the picture?')",
            timeout=30_000,
        )
        page.get_by_role("button", name="Run logit lens").click()
        page.wait_for_function(
            "() => { const el = document.querySelector('#lens-patches .js-plotly-plot');"
            " return el && el._fullData && el._fullData.some(d => d.type === 'heatmap' && d.z); }",
            timeout=300_000,
        )
        info = page.evaluate(
            "() => { const el = document.querySelector('#lens-patches .js-plotly-plot');"
            " const h = el._fullData.find(d => d.type === 'heatmap');"
            " return {rows: h.z.length, cols: h.z[0].length, w: el.offsetWidth, h: el.offsetHeight,"
            " steps: (el.layout.sliders && el.layout.sliders[0].steps || []).length}; }"
        )
        assert (info["rows"], info["cols"]) == (8, 8)
        assert info["w"] > 200 and info["h"] > 200, info
        assert info["steps"] == 31  # the layer slider: 30 blocks + the embeddings
        surf = page.evaluate(
            "() => { const el = document.querySelector('#lens-surfacing .js-plotly-plot');"
            " return el ? [el.offsetWidth, el.offsetHeight, el._fullData.length] : null; }"
        )
        assert surf is not None and surf[0] > 200 and surf[1] > 200 and surf[2] == 3, surf
        assert page.get_by_text("on the image tokens").count() >= 1
        assert page.get_by_text("visual)").count() >= 1
        page.screenshot(path=str(shots / "vlm-lens.png"), full_page=True)
        browser.close()


# ---- Attention and Attribution tabs with an image and the demo VLM ---------------------------
VLM_TIMEOUT_MS = 900_000  # the machine is shared; occlusion runs ~190 perturbed passes of the demo VLM


def _vlm_page(playwright: Any, url: str) -> tuple[Any, Any]:
    from test_browser import Page

    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
    return browser, Page(browser, url, height=2400)


def _click_visible_example(page: Any, text: str) -> None:
    page.locator(f"text={text} >> visible=true").first.click()
    page.wait_for_function(
        "(t) => Array.from(document.querySelectorAll('textarea')).some(a => a.value === t && a.offsetParent)",
        arg=text,
        timeout=30_000,
    )


def _overlay_info(page: Any, elem_id: str) -> dict[str, Any]:
    return page.evaluate(
        "(id) => { const el = document.querySelector('#' + id + ' .js-plotly-plot');"
        " const h = el._fullData.find(d => d.type === 'heatmap');"
        " const img = el._fullData.find(d => d.type === 'image');"
        " return {rows: h.z.length, cols: h.z[0].length, image: !!img, w: el.offsetWidth, h: el.offsetHeight,"
        " steps: (el.layout.sliders && el.layout.sliders[0].steps || []).length,"
        " max: Math.max(...Array.from(h.z).flatMap(r => Array.from(r)).map(Math.abs))}; }",
        elem_id,
    )


def test_vlm_attention_tab_draws_text_to_image_attention(vlm_app_url, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        browser, app = _vlm_page(p, vlm_app_url)
        page = app.page
        app.tab("Attention")
        page.get_by_label("Image + prompt (vision-language model)").check()
        _click_visible_example(page, "What is in the picture?")  # the red circle + blue square
        page.wait_for_selector("#vlm-attention-image img", timeout=30_000)
        page.get_by_role("button", name="Run VLM attention").click()
        figures = {
            "overlay": "vlm-attention-overlay",
            "shares": "vlm-attention-shares",
            "heads": "vlm-attention-heads",
        }
        app.assert_visible(figures, timeout=VLM_TIMEOUT_MS)
        info = _overlay_info(page, "vlm-attention-overlay")
        assert (info["rows"], info["cols"]) == (8, 8) and info["image"], info
        assert info["w"] > 200 and info["h"] > 200 and info["max"] > 0, info
        assert info["steps"] == 30  # a block slider over the 30 LM blocks
        shares = page.evaluate(
            "() => document.querySelector('#vlm-attention-shares .js-plotly-plot')._fullData.map(d => d.name)"
        )
        assert shares == ["image", "text", "sink"]
        assert page.get_by_text("text tokens after the image attend to it").count() >= 1
        # the generated token " red" as the query: redrawn from the stored result
        page.locator("#vlm-attention-query input").click()
        page.get_by_role("option", name=re.compile(r"' red' \(generated\)")).first.click()
        page.wait_for_function(
            "() => { const el = document.querySelector('#vlm-attention-overlay .js-plotly-plot');"
            " return el && el.layout.title.text.includes('red'); }",
            timeout=60_000,
        )
        page.wait_for_function(
            "() => !document.querySelector('#vlm-attention-overlay').innerText.includes('processing')",
            timeout=60_000,
        )
        page.wait_for_timeout(500)  # plotly's resize after the redraw
        app.screenshot(tmp_path, "vlm-attention")
        # another view re-renders from the stored result: the rollout of the same query
        page.get_by_label("rollout").check()
        page.wait_for_function(
            "() => { const el = document.querySelector('#vlm-attention-overlay .js-plotly-plot');"
            " return el && el.layout.title.text.includes('rollout'); }",
            timeout=60_000,
        )
        assert not app.errors, app.errors
        browser.close()


def test_vlm_attribution_tab_draws_patch_attribution(vlm_app_url, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        browser, app = _vlm_page(p, vlm_app_url)
        page = app.page
        app.tab("Attribution")
        _click_visible_example(page, "What is in the picture?")  # occlusion, target " red"
        page.wait_for_selector("#attribution-image img", timeout=30_000)
        page.get_by_role("button", name="Attribute", exact=True).click()
        figures = {
            "overlay": "attribution-image-overlay",
            "curve": "attribution-deletion-curve",
            "table": "attribution-deletion-table",
        }
        app.assert_visible(figures, timeout=VLM_TIMEOUT_MS)
        info = _overlay_info(page, "attribution-image-overlay")
        assert (info["rows"], info["cols"]) == (8, 8) and info["image"], info
        assert info["w"] > 200 and info["h"] > 200 and info["max"] > 0, info
        curve = page.evaluate(
            "() => document.querySelector('#attribution-deletion-curve .js-plotly-plot')._fullData"
            ".map(d => d.y.length)"
        )
        assert len(curve) == 2 and min(curve) > 2, curve
        assert page.get_by_text("Most important patch").count() >= 1
        app.screenshot(tmp_path, "vlm-attribution")
        assert not app.errors, app.errors
        browser.close()


# ---- VLM eval tab: VISTA's three patterns and visual-token pruning, on tiny inputs -------------
def _section_shot(page: Any, first_id: str, last_id: str, path: Path) -> None:
    """A screenshot of the page from element `first_id` down to element `last_id`."""
    box = page.evaluate(
        "([a, b]) => { const r1 = document.getElementById(a).getBoundingClientRect();"
        " const r2 = document.getElementById(b).getBoundingClientRect();"
        " return {x: 0, y: r1.top + window.scrollY - 160, width: document.documentElement.clientWidth,"
        " height: r2.bottom - r1.top + 200}; }",
        [first_id, last_id],
    )
    page.screenshot(path=str(path), full_page=True, clip=box)


def _plot_titles(page: Any, ids: list[str]) -> dict[str, str]:
    return page.evaluate(
        "(ids) => Object.fromEntries(ids.map(id => { const el = document.querySelector('#' + id + ' .js-plotly-plot');"
        " return [id, el && el._fullLayout ? (el._fullLayout.title.text || '') : null]; }))",
        ids,
    )


def test_vista_patterns_section_measures_one_scene(vlm_app_url, tmp_path) -> None:
    """ "VISTA's three patterns" on one caption scene: three verdicts and four drawn figures."""
    from playwright.sync_api import sync_playwright
    from test_browser import screenshot_dir, set_slider

    with sync_playwright() as p:
        browser, app = _vlm_page(p, vlm_app_url)
        page = app.page
        app.tab("VLM eval")
        set_slider(page, "Caption scenes", 1, exact=True)
        page.get_by_role("button", name="Measure the patterns").click()
        figures = {
            name: f"vista-{name}"
            for name in ("information-loss", "early-excitation", "layer-ranks", "hidden-genuine")
        }
        app.assert_visible(figures, timeout=VLM_TIMEOUT_MS)
        verdicts = page.locator("#vista-patterns-verdicts").inner_text()
        for pattern in ("Visual information loss", "Early excitation", "Hidden genuine information"):
            assert pattern in verdicts, verdicts
        assert "· 1 scene ·" in verdicts, verdicts
        page.wait_for_timeout(500)
        _section_shot(
            page,
            "vista-patterns-verdicts",
            "vista-hidden-genuine",
            screenshot_dir(tmp_path) / "vlm-eval-vista-patterns.png",
        )
        assert not app.errors, app.errors
        browser.close()


def test_visual_token_pruning_section_evaluates_one_scene(vlm_app_url, tmp_path) -> None:
    """ "Visual-token pruning" on one POPE scene, three strategies at 100% and 25%: the cost table has a
    row per strategy and keep ratio, and the three figures draw one curve per strategy."""
    from playwright.sync_api import sync_playwright
    from test_browser import screenshot_dir, set_slider

    with sync_playwright() as p:
        browser, app = _vlm_page(p, vlm_app_url)
        page = app.page
        app.tab("VLM eval")
        set_slider(page, "Scenes", 1, exact=True)  # not "Scenes (built-in sets)"
        for name in ("transprune", "todre", "idpruner", "uniform"):
            page.get_by_label(name, exact=True).uncheck()
        page.get_by_label("Keep ratios (share of visual tokens)").fill("1,0.25")
        page.get_by_role("button", name="Prune and evaluate").click()
        figures = {
            "retention": "prune-retention-plot",
            "agreement": "prune-agreement-plot",
            "cost": "prune-cost-plot",
        }
        app.assert_visible(figures, timeout=VLM_TIMEOUT_MS)
        curves = page.evaluate(
            "() => document.querySelector('#prune-retention-plot .js-plotly-plot')._fullData"
            ".filter(d => d.mode && d.mode.includes('lines')).map(d => d.name)"
        )
        assert sorted(curves) == ["FastV", "VTC-CLS", "random"], curves
        page.wait_for_timeout(500)
        _section_shot(
            page, "prune-summary", "prune-cost-plot", screenshot_dir(tmp_path) / "vlm-eval-pruning.png"
        )
        table = page.locator("#prune-costs").inner_text()
        for name in ("fastv", "vtc_cls", "random"):
            assert table.count(name) == 2, table  # one row per keep ratio
        assert "Run " in page.locator("#prune-summary").inner_text()
        assert not app.errors, app.errors
        browser.close()
