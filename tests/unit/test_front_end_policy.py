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
    ["atlas_map", "atlas_vocab", "atlas_microscope", "vlm_eval_tab", "vlm_prune_section", "sweeps_panel"],
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


def _bad_params() -> list[tuple[Any, str]]:
    from explorer.analysis.atlas.projection import ProjectionParams
    from explorer.analysis.attention import MAX_FLOW_POSITIONS, AttentionParams
    from explorer.analysis.attribution.faithfulness import FaithfulnessParams
    from explorer.analysis.attribution.gradients import OcclusionParams
    from explorer.analysis.logit_lens import LensParams
    from explorer.analysis.pruning.params import PruneTextParams
    from explorer.analysis.vlm_attribution import VLMAttributionParams
    from explorer.vlm.prune_eval import PruneEvalParams
    from explorer.vlm.tokens import TokenParams
    from explorer.vlm.vista import VistaParams
    from explorer.vlm.vlm_eval import EvalParams

    return [
        (AttentionParams(flow=True, flow_positions=()), "flow_positions"),
        (AttentionParams(flow=True, flow_positions=tuple(range(MAX_FLOW_POSITIONS + 1))), "flow_positions"),
        (FaithfulnessParams(n_samples=0), "n_samples"),
        (FaithfulnessParams(fraction=1.0), "fraction"),
        (OcclusionParams(window=0), "window"),
        (OcclusionParams(window=2.5), "window"),  # type: ignore[arg-type]
        (OcclusionParams(window=2, stride=3), "stride"),
        (LensParams(targets=("",)), "targets"),
        (VLMAttributionParams(target=" "), "target"),
        (VLMAttributionParams(keep_top_n=0), "keep_top_n"),
        (VLMAttributionParams(max_steps=0), "max_steps"),
        (VLMAttributionParams(batch_size=0), "batch_size"),
        (VLMAttributionParams(method="nope"), "method"),
        (TokenParams(dead_hidden_eps=-1.0), "dead_hidden_eps"),
        (VistaParams(lam=1000.0), "lam"),
        (VistaParams(sla_alpha=2.0), "sla_alpha"),
        (VistaParams(sla_window=(3, 2)), "sla_window"),
        (EvalParams(dataset=""), "dataset"),
        (PruneEvalParams(dataset=""), "dataset"),
        (ProjectionParams(method="tsne"), "method"),
        (PruneTextParams(keep_ratios=(0.0,)), "keep_ratios"),
    ]


def test_params_messages_start_with_the_parameter_name() -> None:
    """A Params' validation message names the parameter at fault first (the CLI turns it into the
    flag), never a CLI flag or a UI control."""
    for params, name in _bad_params():
        with pytest.raises(InputError) as err:
            params.validate()
        message = str(err.value)
        assert re.match(rf"{name}\b", message), (type(params).__name__, message)
        assert "--" not in message, message


def test_image_attribution_refusals_name_the_parameter() -> None:
    from explorer.api.attribution import attribute_image

    for kwargs, name in (({"contrast": "cat"}, "contrast"), ({"generate": 3}, "generate")):
        with pytest.raises(InputError) as err:
            attribute_image("tiny-vlm", "What is it?", None, **kwargs)
        assert str(err.value).startswith(f"{name}: ") and "--" not in str(err.value), str(err.value)
