"""VISTA steering, batched VLM generation and `vlm-eval` on a tiny VLM built in code."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_vlm import _image, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

from explorer.backends.vlm import capture_vlm, generate, generate_batch, last_token_residuals
from explorer.errors import InputError
from explorer.vlm.vista import VistaParams, steer, vista_generate_batch, visual_steering_vectors

QUESTIONS = ("What is this?", "Describe the image in detail please.", "Is there a red circle?")


def _batch(vlm: Any) -> list[Any]:
    return [vlm.prepare(q, _image(i)) for i, q in enumerate(QUESTIONS)]


def test_batched_generation_equals_one_by_one(tiny_vlm: Any) -> None:  # noqa: F811
    batch = _batch(tiny_vlm)
    together = generate_batch(tiny_vlm, batch, 5)
    alone = [generate(tiny_vlm, b, 5) for b in batch]
    assert together == alone


def test_last_token_residuals_match_a_traced_pass(tiny_vlm: Any) -> None:  # noqa: F811
    batch = _batch(tiny_vlm)
    got = last_token_residuals(tiny_vlm, batch)
    assert got.shape == (3, tiny_vlm.n_layers + 1, tiny_vlm.lm.d_model)
    for row, b in enumerate(batch):
        trace, _ = capture_vlm(tiny_vlm, b)
        torch.testing.assert_close(got[row], trace.residual[:, -1].float(), atol=1e-4, rtol=1e-4)


def test_vsv_is_the_with_minus_without_image_difference(tiny_vlm: Any) -> None:  # noqa: F811
    q = QUESTIONS[0]
    with_image = capture_vlm(tiny_vlm, tiny_vlm.prepare(q, _image()))[0].residual[:, -1]
    without = capture_vlm(tiny_vlm, tiny_vlm.prepare(q, None))[0].residual[:, -1]
    vsv = visual_steering_vectors(tiny_vlm, [tiny_vlm.prepare(q, _image())], [q])[0]
    torch.testing.assert_close(vsv, (with_image - without).float(), atol=1e-4, rtol=1e-4)
    assert vsv[1:].norm() > 0


def _residuals_with_edit(vlm: Any, inputs: Any, layer: int, edit: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual at `layer`, logits) of one forward pass with `edit` on that layer."""
    lm = vlm.lm
    with lm.residual_edits({layer: edit} if edit else {}), lm.residual_recorder([layer]) as rec:
        out = lm.forward(inputs_embeds=inputs.inputs_embeds.unsqueeze(0))
        return rec[layer].float().clone(), out.logits[0, -1].float()


@pytest.mark.parametrize("form", ["add", "norm"])
def test_lambda_zero_changes_nothing(tiny_vlm: Any, form: str) -> None:  # noqa: F811
    inputs = tiny_vlm.prepare(QUESTIONS[1], _image())
    v = torch.randn(1, tiny_vlm.lm.d_model)
    plain_h, plain_logits = _residuals_with_edit(tiny_vlm, inputs, 2, None)
    h, logits = _residuals_with_edit(tiny_vlm, inputs, 2, lambda x: steer(x, v, 0.0, form))
    torch.testing.assert_close(h, plain_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    steered = vista_generate_batch(
        tiny_vlm, _batch(tiny_vlm), list(QUESTIONS), 5, VistaParams(vsv=True, lam=0.0, vsv_form=form)
    )
    assert steered == generate_batch(tiny_vlm, _batch(tiny_vlm), 5)


def test_add_steering_moves_the_residual_by_exactly_lambda_vsv(tiny_vlm: Any) -> None:  # noqa: F811
    inputs = tiny_vlm.prepare(QUESTIONS[1], _image())
    v = torch.randn(1, tiny_vlm.lm.d_model)
    for layer in (1, tiny_vlm.n_layers):
        plain_h, plain_logits = _residuals_with_edit(tiny_vlm, inputs, layer, None)
        h, logits = _residuals_with_edit(tiny_vlm, inputs, layer, lambda x: steer(x, v, 0.5, "add"))
        torch.testing.assert_close(h - plain_h, 0.5 * v, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(logits, plain_logits)


def test_norm_steering_keeps_the_norm_and_follows_the_released_formula() -> None:
    h = torch.randn(2, 3, 8)
    v = torch.randn(2, 8)
    out = steer(h, v, 0.2, "norm")
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1))
    # by hand for one position
    x, vv = h[1, 2], v[1]
    boost = 1 + max(0.0, float(torch.nn.functional.cosine_similarity(x, -vv, dim=0)))
    want = x / x.norm() + 0.2 * boost * vv / vv.norm()
    torch.testing.assert_close(out[1, 2], want / want.norm() * x.norm())


def test_sla_on_the_last_layer_alone_is_the_plain_model(tiny_vlm: Any) -> None:  # noqa: F811
    n = tiny_vlm.n_layers
    params = VistaParams(sla=True, sla_alpha=0.7, sla_window=(n, n))
    assert vista_generate_batch(tiny_vlm, _batch(tiny_vlm), list(QUESTIONS), 4, params) == generate_batch(
        tiny_vlm, _batch(tiny_vlm), 4
    )


def test_sla_with_alpha_one_decodes_the_window_lens(tiny_vlm: Any) -> None:  # noqa: F811
    inputs = tiny_vlm.prepare(QUESTIONS[0], _image())
    trace, _ = capture_vlm(tiny_vlm, inputs)
    lens = tiny_vlm.lm.unembed(trace.residual[1:3, -1]).float().mean(0)  # window layers 1..2
    params = VistaParams(sla=True, sla_alpha=1.0, sla_window=(1, 2))
    first = vista_generate_batch(tiny_vlm, [inputs], [QUESTIONS[0]], 1, params)[0][0]
    assert first == int(lens.argmax())


def test_bad_vista_parameters_are_refused(tiny_vlm: Any) -> None:  # noqa: F811
    with pytest.raises(InputError, match="outside"):
        VistaParams(vsv=True, vsv_layers=(99,)).validate(tiny_vlm.n_layers)
    with pytest.raises(InputError, match="alpha"):
        VistaParams(sla=True, sla_alpha=2.0).validate()
    with pytest.raises(InputError, match="vsv_form"):
        VistaParams(vsv=True, vsv_form="mlp").validate()


# ---- vlm-eval -------------------------------------------------------------------------------------


def test_vlm_eval_on_two_scenes_stores_and_reopens(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    from explorer.api.vlm import vlm_eval
    from explorer.vlm.vlm_eval import VLMEvalResult

    steering = VistaParams(vsv=True, lam=0.1, sla=True)
    r = vlm_eval(tiny_vlm, "all", n_scenes=2, batch_size=4, n_boot=200, vista=steering, db=tmp_store)
    assert isinstance(r, VLMEvalResult) and r.run_id
    assert set(r.conditions) == {"plain", "vista"}
    n_samples = len({s["sample_id"] for s in r.samples})
    assert len(r.samples) == 2 * n_samples
    assert r.n_prompts < n_samples  # POPE's yes probes are asked once for the three splits
    for group in ("pope_random", "pope_popular", "pope_adversarial"):
        f1 = r.metric("plain", group, "f1")
        assert f1 is not None and f1["low"] <= f1["value"] <= f1["high"]
    chair = r.metric("vista", "caption", "chair_i")
    assert chair is not None and chair["n"] == 2
    assert r.latency_ratio is not None and r.latency_ratio > 0
    d = r.to_dict()
    assert d["metrics"]["plain"]["count"]["accuracy"]["n"] == 2
    again = tmp_store.load(r.run_id)
    assert again.to_dict() == d
    # the same request is served from the store
    assert (
        vlm_eval(tiny_vlm, "all", n_scenes=2, batch_size=4, n_boot=200, vista=steering, db=tmp_store).run_id
        == r.run_id
    )


def test_vlm_eval_metrics_recompute_from_the_stored_samples(tiny_vlm: Any) -> None:  # noqa: F811
    from explorer.api.vlm import vlm_eval
    from explorer.vlm import metrics as m

    r = vlm_eval(tiny_vlm, "pope", n_scenes=2, batch_size=3, n_boot=200, db=False)
    rows = [s for s in r.samples if s["qtype"] == "pope_random"]
    want = m.pope_metrics([s["truth_yes"] for s in rows], [m.pope_says_yes(s["said"]) for s in rows])
    assert r.metric("plain", "pope_random", "f1")["value"] == pytest.approx(want["f1"])  # type: ignore[index]
    assert r.latency_ratio is None


def test_vlm_eval_bad_input_stores_nothing(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    from explorer.api.vlm import vlm_eval

    for kwargs in (
        {"dataset": "coco"},
        {"dataset": "pope", "n_scenes": 0},
        {"dataset": "pope", "batch_size": 0},
    ):
        with pytest.raises(InputError):
            vlm_eval(tiny_vlm, db=tmp_store, **kwargs)
    assert tmp_store.list_runs() == []


def test_cli_vlm_eval_bad_input_exits_2(tmp_path: Any, capsys: Any) -> None:
    from explorer.cli import main

    db = tmp_path / "runs.duckdb"
    assert main(["--db", str(db), "vlm-eval", "--dataset", "coco"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown evaluation set" in err
    assert main(["--db", str(db), "vlm-eval", "--dataset", "pope", "--vsv-layers", "x-y"]) == 2
    assert "cannot read the layers" in capsys.readouterr().err
    assert main(["--db", str(db), "vlm-eval", "--dataset", "\udcff.jsonl"]) == 2
    assert "not valid text" in capsys.readouterr().err
    assert main(["--db", str(db), "vista", "--image", "x.png", "--prompt", "hi"]) == 2
    assert "switch VISTA on" in capsys.readouterr().err
    assert not db.exists() or __import__("explorer").list_runs(db=db) == []


# ---- figures and the tab --------------------------------------------------------------------------


def _stored_like_result() -> Any:
    from explorer.vlm.vlm_eval import VLMEvalResult

    metrics = [
        {"condition": c, "group": g, "metric": k, "value": v, "low": v - 0.1, "high": v + 0.05, "n": 10}
        for c, scale in (("plain", 1.0), ("vista", 0.5))
        for g, k, v in (
            ("pope_random", "f1", 0.6 * scale),
            ("caption", "chair_i", 0.4 * scale),
            ("count", "accuracy", 0.9),
        )
    ]
    samples = [{"sample_id": f"s{i}", "condition": "plain"} for i in range(10)]
    return VLMEvalResult("tiny", "all", {}, samples, metrics, {"plain": 2.0, "vista": 2.6}, 10)


def test_metric_figures_show_every_interval() -> None:
    from explorer.plots import figures_for
    from explorer.plots.vlm_eval import eval_hallucination, eval_metrics
    from explorer.ui.common import figure_problem, ui_figure

    r = _stored_like_result()
    assert r.latency_ratio == pytest.approx(1.3)
    fig = eval_metrics(r)
    assert [t.name for t in fig.data] == ["plain", "VISTA"]
    plain = fig.data[0]
    assert list(plain.x) == ["pope_random · f1", "caption · chair_i ↓", "count · accuracy"]
    assert list(plain.error_y.array) == pytest.approx([0.05, 0.05, 0.05])
    assert list(plain.error_y.arrayminus) == pytest.approx([0.1, 0.1, 0.1])
    hall = eval_hallucination(r)
    assert "count · accuracy" not in list(hall.data[0].x) and "×1.30" in hall.layout.title.text
    assert figure_problem(ui_figure("eval_metrics", eval_metrics, r)) is None
    assert [s.name for s in figures_for(r)] == ["eval_metrics", "eval_hallucination"]
    assert figures_for(r)[1].data(r).num_rows == 4


def test_tab_builds_and_reads_its_vista_controls(settings: Any) -> None:
    from explorer.ui.app import build_demo
    from explorer.ui.vlm_eval_tab import vista_from_controls

    config = build_demo(settings).get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {
        "VLM eval",
        "Evaluation set",
        "Without VISTA",
        "With VISTA",
        "Visual steering vector (VSV)",
    } <= labels
    names = {d.get("api_name") for d in config["dependencies"]}
    assert {"vlm_eval", "vista_compare"} <= names
    p = vista_from_controls(True, 0.2, "add", "2-4", True, 0.5, "3-5")
    assert (p.vsv_layers, p.sla_window, p.lam, p.vsv_form) == ((2, 3, 4), (3, 5), 0.2, "add")
    with pytest.raises(InputError):
        vista_from_controls(True, 0.2, "add", "two", False, 0.3, "")


def test_vlm_eval_on_a_user_file(tiny_vlm: Any, tmp_store: Any, tmp_path: Any) -> None:  # noqa: F811
    from explorer.api.vlm import vlm_eval

    _image(0).save(tmp_path / "a.png")
    (tmp_path / "rows.csv").write_text(
        "image,question,answer,type\na.png,What color is it?,red,colour\na.png,Is there a star?,no,\n"
    )
    r = vlm_eval(tiny_vlm, str(tmp_path / "rows.csv"), n_boot=200, db=tmp_store)
    assert {m["group"] for m in r.metrics} == {"colour", "user"}
    assert r.metric("plain", "user", "yes_ratio") is not None  # a yes/no row is read as a POPE probe
    info = tmp_store.info(r.run_id)
    assert info.prompt == str((tmp_path / "rows.csv").resolve()) and "file_sha256" in info.params
