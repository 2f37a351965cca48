"""The front ends hold no engine policy: limits, kinds, names and defaults come from the engine.

- the prompt-length limit is enforced by the engine (`encode`), for every caller, not by a tab;
- the Runs tab lists every result kind the result registry knows (VLM and atlas kinds too);
- ReAGent's sliders start at `ReagentParams()`'s defaults; the model-running tabs offer the dtype;
- `ProgressFn` is defined once, in explorer.progress.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from explorer.backends.language import encode
from explorer.errors import InputError

EXPLORER = Path(__file__).resolve().parents[2] / "explorer"


def test_the_engine_refuses_overlong_prompts_before_tokenising(tiny_llama: Any) -> None:
    calls: list[str] = []
    tokenizer = tiny_llama.tokenizer

    class Spy:
        def __call__(self, text: str, **kwargs: Any) -> Any:
            calls.append(text)
            return tokenizer(text, **kwargs)

    tiny_llama.tokenizer = Spy()
    try:
        with pytest.raises(InputError, match="characters long"):
            encode(tiny_llama, "a" * (8 * 32 + 1), max_tokens=8)  # 32 characters per token at most
        assert calls == []
        assert encode(tiny_llama, "hello", max_tokens=8).numel() >= 1
    finally:
        tiny_llama.tokenizer = tokenizer


def test_no_tab_holds_a_prompt_limit() -> None:
    for path in (EXPLORER / "ui").glob("*.py"):
        text = path.read_text()
        assert "max_prompt_tokens *" not in text and "CHARS_PER_TOKEN" not in text, path.name


def test_runs_tab_lists_every_registered_kind() -> None:
    from explorer.results import RESULT_KINDS
    from explorer.ui.runs_tab import kind_choices

    kinds = kind_choices()
    assert kinds[0] == "" and kinds[1:] == RESULT_KINDS.all_kinds()
    expected = {"vision_attention", "attribution_generation", "vlm_lens", "vlm_attribution", "vlm_tokens"}
    assert expected | {"token_map", "vocab_health", "prune_text", "prune_image"} <= set(kinds)


def test_reagent_sliders_start_at_the_engine_defaults() -> None:
    import gradio as gr

    from explorer.analysis.attribution.reagent import ReagentParams
    from explorer.config import Settings
    from explorer.ui import attribution_tab
    from explorer.ui.common import UIContext

    with gr.Blocks() as demo:
        attribution_tab.build(UIContext(settings=Settings.from_env()))
    sliders = {c.label: c.value for c in demo.blocks.values() if isinstance(c, gr.Slider)}
    defaults = ReagentParams()
    assert sliders["Replacing ratio r"] == defaults.replacing_ratio
    assert sliders["Stop when target in top-k"] == defaults.stop_top_k
    assert sliders["Probes"] == defaults.num_probes and sliders["Max steps"] == defaults.max_steps
    dtypes = [c for c in demo.blocks.values() if isinstance(c, gr.Dropdown) and "dtype" in str(c.label)]
    assert len(dtypes) == 1


def test_pruning_tab_offers_the_dtype() -> None:
    import gradio as gr

    from explorer.config import Settings
    from explorer.ui import pruning_tab
    from explorer.ui.common import UIContext

    with gr.Blocks() as demo:
        pruning_tab.build(UIContext(settings=Settings.from_env()))
    labels = [str(c.label) for c in demo.blocks.values() if isinstance(c, gr.Dropdown)]
    assert any("dtype" in label for label in labels)


def test_progress_fn_is_defined_once() -> None:
    definition = re.compile(r"^ProgressFn\s*[:=]", re.MULTILINE)
    where = [str(p.relative_to(EXPLORER)) for p in EXPLORER.rglob("*.py") if definition.search(p.read_text())]
    assert where == ["progress.py"]


@pytest.mark.parametrize(
    "module",
    ["atlas_map", "atlas_vocab", "atlas_microscope", "vlm_eval_tab", "vlm_prune_section"],
)
def test_model_running_tabs_offer_the_dtype_and_pass_it_on(module: str) -> None:
    """Each model-running tab shows the weights' dtype and feeds it to the analysis it runs."""
    import importlib

    import gradio as gr

    from explorer.config import Settings
    from explorer.ui.common import UIContext

    with gr.Blocks() as demo:
        importlib.import_module(f"explorer.ui.{module}").build(UIContext(settings=Settings.from_env()))
    dtypes = [c for c in demo.blocks.values() if isinstance(c, gr.Dropdown) and "dtype" in str(c.label)]
    assert dtypes
    fed = {id(c) for fn in demo.fns.values() for c in fn.inputs}
    assert all(id(c) in fed for c in dtypes)
