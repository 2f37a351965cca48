"""Attribution on tiny random models: every registered method, invariants, store, CLI, plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from explorer.analysis.attribution import (
    ATTRIBUTION_METHODS,
    AttributionComparison,
    AttributionResult,
    GenerationAttributionResult,
    build_task,
    run_attribution,
)
from explorer.analysis.attribution.faithfulness import faithfulness, normalise_importance
from explorer.analysis.attribution.gradients import IGParams, integrated_gradients
from explorer.analysis.attribution.replacement import build_sampler
from explorer.analysis.attribution.task import context_embeddings, objective_embeds
from explorer.api.attribution import attribute, compare_attribution_runs
from explorer.backends.masked import load_masked_lm
from explorer.errors import InputError
from tests.conftest import MAX_TINY_PARAMS, bert_tokenizer

PROMPT = "the quick brown fox jumps over the lazy"
TARGET = "dog"
FAST: dict[str, Any] = {
    "num_probes": 4,
    "max_steps": 8,
    "replacement": "causal",
    "n_steps": 16,
    "soft_samples": 4,
}


def _params(method: str) -> dict[str, Any]:
    names = ATTRIBUTION_METHODS[method].param_names()
    return {k: v for k, v in FAST.items() if k in names}


@pytest.mark.parametrize("method", list(ATTRIBUTION_METHODS))
def test_every_method_one_finite_score_per_token_and_deterministic(tiny_llama: Any, method: str) -> None:
    params = _params(method)
    a = run_attribution(tiny_llama, PROMPT, TARGET, method=method, seed=3, params=params)
    validated = ATTRIBUTION_METHODS[method].make_params(params)  # the API passes the method's Params
    b = run_attribution(tiny_llama, PROMPT, TARGET, method=method, seed=3, params=validated)
    assert a.params == b.params
    assert len(a.scores) == len(a.tokens) == len(a.input_ids)
    assert np.all(np.isfinite(a.scores))
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-7)
    assert set(a.faithfulness) == {"soft_nc", "soft_ns", "comprehensiveness", "sufficiency"}
    assert a.faithfulness == b.faithfulness


def test_methods_run_on_every_tiny_architecture(tiny_lm: Any) -> None:
    for method in ("reagent", "input_x_gradient", "attention_rollout"):
        r = run_attribution(tiny_lm, PROMPT, TARGET, method=method, params=_params(method))
        assert np.all(np.isfinite(r.scores)) and len(r.scores) == len(r.tokens)


def test_integrated_gradients_completeness(tiny_llama: Any) -> None:
    task, *_ = build_task(tiny_llama, PROMPT, TARGET, None, 64)
    scores, extras, _ = integrated_gradients(tiny_llama, task, IGParams(n_steps=128, internal_batch_size=32))
    emb = context_embeddings(tiny_llama, task).unsqueeze(0)
    with torch.no_grad():
        f_x = float(objective_embeds(tiny_llama, task, emb)[0])
        f_0 = float(objective_embeds(tiny_llama, task, torch.zeros_like(emb))[0])
    assert float(scores.sum()) == pytest.approx(f_x - f_0, abs=0.02 * max(1.0, abs(f_x - f_0)))
    assert abs(extras["convergence_delta"]) < 0.02 * max(1.0, abs(f_x - f_0))


def test_model_weights_untouched(tiny_llama: Any) -> None:
    before = {k: v.clone() for k, v in tiny_llama.hf_model.state_dict().items()}
    flags = [p.requires_grad for p in tiny_llama.hf_model.parameters()]
    for method in ("integrated_gradients", "saliency", "reagent"):
        run_attribution(tiny_llama, PROMPT, TARGET, method=method, params=_params(method))
    assert flags == [p.requires_grad for p in tiny_llama.hf_model.parameters()]
    assert all(p.grad is None for p in tiny_llama.hf_model.parameters())
    for k, v in tiny_llama.hf_model.state_dict().items():
        assert torch.equal(v, before[k])


def test_reagent_scores_are_a_distribution_and_report_details(tiny_llama: Any) -> None:
    r = run_attribution(
        tiny_llama,
        PROMPT,
        TARGET,
        method="reagent",
        params={"num_probes": 4, "max_steps": 5, "replacement": "uniform"},
    )
    assert r.scores.min() >= 0 and r.scores.sum() == pytest.approx(1.0, abs=1e-5)
    assert r.extras["replacement"] == "uniform"
    assert 1 <= r.extras["steps"] <= 5


def test_replacement_never_proposes_the_original(tiny_llama: Any) -> None:
    task, *_ = build_task(tiny_llama, PROMPT, TARGET, None, 64)
    gen = torch.Generator().manual_seed(0)
    for kind in ("causal", "uniform"):
        sampler, _ = build_sampler(tiny_llama, task.context_ids, kind, None, 3)
        draws = sampler.sample(64, gen)
        assert draws.shape == (64, task.n_context)
        assert not (draws == task.context_ids.unsqueeze(0)).any()


def test_masked_lm_replacement_from_local_dir(tiny_llama: Any, tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    tok = bert_tokenizer()
    torch.manual_seed(0)
    mlm = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    assert sum(p.numel() for p in mlm.parameters()) < MAX_TINY_PARAMS
    mlm.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    load_masked_lm(str(tmp_path / "mlm"), tiny_llama.device)
    r = run_attribution(
        tiny_llama, PROMPT, TARGET, method="reagent",
        params={"num_probes": 4, "max_steps": 5, "replacement": "mlm", "mlm_model": str(tmp_path / "mlm")},
    )  # fmt: skip
    assert r.extras["replacement"] == f"mlm:{tmp_path / 'mlm'}"
    assert np.all(np.isfinite(r.scores))


def test_auto_replacement_falls_back_to_causal_offline(tiny_llama: Any) -> None:
    r = run_attribution(
        tiny_llama,
        PROMPT,
        TARGET,
        method="reagent",
        params={"num_probes": 2, "max_steps": 2, "mlm_model": "no-such-org/no-such-mlm"},
    )
    assert r.extras["replacement"].startswith("causal:")
    assert any("not available locally" in n for n in r.notes)


def test_contrast_and_multi_token_targets(tiny_llama: Any) -> None:
    r = run_attribution(tiny_llama, PROMPT, TARGET, method="input_x_gradient", contrast="cat")
    assert r.contrast is not None and r.contrast["token"] == "cat"
    multi = run_attribution(tiny_llama, PROMPT, "dog and cat", method="occlusion")
    assert len(multi.target["ids"]) == 3 and any("sum of their log-probabilities" in n for n in multi.notes)
    with pytest.raises(InputError, match=r"^contrast: .*contrastive"):  # the parameter, not a flag
        run_attribution(tiny_llama, PROMPT, TARGET, method="reagent", contrast="cat")


def test_faithfulness_is_finite_on_a_random_model_and_importance_is_min_max_normalised(
    tiny_llama: Any,
) -> None:
    """On a random model any attribution may score anything; that the true attribution scores best
    is checked on a planted signal (tests/unit/test_planted_signal.py: Soft-NC = Soft-NS = 1 for the
    true one-hot attribution, 0 for its complement)."""
    task, *_ = build_task(tiny_llama, PROMPT, TARGET, None, 64)
    occl = run_attribution(tiny_llama, PROMPT, TARGET, method="occlusion").scores
    good = faithfulness(tiny_llama, task, torch.from_numpy(occl))
    assert all(v is None or np.isfinite(v) for v in good.values())
    assert normalise_importance(torch.tensor([-1.0, 1.0, 3.0])).tolist() == pytest.approx([0.0, 0.25, 0.75])


def test_bad_input_is_rejected_and_nothing_stored(tiny_llama: Any, tmp_store: Any, settings: Any) -> None:
    with pytest.raises(InputError, match="unknown attribution method"):
        attribute(tiny_llama, PROMPT, TARGET, method="nope", db=tmp_store, settings=settings)
    with pytest.raises(InputError, match="not producible"):
        attribute(tiny_llama, PROMPT, "\u2603\u2603", method="saliency", db=tmp_store, settings=settings)
    with pytest.raises(InputError, match="unknown parameter"):
        attribute(
            tiny_llama, PROMPT, TARGET, method="saliency", db=tmp_store, settings=settings, num_probes=3
        )
    assert tmp_store.list_runs() == []


def test_all_methods_store_reopen_and_compare(tiny_llama: Any, tmp_store: Any, settings: Any) -> None:
    comp = attribute(tiny_llama, PROMPT, TARGET, method="all", db=tmp_store, settings=settings, **FAST)
    assert isinstance(comp, AttributionComparison)
    assert comp.methods == list(ATTRIBUTION_METHODS)
    out = comp.to_dict()
    assert isinstance(out, list) and all(
        set(o) >= {"run_id", "model", "method", "tokens", "target", "scores", "seconds", "faithfulness"}
        for o in out
    )
    json.dumps(out)
    again = attribute(tiny_llama, PROMPT, TARGET, method="all", db=tmp_store, settings=settings, **FAST)
    assert isinstance(again, AttributionComparison)
    assert [r.run_id for r in again.results] == [r.run_id for r in comp.results]
    reopened = tmp_store.load(comp.results[0].run_id)
    assert isinstance(reopened, AttributionResult)
    np.testing.assert_allclose(reopened.scores, comp.results[0].scores)
    assert reopened.faithfulness == pytest.approx(comp.results[0].faithfulness)
    assert compare_attribution_runs([str(r.run_id) for r in comp.results], db=tmp_store).best() == comp.best()
    assert set(comp.best()) == {"soft_nc", "soft_ns", "comprehensiveness", "sufficiency", "seconds"}


def test_generation_matrix(tiny_llama: Any, tmp_store: Any, settings: Any) -> None:
    g = attribute(tiny_llama, PROMPT, generate=3, method="input_x_gradient", db=tmp_store, settings=settings)
    assert isinstance(g, GenerationAttributionResult)
    s, t = g.matrix.shape
    p = len(g.prompt_tokens)
    assert t == p + s - 1
    for step in range(s):
        assert np.isfinite(g.matrix[step, : p + step]).all() and np.isnan(g.matrix[step, p + step :]).all()
    back = tmp_store.load(g.run_id)
    np.testing.assert_allclose(back.matrix, g.matrix)


def test_figures_and_data(tiny_llama: Any) -> None:
    from explorer.plots import figures_for

    comp = AttributionComparison(
        results=[run_attribution(tiny_llama, PROMPT, TARGET, method=m) for m in ("saliency", "occlusion")]
    )
    for obj in (comp, comp.results[0]):
        specs = figures_for(obj)
        assert specs
        for spec in specs:
            fig = spec.build(obj)
            if fig.data and fig.data[0].type == "table":  # a faithfulness table: header and cells
                assert fig.data[0].header.values and fig.data[0].cells.values
                assert spec.data(obj).num_rows > 0
                continue
            assert fig.data and fig.data[0].colorbar.title.text
            assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
            assert spec.data(obj).num_rows > 0


def test_cli_attribute(tiny_llama: Any, tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    from explorer.api import attribution as attribution_api
    from explorer.cli import main

    real = attribution_api.attribute
    monkeypatch.setattr(attribution_api, "attribute", lambda model, *a, **k: real(tiny_llama, *a, **k))
    db = str(tmp_path / "cli.duckdb")
    assert (
        main(
            [
                "attribute",
                "--db",
                db,
                "--prompt",
                PROMPT,
                "--target",
                TARGET,
                "--method",
                "saliency",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "saliency" and len(out["scores"]) == len(out["tokens"])
    assert set(out["faithfulness"]) == {"soft_nc", "soft_ns", "comprehensiveness", "sufficiency"}
    assert out["target"]["token"] == TARGET and isinstance(out["target"]["id"], int)
    assert main(["attribute", "--db", db, "--prompt", PROMPT, "--target", TARGET, "--method", "bogus"]) == 2
    capsys.readouterr()
    # the engine names the parameter (contrast: ...); the CLI shows its flag in its place, once
    args = ["attribute", "--db", db, "--prompt", PROMPT, "--target", TARGET, "--method", "reagent"]
    assert main([*args, "--contrast", "cat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("explorer attribute: error: --contrast: ") and err.count("contrast:") == 1, err


def test_reagent_rational_size_never_keeps_a_short_prompt_whole() -> None:
    from explorer.analysis.attribution.reagent import ReagentParams, rational_size

    assert rational_size(5, 5, 0.5) == 3  # the paper's n = 5 would keep all 5 tokens
    assert rational_size(20, 5, 0.5) == 5  # long prompts: the paper's n
    assert rational_size(1, 5, 0.5) == 1
    assert rational_size(5, 5, 1.0) == 5  # max_keep_ratio 1.0 restores the paper's rule
    with pytest.raises(InputError, match="max_keep_ratio"):
        ReagentParams(max_keep_ratio=0.0).validate()


def test_reagent_replaces_by_the_argmax_by_default_and_lists_its_deviations(tiny_llama: Any) -> None:
    """The paper takes the replacement model's argmax; drawing among top candidates is an option,
    listed among the deviations (JSON `deviations`)."""
    from explorer.analysis.attribution.reagent import DEVIATIONS, ReagentParams

    assert ReagentParams().candidates == 1
    r = run_attribution(tiny_llama, PROMPT, TARGET, method="reagent", params=_params("reagent"))
    assert r.params["candidates"] == 1
    out = r.to_dict()
    assert out["deviations"] == list(DEVIATIONS)
    assert any("argmax" in d and "candidates" in d for d in out["deviations"])
    other = run_attribution(tiny_llama, PROMPT, TARGET, method="occlusion").to_dict()
    assert "deviations" not in other


def _span_drops(lm: Any, task: Any, spans: list[tuple[int, int]]) -> np.ndarray:
    """f(E) - f(E with tokens a..b-1 zeroed) for each (a, b), computed directly."""
    emb = context_embeddings(lm, task)
    batch = [emb]
    for a, b in spans:
        occluded = emb.clone()
        occluded[a:b] = 0.0
        batch.append(occluded)
    with torch.no_grad():
        f = objective_embeds(lm, task, torch.stack(batch)).double().numpy()
    return f[0] - f[1:]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("window", "stride"), [(1, 1), (2, 2), (3, 2), (4, 1)])
def test_occlusion_sliding_window_is_the_mean_drop_of_the_covering_spans(
    tiny_llama: Any, window: int, stride: int
) -> None:
    from explorer.analysis.attribution.gradients import OcclusionParams, occlusion, occlusion_windows

    task = build_task(tiny_llama, PROMPT, TARGET, None, 512)[0]
    p = task.n_context
    scores, extras, notes = occlusion(tiny_llama, task, OcclusionParams(window=window, stride=stride))
    starts = list(range(0, occlusion_windows(p, window, stride) * stride, stride))
    spans = [(a, min(a + window, p)) for a in starts]  # Captum cuts the last span at the end
    assert spans[-1][1] == p and len(spans) == occlusion_windows(p, window, stride)
    drops = _span_drops(tiny_llama, task, spans)
    expected = np.array(
        [np.mean([d for (a, b), d in zip(spans, drops, strict=True) if a <= i < b]) for i in range(p)]
    )
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-4)
    if window == 1:  # the default: one token at a time, exactly the former feature ablation
        default, _, default_notes = occlusion(tiny_llama, task, OcclusionParams())
        assert torch.equal(scores, default) and extras == {} and notes == default_notes == []
        assert OcclusionParams(window=1, stride=1).to_json() == {"perturbations_per_eval": 8}
    else:
        assert extras["passes"] == len(spans) < p and f"spans of {window} tokens" in notes[0]


def test_occlusion_window_is_validated_with_its_name(
    tiny_llama: Any, tmp_store: Any, settings: Any, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    for kwargs, message in [
        ({"window": 0}, "window must be between 1 and 4096"),
        ({"window": 2, "stride": 3}, "stride must be between 1 and the window"),
        ({"stride": 0}, "stride must be between 1 and the window"),
        ({"window": 2.5}, "window must be a whole number"),
        ({"window": 50}, r"occlusion window \(50 tokens\) is longer than the context"),
    ]:
        with pytest.raises(InputError, match=message):
            attribute(
                tiny_llama, PROMPT, TARGET, method="occlusion", db=tmp_store, settings=settings, **kwargs
            )
    with pytest.raises(InputError, match="unknown parameter"):
        attribute(tiny_llama, PROMPT, TARGET, method="saliency", db=tmp_store, settings=settings, window=2)
    assert tmp_store.list_runs() == []
    r = attribute(
        tiny_llama, PROMPT, TARGET, method="occlusion", db=tmp_store, settings=settings, window=2, stride=2
    )
    assert r.params["window"] == 2 and any("spans of 2 tokens" in n for n in r.notes)
    back = tmp_store.load(str(r.run_id))
    np.testing.assert_allclose(back.scores, r.scores)
    default = attribute(tiny_llama, PROMPT, TARGET, method="occlusion", db=tmp_store, settings=settings)
    assert default.run_id != r.run_id and "window" not in default.params

    from explorer.api import attribution as attribution_api
    from explorer.cli import main

    real = attribution_api.attribute
    monkeypatch.setattr(attribution_api, "attribute", lambda model, *a, **k: real(tiny_llama, *a, **k))
    db = str(tmp_path / "cli.duckdb")
    base = ["attribute", "--db", db, "--prompt", PROMPT, "--target", TARGET]
    for argv, message in [
        (["--method", "occlusion", "--window", "0"], "window"),
        (["--method", "occlusion", "--window", "2", "--stride", "3"], "stride"),
        (["--method", "reagent", "--window", "2"], "--window applies to text occlusion"),
        (["--window", "2"], "--window applies to text occlusion"),
        (
            ["--method", "occlusion", "--stride", "2", "--image", "x.png"],
            "--stride applies to text occlusion",
        ),
    ]:
        assert main(base + argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)
    assert main([*base, "--method", "occlusion", "--window", "3", "--stride", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["window"] == 3 and out["params"]["stride"] == 2


def test_ui_handler_passes_the_occlusion_window(tiny_llama: Any, tmp_path: Path) -> None:
    """The Attribution tab's window / stride sliders reach occlusion (and its reference run)."""
    import gradio as gr

    from explorer.config import Settings
    from explorer.ui.attribution_tab import render_attribution as ui_run
    from explorer.ui.common import UIContext

    ctx = UIContext(Settings.from_env(db_path=str(tmp_path / "db.duckdb"), cache_dir=str(tmp_path)))
    reagent = ("causal", "", 0.3, 3, 5, 2, 2)
    comp, summary, *_ = ui_run(
        tiny_llama, PROMPT, TARGET, "occlusion", "", 0, *reagent, ctx=ctx, progress=gr.Progress(), window=2, stride=2
    )  # fmt: skip
    assert [r.params.get("window") for r in comp.results] == [2]
    comp, *_ = ui_run(
        tiny_llama, PROMPT, TARGET, "saliency", "", 0, *reagent, ctx=ctx, progress=gr.Progress(), window=3, stride=1
    )  # fmt: skip
    assert {r.method: r.params.get("window") for r in [*comp.results, *comp.references]} == {
        "saliency": None, "occlusion": 3,
    }  # fmt: skip
