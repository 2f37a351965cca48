"""Browser test: launch the app, run the logit lens in headless Chromium, check the heatmap."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    from explorer.backends.language import load_model
    from explorer.config import Settings
    from explorer.ui.app import CSS, build_demo

    db = tmp_path_factory.mktemp("ui") / "ui.duckdb"
    settings = Settings.from_env(db_path=db, port=free_port())
    load_model(settings.default_model, settings=settings)
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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make setup` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def screenshot_dir(tmp_path: Path) -> Path:
    d = Path(os.environ.get("EXPLORER_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_lens_heatmap_renders(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    page.get_by_label("Prompt").first.fill("The capital of France is")
    page.get_by_role("button", name="Run logit lens").click()
    page.wait_for_selector("#lens-heatmap .js-plotly-plot", timeout=180_000)
    page.wait_for_function(
        "() => { const el = document.querySelector('#lens-heatmap .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=60_000,
    )
    shape = page.evaluate(
        "() => { const z = document.querySelector('#lens-heatmap .js-plotly-plot')._fullData[0].z;"
        " return [z.length, z[0].length]; }"
    )
    assert shape == [31, 5]  # 30 layers + embeddings, 5 prompt tokens
    top = page.evaluate(
        "() => document.querySelector('#lens-heatmap .js-plotly-plot')._fullData[0].text[30][4]"
    )
    assert top.strip() == "Paris"
    assert page.get_by_text("Next-token prediction").count() >= 1
    page.screenshot(path=str(screenshot_dir(tmp_path) / "lens.png"), full_page=True)
    page.close()


def test_empty_prompt_shows_error(app_url, browser) -> None:
    page = browser.new_page()
    page.goto(app_url)
    page.get_by_role("button", name="Run logit lens").click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=30_000)
    page.close()


def test_attention_tab_renders_head_heatmap(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(app_url)
    page.get_by_role("tab", name="Attention").click()
    page.locator("textarea:visible").first.fill("The capital of France is Paris.")
    page.get_by_role("button", name="Run attention").click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#attention-head .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=180_000,
    )
    rows = page.evaluate(
        "() => { const el = document.querySelector('#attention-head .js-plotly-plot');"
        " const t = el._fullData.find(d => d.type === 'heatmap'); const z = t.z;"
        " return Array.from(z, r => Array.from(r).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0)); }"
    )
    assert len(rows) >= 5
    assert all(abs(r - 1.0) < 1e-3 for r in rows), rows
    page.screenshot(path=str(screenshot_dir(tmp_path) / "attention.png"), full_page=True)
    page.close()


def test_attention_tab_image_mode_renders_overlay(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(app_url)
    page.get_by_role("tab", name="Attention").click()
    page.get_by_label("Image (vision model)").check()
    page.get_by_text("A vision encoder has no causal mask and no unembedding").first.wait_for(timeout=30_000)
    assert not page.get_by_role("button", name="Run attention", exact=True).is_visible()
    page.locator("#attention-image-sample input").click()
    page.get_by_role("option", name="chelsea_cat").click()
    page.wait_for_selector("#attention-image-input img", timeout=30_000)
    page.get_by_role("button", name="Run image attention").click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#vision-attention-overlay .js-plotly-plot');"
        " return el && el._fullData && el._fullData.some(d => d.type === 'heatmap' && d.z); }",
        timeout=180_000,
    )
    traces = page.evaluate(
        "() => { const el = document.querySelector('#vision-attention-overlay .js-plotly-plot');"
        " const h = el._fullData.find(d => d.type === 'heatmap');"
        " return {types: el._fullData.map(d => d.type), rows: h.z.length, cols: h.z[0].length,"
        " colorbar: h.colorbar.title.text}; }"
    )
    assert traces["types"] == ["image", "heatmap"]
    assert traces["rows"] == traces["cols"] == 112  # 16x16 patch map upsampled over the 224-pixel view
    assert "[CLS]" in traces["colorbar"]
    page.wait_for_selector("#vision-attention-rollout .js-plotly-plot", timeout=30_000)
    page.wait_for_selector("#vision-attention-entropy .js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "attention_image.png"), full_page=True)
    page.close()


def test_runs_tab_reopens_a_stored_run(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(app_url)
    page.get_by_label("Prompt").first.fill("Reopen me from the store")
    page.get_by_role("button", name="Run logit lens").click()
    page.wait_for_selector("#lens-heatmap .js-plotly-plot", timeout=180_000)
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_timeout(1500)  # the tab's select event refreshes the table and the run chooser
    page.locator("#runs-choice input").click()
    page.get_by_role("option").filter(has_text="Reopen me from the store").first.click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#runs-plot .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=60_000,
    )
    n_layers = page.evaluate(
        "() => document.querySelector('#runs-plot .js-plotly-plot')._fullData[0].z.length"
    )
    assert n_layers == 31
    page.screenshot(path=str(screenshot_dir(tmp_path) / "runs.png"), full_page=True)
    page.close()


def _keep_only(page, elem_id: str, wanted: list[str]) -> None:
    """Remove every selected token of a multiselect dropdown except `wanted` (by visible text)."""
    tokens = page.locator(f"#{elem_id} .token")
    tokens.first.wait_for(timeout=30_000)
    for _ in range(50):
        texts = [t.strip() for t in tokens.locator("span").all_inner_texts()]
        extra = [i for i, text in enumerate(texts) if text not in wanted]
        if not extra:
            break
        tokens.nth(extra[0]).locator(".token-remove").click()
    assert sorted(t.strip() for t in tokens.locator("span").all_inner_texts()) == sorted(wanted)


def _plot_traces(page, elem_id: str) -> list[dict]:
    """Wait until the plotly element inside `elem_id` has rendered traces; return their type/name/size."""
    page.wait_for_function(
        f"() => {{ const el = document.querySelector('#{elem_id} .js-plotly-plot');"
        " return el && el._fullData && el._fullData.length > 0; }",
        timeout=300_000,
    )
    return page.evaluate(
        f"() => document.querySelector('#{elem_id} .js-plotly-plot')._fullData.map(d => ({{"
        " type: d.type, name: d.name, n: d.x ? d.x.length : (d.z ? d.z.length : 0),"
        " x: d.x ? Array.from(d.x) : null }))"
    )


def test_pruning_lab_text_and_image_sweeps(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.goto(app_url)
    page.get_by_role("tab", name="Pruning lab").click()
    page.locator("#pruning-prompt textarea").fill("The capital of France is Paris. The capital of Italy is")
    _keep_only(page, "pruning-text-strategies", ["random", "fastv"])
    page.locator("#pruning-ratios textarea, #pruning-ratios input").first.fill("1.0, 0.5")
    page.get_by_role("button", name="Run pruning sweep").click()
    traces = _plot_traces(page, "pruning-retention")
    lines = [t for t in traces if t["type"] == "scatter" and t["name"] in ("random", "fastv")]
    assert sorted(t["name"] for t in lines) == ["fastv", "random"], traces
    assert all(sorted(t["x"]) == [0.5, 1.0] for t in lines), lines
    page.locator("#pruning-summary").get_by_text("2 strategies × 2 ratios").wait_for(timeout=30_000)
    assert page.get_by_text("unpruned", exact=True).count() >= 1  # the struck-prompts table
    page.screenshot(path=str(screenshot_dir(tmp_path) / "pruning_text.png"), full_page=True)

    page.locator("#pruning-mode").get_by_label("Image").check()
    page.locator("#pruning-image-sample input").click()
    page.get_by_role("option", name="chelsea_cat").click()
    page.wait_for_selector("#pruning-image img", timeout=30_000)
    _keep_only(page, "pruning-image-strategies", ["cls_attention", "random"])
    page.locator("#pruning-ratios textarea, #pruning-ratios input").first.fill("1.0, 0.3")
    page.get_by_role("button", name="Run pruning sweep").click()
    patches = _plot_traces(page, "pruning-patches")
    assert any(t["type"] in ("image", "heatmap") for t in patches), patches
    retention = _plot_traces(page, "pruning-retention")
    assert {t["name"] for t in retention if t["type"] == "scatter"} >= {"cls_attention", "random"}, retention
    page.screenshot(path=str(screenshot_dir(tmp_path) / "pruning_image.png"), full_page=True)
    page.close()


def test_attribution_tab_renders_coloured_tokens(app_url, browser, tmp_path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(app_url)
    page.get_by_role("tab", name="Attribution").click()
    page.get_by_label("Prompt").filter(visible=True).first.fill("The capital of France is")
    page.get_by_label("Target (mind the leading space: ' Paris')").fill(" Paris")
    page.get_by_label("Method ('all' compares every method)").click()
    page.get_by_role("option", name="input_x_gradient", exact=True).click()
    page.get_by_role("button", name="Attribute", exact=True).click()
    page.wait_for_function(
        "() => { const el = document.querySelector('#attribution-tokens .js-plotly-plot');"
        " return el && el._fullData && el._fullData[0] && el._fullData[0].z; }",
        timeout=180_000,
    )
    cells = page.evaluate(
        "() => { const d = document.querySelector('#attribution-tokens .js-plotly-plot')._fullData[0];"
        " const z = Array.from(d.z, r => Array.from(r)).flat(); const t = Array.from(d.text, r => Array.from(r)).flat();"
        " return {z: z.filter(v => Number.isFinite(v)), text: t.filter(s => s && s.trim()), title: d.type}; }"
    )
    assert cells["title"] == "heatmap"
    assert len(cells["z"]) == 5  # one coloured cell per prompt token
    assert all(0.0 <= v <= 1.0 for v in cells["z"]), cells
    assert any("France" in t for t in cells["text"]), cells
    page.screenshot(path=str(screenshot_dir(tmp_path) / "attribution.png"), full_page=True)
    page.close()
