"""Visual-token pruning inside a VLM, judged by answers: strategies, the pruned batch runner, the
sweep, its store round trip, figures and CLI errors, on tiny models built in code (seconds)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from conftest import bert_tokenizer, make_tiny_lm, make_tiny_projector
from test_vlm import _tiny_vision

from explorer.analysis.pruning.visual import (
    NOT_IMPLEMENTED,
    VISUAL_STRATEGIES,
    VisualPlan,
    VisualSignals,
    plan_for,
    resolve_strategies,
)
from explorer.backends.vlm import (
    MODALITY_IMAGE,
    MODALITY_TEXT,
    VisionLanguageModel,
    VLMInputs,
    generate_batch,
    projector_vlm,
)
from explorer.errors import InputError
from explorer.vlm import metrics as m
from explorer.vlm.eval_sets import load_eval_set
from explorer.vlm.prune_eval import PruneEvalParams, VLMPruneResult, answer_batch, collect_signals, prune_eval

STRATEGIES = list(VISUAL_STRATEGIES)
V, GRID, LAYERS, D = 16, (4, 4), 6, 8


def _signals(peak: int | None = None, seed: int = 0) -> VisualSignals:
    """Random signals over V visual tokens; with `peak`, that token tops every score and is the
    only non-zero visual token (so diversity-based strategies also start from it)."""
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(V, D, generator=g)
    received = torch.rand(LAYERS, V, generator=g)
    instruction = torch.rand(LAYERS, V, generator=g)
    transition = torch.rand(LAYERS, V, generator=g)
    cls = torch.rand(V, generator=g)
    if peak is not None:
        embeds = torch.zeros(V, D)
        embeds[peak] = 1.0
        for t in (received, instruction, transition):
            t[:, peak] = 10.0
        cls[peak] = 10.0
    return VisualSignals(embeds, GRID, received, instruction, transition, cls)


# ---- strategies ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", STRATEGIES)
def test_keeping_every_token_is_the_identity_plan(name: str) -> None:
    plan = plan_for(name, _signals(), V)
    assert plan.is_identity(V) and plan.kept.tolist() == list(range(V))


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("keep", [1, 5, V - 1])
def test_every_strategy_keeps_exactly_the_count_in_a_valid_plan(name: str, keep: int) -> None:
    plan = plan_for(name, _signals(seed=keep), keep, seed=3)
    assert len(plan.kept) == keep
    assert VISUAL_STRATEGIES.select(name, _signals(seed=keep), keep, 3, V).tolist() == plan.kept.tolist()
    plan.validate(V, LAYERS, name)  # sorted, nested, cuts inside the LM
    info = VISUAL_STRATEGIES[name]
    assert info.deviation and info.description and info.label  # paper and deviations are labelled
    if not info.inside_model:
        assert not plan.stages or name == "todre"


@pytest.mark.parametrize("name", [n for n in STRATEGIES if n not in ("random", "uniform")])
def test_planted_signal_token_is_kept_at_one_token(name: str) -> None:
    assert 11 in plan_for(name, _signals(peak=11), 1).kept


def test_fastv_cuts_after_layer_two_and_transprune_is_progressive() -> None:
    fastv = plan_for("fastv", _signals(), 4)
    assert len(fastv.before) == V and [b for b, _ in fastv.stages] == [2]
    tp = plan_for("transprune", _signals(), 4)
    (b1, s1), (b2, s2) = tp.stages
    assert b1 < b2 and len(s1) > len(s2) == 4 and set(s2) <= set(s1)
    todre = plan_for("todre", _signals(), 4)
    assert len(todre.before) == 4 and todre.final.size == 0  # stage 2 drops every visual token


def test_unknown_and_unimplemented_strategies_are_clear_errors() -> None:
    with pytest.raises(InputError, match="unknown pruning strategy 'fastw'"):
        resolve_strategies("fastw")
    with pytest.raises(InputError, match="MustDrop"):
        resolve_strategies("mustdrop")
    assert "mustdrop" in NOT_IMPLEMENTED
    assert resolve_strategies("fastv,random") == ["fastv", "random"]
    assert resolve_strategies("all") == STRATEGIES


# ---- a fake VLM whose answer depends on one known visual token --------------------------------
def _planted_vlm() -> VisionLanguageModel:
    """A 3-block Llama where only block 0's attention does anything: queries and keys are zero
    (uniform causal attention), every embedding is zero, so the last position's residual is the
    value of the one non-zero visual token scaled by 1/n, which the final RMSNorm undoes. The
    first answer token is a function of that token alone; without it every logit is 0."""
    import transformers as tf

    from explorer.backends.language import wrap_model

    tok = bert_tokenizer()
    config = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=16, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(5)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            if i > 0:
                layer.self_attn.o_proj.weight.zero_()
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    lm = wrap_model(model, tok, model_id="planted")
    return VisionLanguageModel("planted", lm, "x", lambda p, i: None, 0, lambda q, i: q, V)  # type: ignore[arg-type,return-value]


def _planted_inputs(token: int, n_before: int = 3, n_after: int = 4) -> VLMInputs:
    visual = torch.zeros(V, 32)
    visual[token] = torch.randn(32, generator=torch.Generator().manual_seed(1)) * 3
    embeds = torch.cat([torch.zeros(n_before, 32), visual, torch.zeros(n_after, 32)])
    modality = [MODALITY_TEXT] * n_before + [MODALITY_IMAGE] * V + [MODALITY_TEXT] * n_after
    ids = torch.zeros(len(modality), dtype=torch.long)
    return VLMInputs(embeds, ids, modality, GRID, None)


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_strategy_that_keeps_the_planted_token_keeps_the_answer(name: str) -> None:
    vlm = _planted_vlm()
    inputs = _planted_inputs(11)
    full = answer_batch(vlm, [(inputs, VisualPlan(np.arange(V)))], 3).ids[0]
    plan = plan_for(name, _signals(peak=11), 2, seed=0)
    pruned = answer_batch(vlm, [(inputs, plan)], 3).ids[0]
    if 11 in plan.before:
        assert pruned[0] == full[0]
    else:  # random / uniform may drop it: then the answer must change (the planted token matters)
        assert pruned[0] != full[0]
    dropped = answer_batch(vlm, [(inputs, VisualPlan(np.array([0, 1])))], 3).ids[0]
    assert dropped[0] != full[0]


# ---- the batch runner on a tiny random VLM ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm() -> Any:
    lm = make_tiny_lm("llama")
    return projector_vlm(lm, _tiny_vision(), make_tiny_projector(lm), model_id="tiny-test-vlm")


def _inputs(vlm: Any, questions: list[str]) -> list[VLMInputs]:
    from test_vlm import _image

    return [vlm.prepare(q, _image(i)) for i, q in enumerate(questions)]


def test_pruning_nothing_changes_nothing(tiny_vlm: Any) -> None:
    """Identity plans, and in-LM cuts that keep every token, answer like plain batched generation."""
    batch = _inputs(tiny_vlm, ["What is it?", "Is there a red circle in it?", "Colour?"])
    n = tiny_vlm.n_visual_tokens
    plain = generate_batch(tiny_vlm, batch, 5)
    identity = answer_batch(tiny_vlm, [(b, VisualPlan(np.arange(n))) for b in batch], 5)
    full_cut = VisualPlan(np.arange(n), ((1, np.arange(n)), (2, np.arange(n))))
    cut = answer_batch(tiny_vlm, [(b, full_cut) for b in batch], 5)
    assert identity.ids == plain == cut.ids
    assert identity.flops == cut.flops


def test_batched_cuts_answer_like_one_row_at_a_time(tiny_vlm: Any) -> None:
    batch = _inputs(tiny_vlm, ["What is it?", "Is there a blue star in the picture?"])
    plan = VisualPlan(np.array([0, 2, 3]), ((1, np.array([0, 3])), (2, np.array([3]))))
    together = answer_batch(tiny_vlm, [(b, plan) for b in batch], 4).ids
    alone = [answer_batch(tiny_vlm, [(b, plan)], 4).ids[0] for b in batch]
    assert together == alone


def test_a_progressive_cut_through_all_tokens_equals_the_single_cut(tiny_vlm: Any) -> None:
    (inputs,) = _inputs(tiny_vlm, ["What is it?"])
    n = tiny_vlm.n_visual_tokens
    single = VisualPlan(np.arange(n), ((2, np.array([1, 2])),))
    staged = VisualPlan(np.arange(n), ((1, np.arange(n)), (2, np.array([1, 2]))))
    a = answer_batch(tiny_vlm, [(inputs, single)], 4)
    b = answer_batch(tiny_vlm, [(inputs, staged)], 4)
    assert a.ids == b.ids and a.flops == b.flops
    fewer = answer_batch(tiny_vlm, [(inputs, VisualPlan(np.array([1, 2])))], 4)
    assert (
        fewer.flops[0] < a.flops[0] < answer_batch(tiny_vlm, [(inputs, VisualPlan(np.arange(n)))], 4).flops[0]
    )


def test_signals_have_one_row_per_block_and_token(tiny_vlm: Any) -> None:
    (inputs,) = _inputs(tiny_vlm, ["Is there a red circle?"])
    signals, seconds = collect_signals(tiny_vlm, inputs)
    n = tiny_vlm.n_visual_tokens
    for t in (signals.received, signals.instruction, signals.transition):
        assert t.shape == (tiny_vlm.n_layers, n) and torch.isfinite(t).all()
    assert signals.cls_attention is not None and signals.cls_attention.shape == (n,)
    assert float(signals.cls_attention.sum()) <= 1.0 + 1e-5 and seconds >= 0  # a share of [CLS]'s attention


# ---- the sweep, store, figures, CLI ------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tiny_vlm: Any) -> VLMPruneResult:
    samples = load_eval_set("pope", 2)
    params = PruneEvalParams(n_scenes=2, strategies=("all",), keep_ratios=(1.0, 0.5, 0.25), n_boot=100)
    return prune_eval(tiny_vlm, samples, params)


def test_sweep_rows_metrics_and_costs(sweep: VLMPruneResult) -> None:
    n_strategies = len(STRATEGIES)
    assert len(sweep.costs) == n_strategies * 3
    for c in sweep.costs:
        if c["keep_ratio"] == 1.0:
            assert c["flops_ratio"] == 1.0 and c["kept"] == sweep.n_visual
        else:
            assert c["flops_ratio"] < 1.0 and c["kept"] < sweep.n_visual and c["time_ratio"] > 0
    curves = sweep.curve()
    assert set(curves) == set(STRATEGIES)
    for points in curves.values():
        assert [p["keep_ratio"] for p in points] == [0.25, 0.5, 1.0]
        assert all(p["low"] <= p["value"] <= p["high"] for p in points)
    for name in STRATEGIES:  # 100% is the unpruned model: agreement 1
        assert sweep.metric(name, 1.0, "agreement", "rate")["value"] == 1.0  # type: ignore[index]
        assert sweep.metric(name, 1.0, "pope_random", "f1") is not None
    vtc = next(c for c in sweep.costs if c["strategy"] == "vtc_cls" and c["keep_ratio"] == 0.5)
    assert vtc["scoring_seconds"] > 0  # the encoder pass with attention maps is charged


def test_sweep_reopens_from_the_store(sweep: VLMPruneResult, tmp_store: Any) -> None:
    run_id = tmp_store.save(
        sweep, model_id="tiny-test-vlm", weight_hash="x", prompt="pope", params=sweep.params, duration_s=1.0
    )
    again = tmp_store.load(run_id)
    assert isinstance(again, VLMPruneResult)
    assert again.to_dict()["retention"] == sweep.to_dict()["retention"]
    assert again.costs == sweep.costs and again.strategies == sweep.strategies


def test_retention_figure_has_a_line_and_band_per_strategy(sweep: VLMPruneResult) -> None:
    from explorer.plots import figure_spec, figures_for
    from explorer.plots.paper import OKABE_ITO

    assert [s.name for s in figures_for(sweep)] == ["retention", "agreement", "prefill_cost"]
    fig = figure_spec(sweep, "retention").build(sweep)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(lines) == len(bands) == len(STRATEGIES)
    assert [t.line.color for t in lines] == OKABE_ITO[: len(lines)]
    assert len({t.line.dash for t in lines}) > 1
    assert figure_spec(sweep, "retention").data(sweep).num_rows == len(STRATEGIES) * 3


def test_bad_input_is_refused_before_any_work() -> None:
    for bad in (
        dict(keep_ratios=(0.0,)),
        dict(keep_ratios=(1.5,)),
        dict(strategies=("nope",)),
        dict(n_scenes=0),
        dict(batch_size=0),
    ):
        with pytest.raises(InputError):
            PruneEvalParams(**bad).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep", "0,0.5"], "keep ratio"),
        (["--keep", "half"], "--keep"),
        (["--strategy", "fastw"], "unknown pruning strategy"),
        (["--strategy", "mustdrop"], "MustDrop"),
        (["--set", "nosuchset"], "evaluation set"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    from explorer.cli import main

    rc = main(["--db", str(tmp_path / "x.duckdb"), "vlm-prune", "--n", "2", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_vectorised_bootstrap_equals_the_per_resample_loop() -> None:
    rng = np.random.default_rng(3)
    for n in (1, 7, 60):
        t, s, c = rng.random(n) < 0.5, rng.random(n) < 0.6, rng.random(n) < 0.3

        def pope(idx: np.ndarray, k: str, t: np.ndarray = t, s: np.ndarray = s) -> float:
            return m.pope_metrics(t[idx], s[idx])[k]

        for name, e in m.pope_estimates(t, s, n_boot=200, seed=4).items():
            slow = m.estimate(lambda idx, k=name: pope(idx, k), n, n_boot=200, seed=4)
            assert (slow.value, slow.low, slow.high) == (e.value, e.low, e.high)
        values = c.astype(float)
        a = m.accuracy_estimate(c, n_boot=200, seed=1)
        b = m.estimate(lambda idx, v=values: float(v[idx].mean()), n, n_boot=200, seed=1)
        assert (a.value, a.low, a.high) == (b.value, b.low, b.high)
    assert json.dumps(m.accuracy_estimate(np.array([]), n_boot=100).to_dict()).count("NaN") == 3


def test_ui_section_builds_and_bad_input_is_a_toast(settings: Any, sweep: VLMPruneResult) -> None:
    import gradio as gr

    from explorer.ui import vlm_prune_section
    from explorer.ui.app import build_demo

    demo = build_demo(settings)
    fns = {f.api_name: f.fn for f in demo.fns.values()}
    assert "vlm_prune" in fns
    for keep, message in (("0,2", "keep ratio"), ("half", "keep ratios")):
        with pytest.raises(gr.Error, match=message):
            fns["vlm_prune"]("pope", 1, "tiny-vlm", ["fastv"], keep, 0)
    with pytest.raises(gr.Error, match="at least one strategy"):
        fns["vlm_prune"]("pope", 1, "tiny-vlm", [], "1", 0)
    text = vlm_prune_section.explain()
    assert all(VISUAL_STRATEGIES[n].label in text for n in STRATEGIES) and "MustDrop" in text
    rows = vlm_prune_section.cost_rows(sweep)
    assert len(rows) == len(sweep.costs) and rows[0][5] == 1.0
