"""Browser tests: launch the app, run every tab's default action in headless Chromium, and check
that a person can see every figure the tab promises.

"Visible" means: the figure's plotly element exists, is not a "could not be drawn" message
(`layout.meta.figure_error`, set by `explorer.ui.common.ui_figure`), has non-zero width and
height, and draws at least one trace. Plotly errors in the page fail the test. Each test saves a
full-page screenshot (into `EXPLORER_SCREENSHOT_DIR` when set).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.real]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
COMPUTE_TIMEOUT_MS = int(
    os.environ.get("EXPLORER_BROWSER_TIMEOUT_MS", "300000")
)  # model load + compute, busy CPU
SHORT_PROMPT = "The capital of France is"

# Where a figure stands, as the browser sees it. "rendered": drawn trace elements (scatter and
# bar traces, heatmap images, image traces, tables).
FIGURE_STATE_JS = """(id) => {
  const el = document.querySelector('#' + id + ' .js-plotly-plot');
  if (!el) return {state: 'missing'};
  const meta = el.layout && el.layout.meta;
  if (meta && meta.figure_error) return {state: 'error', message: String(meta.figure_error)};
  if (!el._fullData || !el._fullLayout) return {state: 'pending'};
  const rendered = el.querySelectorAll('.trace, .hm image, .imagelayer image, .table').length;
  const title = el._fullLayout.title && el._fullLayout.title.text;
  return {state: 'drawn', width: el.offsetWidth, height: el.offsetHeight, traces: el._fullData.length,
          rendered: rendered, title: title || ''};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app_settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from explorer.config import Settings

    db = tmp_path_factory.mktemp("ui") / "ui.duckdb"
    return Settings.from_env(db_path=db, port=free_port())


@pytest.fixture(scope="module")
def app_url(app_settings: Any):
    from explorer.backends.language import load_model
    from explorer.ui.app import CSS, build_demo

    load_model(app_settings.default_model, settings=app_settings)
    demo = build_demo(app_settings)
    demo.queue().launch(
        server_name="127.0.0.1",
        server_port=app_settings.port,
        prevent_thread_lock=True,
        css=CSS,
        enable_monitoring=False,
    )
    yield f"http://127.0.0.1:{app_settings.port}/"
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


class Page:
    """A page of the app that records plotly errors thrown in the browser."""

    def __init__(self, browser: Any, url: str, height: int = 2000) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": height})
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url)
        self.page.wait_for_selector("button[role=tab]", timeout=60_000)

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def figure_state(self, elem_id: str) -> dict[str, Any]:
        return self.page.evaluate(FIGURE_STATE_JS, elem_id)

    def wait_drawn(self, elem_id: str, timeout: int = COMPUTE_TIMEOUT_MS, meta: dict | None = None) -> None:
        """Wait until the figure in `elem_id` is drawn or replaced by an error message (with
        `meta`: until its `layout.meta` has those values, e.g. {"figure": ..., "run_id": ...})."""
        cond = (
            "([id, want]) => { if (document.querySelector('.toast-body.error')) return true;"
            " const el = document.querySelector('#' + id + ' .js-plotly-plot');"
            " if (!el) return false; const m = (el.layout && el.layout.meta) || {};"
            " if (want && Object.keys(want).some(k => m[k] !== want[k])) return false;"
            " if (m.figure_error) return true;"
            " return !!(el._fullData && el._fullData.length && el._fullLayout); }"
        )
        try:
            self.page.wait_for_function(cond, arg=[elem_id, meta], timeout=timeout)
        except Exception as exc:
            pytest.fail(
                f"figure #{elem_id} never appeared ({type(exc).__name__}); page errors: {self.errors}"
            )
        toast = self.page.locator(".toast-body.error")
        if toast.count():
            pytest.fail(f"the app showed an error instead of #{elem_id}: {toast.first.inner_text()}")

    def assert_visible(self, figures: dict[str, str], timeout: int = COMPUTE_TIMEOUT_MS) -> None:
        """Every figure (name -> element id) is drawn, visible and not an error message."""
        for name, elem_id in figures.items():
            self.wait_drawn(elem_id, timeout)
            self.page.wait_for_timeout(100)  # let plotly finish its resize after the first draw
            state = self.figure_state(elem_id)
            where = f"figure {name!r} (#{elem_id})"
            if state["state"] == "error":
                pytest.fail(f"{where} could not be drawn: {state['message']}")
            assert state["state"] == "drawn", f"{where}: {state}"
            assert state["width"] > 0 and state["height"] > 0, f"{where} has zero size: {state}"
            assert state["traces"] > 0 and state["rendered"] > 0, f"{where} draws no trace: {state}"
        assert not self.errors, f"plotly errors in the page while drawing {list(figures)}: {self.errors}"

    def screenshot(self, tmp_path: Path, name: str) -> None:
        self.page.screenshot(path=str(screenshot_dir(tmp_path) / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.page.close()


def _keep_only(page: Any, elem_id: str, wanted: list[str]) -> None:
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


def _plot_traces(page: Any, elem_id: str) -> list[dict]:
    """The rendered traces of the plotly element inside `elem_id`: type, name, size, x."""
    return page.evaluate(
        f"() => document.querySelector('#{elem_id} .js-plotly-plot')._fullData.map(d => ({{"
        " type: d.type, name: d.name, n: d.x ? d.x.length : (d.z ? d.z.length : 0),"
        " x: d.x ? Array.from(d.x) : null }))"
    )


# ---- logit lens ------------------------------------------------------------------------------
def test_lens_heatmap_renders(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url)
    page = app.page
    page.get_by_label("Prompt").first.fill(SHORT_PROMPT)
    page.get_by_role("button", name="Run logit lens").click()
    app.assert_visible({"heatmap": "lens-heatmap", "tracked": "lens-tracked"})
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
    assert not page.locator("#lens-generation").is_visible()  # no generation, no generation views
    app.screenshot(tmp_path, "lens")
    app.close()


def test_lens_with_generation_renders_every_view(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url, height=2600)
    page = app.page
    page.get_by_label("Prompt").first.fill("Once upon a time")
    set_slider(page, "Generate N tokens", 3)
    page.get_by_role("button", name="Run logit lens").click()
    app.assert_visible(
        {
            "heatmap": "lens-heatmap",
            "tracked": "lens-tracked",
            "generation": "lens-generation",
            "hidden": "lens-hidden",
        }
    )
    assert page.get_by_text("Generated", exact=False).count() >= 1
    app.screenshot(tmp_path, "lens_generation")
    app.close()


def test_empty_prompt_shows_error(app_url, browser) -> None:
    app = Page(browser, app_url, height=900)
    app.page.get_by_role("button", name="Run logit lens").click()
    app.page.get_by_text("the prompt is empty").first.wait_for(timeout=30_000)
    app.close()


def test_a_figure_that_fails_shows_a_message_in_its_place(app_url, browser, monkeypatch, caplog) -> None:
    """A builder that raises: the page shows a message where the figure would be, the other
    figures still render, and the server logs the reason."""
    from explorer.plots import lens as lens_plots

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("deliberately broken for the test")

    monkeypatch.setattr(lens_plots, "tracked_ranks", broken)
    app = Page(browser, app_url, height=1600)
    app.page.get_by_label("Prompt").first.fill("A broken figure")
    app.page.get_by_role("button", name="Run logit lens").click()
    app.assert_visible({"heatmap": "lens-heatmap"})
    app.wait_drawn("lens-tracked")
    state = app.figure_state("lens-tracked")
    assert state["state"] == "error" and "deliberately broken" in state["message"], state
    assert app.page.locator("#lens-tracked").get_by_text("could not be drawn").is_visible()
    assert any(
        "tracked" in r.getMessage() and "deliberately broken" in r.getMessage() for r in caplog.records
    )
    app.close()


# ---- attention -------------------------------------------------------------------------------
def test_attention_text_renders_every_view(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url, height=2400)
    page = app.page
    app.tab("Attention")
    page.locator("textarea:visible").first.fill("The capital of France is Paris.")
    page.get_by_label("Attention flow (exact max-flow; slow; ≤ 64 tokens)").check()
    page.get_by_role("button", name="Run attention").click()
    app.assert_visible(
        {
            "one head": "attention-head",
            "mean over heads": "attention-mean",
            "token view": "attention-token",
            "all heads": "attention-grid",
            "rollout": "attention-rollout",
            "flow": "attention-flow",
            "sink share": "attention-sinks",
            "entropy": "attention-entropy",
        }
    )
    rows = page.evaluate(
        "() => { const el = document.querySelector('#attention-head .js-plotly-plot');"
        " const t = el._fullData.find(d => d.type === 'heatmap'); const z = t.z;"
        " return Array.from(z, r => Array.from(r).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0)); }"
    )
    assert len(rows) >= 5
    assert all(abs(r - 1.0) < 1e-3 for r in rows), rows
    app.screenshot(tmp_path, "attention")
    app.close()


def test_attention_image_mode_renders_every_view(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url)
    page = app.page
    app.tab("Attention")
    page.get_by_label("Image (vision model)").check()
    page.get_by_text("A vision encoder has no causal mask and no unembedding").first.wait_for(timeout=30_000)
    assert not page.get_by_role("button", name="Run attention", exact=True).is_visible()
    page.locator("#attention-image-sample input").click()
    page.get_by_role("option", name="chelsea_cat").click()
    page.wait_for_selector("#attention-image-input img", timeout=30_000)
    page.get_by_role("button", name="Run image attention").click()
    app.assert_visible(
        {
            "[CLS] overlay": "vision-attention-overlay",
            "rollout overlay": "vision-attention-rollout",
            "entropy": "vision-attention-entropy",
        }
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
    app.screenshot(tmp_path, "attention_image")
    app.close()


# ---- attribution -----------------------------------------------------------------------------
ATTRIBUTION_FIGURES = {"coloured tokens": "attribution-tokens", "faithfulness table": "attribution-table"}


def set_slider(page: Any, label: str, value: float, exact: bool = False) -> None:
    box = page.get_by_label(f"number input for {label}", exact=exact).filter(visible=True)
    for _ in range(3):  # on a loaded machine Gradio sometimes misses the first commit
        box.fill(str(value))
        box.press("Enter")
        box.blur()  # Gradio commits a slider's number box on blur
        page.wait_for_timeout(800)
        if float(box.input_value() or "nan") == float(value):
            break


def few_reagent_steps(page: Any) -> None:
    """ReAGent with uniform replacements, 3 probes x 4 steps: the defaults (causal-LM
    replacements, 8 x 30) take minutes on 2 busy cores; the figures are the same."""
    page.get_by_text("ReAGent parameters").click()
    page.get_by_label("uniform random tokens").check()
    set_slider(page, "Probes", 3)
    set_slider(page, "Max steps", 4)


def test_attribution_single_method_example_renders(app_url, browser, tmp_path) -> None:
    """The tab's default use: click the ReAGent example, Attribute."""
    app = Page(browser, app_url)
    page = app.page
    app.tab("Attribution")
    page.get_by_text("When my flight landed in Japan").filter(visible=True).first.click()
    target = page.get_by_label("Target (mind the leading space: ' Paris')")
    expect(target).to_have_value(" Tokyo", timeout=30_000)
    few_reagent_steps(page)
    page.get_by_role("button", name="Attribute", exact=True).click()
    app.assert_visible(ATTRIBUTION_FIGURES)
    cells = page.evaluate(
        "() => { const d = document.querySelector('#attribution-tokens .js-plotly-plot')._fullData[0];"
        " const z = Array.from(d.z, r => Array.from(r)).flat(); const t = Array.from(d.text, r => Array.from(r)).flat();"
        " return {type: d.type, z: z.filter(v => Number.isFinite(v)), text: t.filter(s => s && s.trim()),"
        " colorbar: d.showscale, hover: d.hovertemplate}; }"
    )
    assert cells["type"] == "heatmap" and cells["colorbar"] and cells["hover"], cells
    assert len(cells["z"]) == len(cells["text"]) >= 15  # one coloured cell per prompt token
    assert all(0.0 <= v <= 1.0 for v in cells["z"]), cells
    assert any("Japan" in t for t in cells["text"]), cells
    header = page.evaluate(
        "() => Array.from(document.querySelector('#attribution-table .js-plotly-plot')._fullData[0].header.values)"
    )
    assert "reagent" in header[1] and header[2] == "occlusion (reference)", header
    assert page.get_by_text("Best:").count() == 0  # one method: no meaningless "best"
    app.screenshot(tmp_path, "attribution_single")
    app.close()


def test_attribution_all_methods_renders(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url)
    page = app.page
    app.tab("Attribution")
    page.get_by_text("The capital of France is", exact=True).filter(visible=True).first.click()  # 'all'
    target = page.get_by_label("Target (mind the leading space: ' Paris')")
    expect(target).to_have_value(" Paris", timeout=30_000)  # the example has filled the form
    page.get_by_role("button", name="Attribute", exact=True).click()
    app.assert_visible(ATTRIBUTION_FIGURES)
    methods = page.evaluate(
        "() => Array.from(document.querySelector('#attribution-tokens .js-plotly-plot')._fullData[0].y)"
    )
    assert len(methods) == 7 and "reagent" in methods, methods
    assert page.get_by_text("Best:").count() == 1
    app.screenshot(tmp_path, "attribution_all")
    app.close()


def test_attribution_per_generation_step_renders(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url)
    page = app.page
    app.tab("Attribution")
    page.get_by_label("Prompt").filter(visible=True).first.fill(SHORT_PROMPT)
    page.get_by_label("Method ('all' compares every method)").click()
    page.get_by_role("option", name="input_x_gradient", exact=True).click()
    page.get_by_text("Per generation step (steps × sources)").click()
    set_slider(page, "Generate N tokens", 3)
    page.get_by_role("button", name="Generate and attribute each step").click()
    app.assert_visible({"steps x sources": "attribution-steps"})
    steps = page.evaluate(
        "() => document.querySelector('#attribution-steps .js-plotly-plot')._fullData[0].z.length"
    )
    assert steps == 3
    app.screenshot(tmp_path, "attribution_generation")
    app.close()


# ---- pruning ---------------------------------------------------------------------------------
def test_pruning_lab_text_sweep_renders(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url, height=2400)
    page = app.page
    app.tab("Pruning lab")
    page.locator("#pruning-prompt textarea").fill("The capital of France is Paris. The capital of Italy is")
    _keep_only(page, "pruning-text-strategies", ["random", "fastv"])
    page.locator("#pruning-ratios textarea, #pruning-ratios input").first.fill("1.0, 0.5")
    page.get_by_role("button", name="Run pruning sweep").click()
    app.assert_visible(
        {"retention": "pruning-retention", "pruned prompts": "pruning-prompts", "outputs": "pruning-outputs"}
    )
    traces = _plot_traces(page, "pruning-retention")
    lines = [t for t in traces if t["type"] == "scatter" and t["name"] in ("random", "fastv")]
    assert sorted(t["name"] for t in lines) == ["fastv", "random"], traces
    assert all(sorted(t["x"]) == [0.5, 1.0] for t in lines), lines
    page.locator("#pruning-summary").get_by_text("2 strategies × 2 ratios").wait_for(timeout=30_000)
    assert page.get_by_text("unpruned", exact=True).count() >= 1  # the struck-prompts table
    app.screenshot(tmp_path, "pruning_text")
    app.close()


def test_pruning_lab_image_sweep_renders(app_url, browser, tmp_path) -> None:
    app = Page(browser, app_url, height=2400)
    page = app.page
    app.tab("Pruning lab")
    page.locator("#pruning-mode").get_by_label("Image").check()
    page.locator("#pruning-image-sample input").click()
    page.get_by_role("option", name="chelsea_cat").click()
    page.wait_for_selector("#pruning-image img", timeout=30_000)
    _keep_only(page, "pruning-image-strategies", ["cls_attention", "random"])
    page.locator("#pruning-ratios textarea, #pruning-ratios input").first.fill("1.0, 0.3")
    page.get_by_role("button", name="Run pruning sweep").click()
    app.assert_visible(
        {"retention": "pruning-retention", "kept patches": "pruning-patches", "saliency": "pruning-saliency"}
    )
    patches = _plot_traces(page, "pruning-patches")
    assert any(t["type"] in ("image", "heatmap") for t in patches), patches
    retention = _plot_traces(page, "pruning-retention")
    assert {t["name"] for t in retention if t["type"] == "scatter"} >= {"cls_attention", "random"}, retention
    app.screenshot(tmp_path, "pruning_image")
    app.close()


# ---- runs ------------------------------------------------------------------------------------
def _store_one_run_of_each_kind(settings: Any) -> dict[str, str]:
    """kind -> run id, computed through the API into the app's store (small inputs; the tests
    above may already have stored the same runs, which are then served from the store)."""
    from explorer import api, prune_image, prune_text
    from explorer.api.attention import attention, attention_image
    from explorer.api.attribution import attribute, attribute_generation
    from explorer.images import sample_images

    cat = sample_images()["chelsea_cat"]
    model = settings.default_model
    runs = [
        api.logit_lens(model, "Reopen me from the store", generate=2, settings=settings),
        attention(model, SHORT_PROMPT, settings=settings),
        attention_image(cat, settings=settings),
        attribute(model, SHORT_PROMPT, " Paris", method="input_x_gradient", settings=settings),
        attribute_generation(model, SHORT_PROMPT, generate=2, method="input_x_gradient", settings=settings),
        prune_text(model, SHORT_PROMPT, strategies=["random"], keep_ratios=[1.0, 0.5], settings=settings),
        prune_image(cat, strategies=["random"], keep_ratios=[1.0, 0.5], settings=settings),
    ]
    return {r.kind: r.run_id for r in runs}


def test_runs_tab_reopens_every_kind_and_figure(app_url, app_settings, browser, tmp_path) -> None:
    from explorer.plots import figures_for
    from explorer.store import Store

    runs = _store_one_run_of_each_kind(app_settings)
    assert len(runs) == 7, runs
    app = Page(browser, app_url, height=1800)
    page = app.page
    app.tab("Runs")
    for kind, run_id in runs.items():
        result = Store.open(app_settings.database).load(run_id)
        specs = figures_for(result)
        assert specs, kind
        page.locator("#runs-choice input").fill(run_id)
        page.get_by_role("button", name="Open", exact=True).click()
        for i, spec in enumerate(specs):
            if i > 0:
                page.locator("#runs-figure input").click()
                page.get_by_role("option", name=spec.title, exact=True).click()
            app.wait_drawn("runs-plot", timeout=60_000, meta={"figure": spec.name, "run_id": run_id})
            app.assert_visible({f"{kind}: {spec.name}": "runs-plot"}, timeout=60_000)
            app.screenshot(tmp_path, f"runs_{kind}_{spec.name}")
    app.close()
