"""Text pruning invariants on tiny random LMs; the strategy matrix comes from the registry."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm

from explorer.analysis.pruning.text import (
    DEFAULT_STRATEGIES,
    FIDELITY_KEYS,
    TEXT_STRATEGIES,
    FastVCut,
    TextPruningResult,
    keep_count,
    padded_fastv_batch,
    prune_text,
    reference_run,
    resolve_strategies,
    run_batch,
    strategy_names,
)
from explorer.errors import InputError
from explorer.store import Store

PROMPT = "the quick brown fox jumps over the lazy dog and then runs far away into the dark forest"
RATIOS = (1.0, 0.75, 0.5, 0.2, 0.05)
ARCHS = ("llama", "gpt2", "gpt_neox", "qwen2", "gemma")
_LMS: dict[str, Any] = {}


def lm_of(arch: str) -> Any:
    if arch not in _LMS:
        _LMS[arch] = make_tiny_lm(arch)
    return _LMS[arch]


def _ids(lm: Any) -> torch.Tensor:
    return lm.tokenizer(PROMPT, return_tensors="pt").input_ids[0]


def test_registry_names_resolve() -> None:
    names = strategy_names()
    assert "fastv" in names and "random" in names and "frugalprompt:input_x_gradient" in names
    assert resolve_strategies("all") == list(DEFAULT_STRATEGIES)
    assert resolve_strategies(["frugalprompt", "bottom_k:saliency"]) == [
        "frugalprompt:input_x_gradient",
        "bottom_k:saliency",
    ]
    assert set(TEXT_STRATEGIES) == {s.split(":")[0] for s in DEFAULT_STRATEGIES}


@pytest.mark.parametrize("arch", ARCHS)
def test_every_strategy_keeps_exact_counts_and_ratio_one_is_exact(arch: str) -> None:
    lm = lm_of(arch)
    n = int(_ids(lm).shape[0])
    result = prune_text(lm, PROMPT, strategies="all", keep_ratios=RATIOS, layer=1, continuation_tokens=0)
    assert len(result.rows) == len(DEFAULT_STRATEGIES) * len(RATIOS)
    for row in result.rows:
        assert row.keep_count == keep_count(row.keep_ratio, n) == len(row.kept)
        assert row.kept == sorted(set(row.kept)), "order preserved, no duplicates"
        assert row.kept[-1] == n - 1, "the last prompt token is always kept"
        assert set(row.fidelity) == set(FIDELITY_KEYS)
        if row.keep_ratio == 1.0:
            assert row.kept == list(range(n))
            assert row.fidelity["kl"] == 0.0
            assert row.fidelity["target_prob_after"] == row.fidelity["target_prob_before"]
            # the pruned pass costs what the unpruned one does; scoring is charged on top
            assert row.flops_ratio - row.scoring_flops_ratio == pytest.approx(1.0)
        else:
            assert 0.0 < row.flops_ratio - row.scoring_flops_ratio < 1.0
    assert keep_count(0.05, n) == max(1, round(0.05 * n))


@pytest.mark.parametrize("arch", ARCHS)
def test_fastv_full_keep_reproduces_unpruned_logits_and_continuation_exactly(arch: str) -> None:
    lm = lm_of(arch)
    ids = _ids(lm)
    n = int(ids.shape[0])
    ref = reference_run(lm, ids, 4, layer=1)
    run, _ = run_batch(lm, ids.unsqueeze(0), 4, FastVCut(torch.arange(n).unsqueeze(0), n, 1))
    assert torch.equal(run.last_logits[0], ref.last_logits)
    assert torch.equal(run.continuation[0], ref.continuation)
    plain = lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0, -1].float()
    torch.testing.assert_close(ref.last_logits, plain, rtol=0, atol=1e-5)


def _masked_fastv_logits(lm: Any, ids: torch.Tensor, kept: list[int], layer: int) -> torch.Tensor:
    """FastV by masking instead of cutting: blocks >= K see all positions but dropped keys are -inf."""
    n = int(ids.shape[0])
    dropped = torch.tensor([p not in kept for p in range(n)])

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        def mask_of(m: torch.Tensor) -> torch.Tensor:
            m = m.clone()
            m[..., dropped] = torch.finfo(m.dtype).min
            return m

        args = tuple(mask_of(a) if isinstance(a, torch.Tensor) and a.dim() == 4 else a for a in args)
        if isinstance(kwargs.get("attention_mask"), torch.Tensor):
            kwargs = {**kwargs, "attention_mask": mask_of(kwargs["attention_mask"])}
        return args, kwargs

    blocks = lm.blocks()
    handles = [blocks[i].register_forward_pre_hook(hook, with_kwargs=True) for i in range(layer, len(blocks))]
    try:
        with torch.inference_mode():
            return lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0, -1].float()
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ("llama", "gpt2", "gpt_neox"))
def test_fastv_cut_equals_masking_the_dropped_tokens(arch: str) -> None:
    lm = lm_of(arch)
    ids = _ids(lm)
    n = int(ids.shape[0])
    kept = [0, 2, 3, 7, 8, 11, n - 1]
    run, _ = run_batch(lm, ids.unsqueeze(0), 0, FastVCut(torch.tensor([kept]), n, 1))
    torch.testing.assert_close(run.last_logits[0], _masked_fastv_logits(lm, ids, kept, 1), rtol=0, atol=2e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_ratio_batch_equals_separate_runs(arch: str) -> None:
    """Pruned prompts left-padded next to a FastV row give the logits and greedy continuations
    of running each alone (fresh k-token prompt; FastV row by itself)."""
    lm = lm_of(arch)
    ids = _ids(lm)
    n = int(ids.shape[0])
    prompt_sets = [np.array([0, 3, 5, 8, n - 1]), np.array([1, 2, 4, 9, n - 1])]
    fastv_set = np.array([0, 2, 6, 7, n - 1])
    batch, mask, positions, cut = padded_fastv_batch(ids, prompt_sets, [fastv_set], 1)
    assert batch.shape == mask.shape == positions.shape == (3, n)
    merged, _ = run_batch(lm, batch, 4, cut, attention_mask=mask, position_ids=positions)
    for row, kept in enumerate(prompt_sets):
        alone, _ = run_batch(lm, ids[torch.as_tensor(kept)].unsqueeze(0), 4)
        torch.testing.assert_close(merged.last_logits[row], alone.last_logits[0], rtol=0, atol=1e-4)
        assert torch.equal(merged.continuation[row], alone.continuation[0])
    fastv_alone, _ = run_batch(
        lm, ids.unsqueeze(0), 4, FastVCut(torch.as_tensor(fastv_set).unsqueeze(0), n, 1)
    )
    torch.testing.assert_close(merged.last_logits[2], fastv_alone.last_logits[0], rtol=0, atol=1e-4)
    assert torch.equal(merged.continuation[2], fastv_alone.continuation[0])


def _stable(result: TextPruningResult) -> list[Any]:
    return [
        (r.strategy, r.keep_ratio, r.kept, r.continuation_ids, r.top_token)
        + tuple(r.fidelity[k] for k in FIDELITY_KEYS if k != "prefill_time_saved")
        for r in result.rows
    ]


def test_deterministic_under_a_seed_and_seed_changes_random() -> None:
    lm = lm_of("llama")
    kwargs: dict[str, Any] = dict(strategies=["random", "fastv", "self_information"], keep_ratios=(0.5, 0.3))
    a = prune_text(lm, PROMPT, seed=3, layer=1, continuation_tokens=3, **kwargs)
    b = prune_text(lm, PROMPT, seed=3, layer=1, continuation_tokens=3, **kwargs)
    c = prune_text(lm, PROMPT, seed=4, layer=1, continuation_tokens=3, **kwargs)
    assert _stable(a) == _stable(b)
    assert [r.kept for r in a.rows if r.strategy == "random"] != [
        r.kept for r in c.rows if r.strategy == "random"
    ]
    assert [r.kept for r in a.rows if r.strategy != "random"] == [
        r.kept for r in c.rows if r.strategy != "random"
    ]
    for row in a.rows:
        agreement, similarity = row.fidelity["continuation_agreement"], row.fidelity["semantic_similarity"]
        assert agreement is not None and 0.0 <= agreement <= 1.0
        assert similarity is not None and -1.0 <= similarity <= 1.0


def test_frugalprompt_and_bottom_k_split_the_same_scores() -> None:
    lm = lm_of("llama")
    n = int(_ids(lm).shape[0])
    result = prune_text(
        lm, PROMPT, strategies=["frugalprompt", "bottom_k"], keep_ratios=(0.5,), continuation_tokens=0
    )
    scores = np.abs(result.scores["attribution:input_x_gradient"])[: n - 1]
    top, bottom = (
        set(result.row(s, 0.5).kept) - {n - 1}
        for s in ("frugalprompt:input_x_gradient", "bottom_k:input_x_gradient")
    )
    assert min(scores[list(top)]) >= max(scores[list(bottom)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_ratios": (0.0,)}, "outside (0, 1]"),
        ({"keep_ratios": (1.5,)}, "outside (0, 1]"),
        ({"keep_ratios": (math.nan,)}, "outside (0, 1]"),
        ({"keep_ratios": ()}, "at least one keep ratio"),
        ({"layer": 0}, "out of range"),
        ({"layer": 3}, "out of range"),
        ({"strategies": ["nope"]}, "known: frugalprompt, self_information, bottom_k, random, fastv"),
        ({"strategies": ["frugalprompt:nope"]}, "unknown attribution method"),
        ({"strategies": ["random:x"]}, "takes no attribution method"),
        ({"continuation_tokens": 1000}, "continuation_tokens must be"),
        ({"target": "\u2603\u2603"}, "target"),
    ],
)
def test_bad_input_raises_input_error(kwargs: dict[str, Any], message: str) -> None:
    lm = lm_of("llama")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        prune_text(lm, PROMPT, **{"continuation_tokens": 0, **kwargs})


def test_api_stores_reopens_and_stores_nothing_on_bad_input(tmp_path: Path) -> None:
    from explorer import prune_text as api_prune_text
    from explorer.api import load_run
    from explorer.api.pruning import prune

    lm = lm_of("llama")
    store = Store.open(tmp_path / "runs.duckdb")
    try:
        with pytest.raises(InputError):
            api_prune_text(lm, PROMPT, keep_ratios=(2.0,), db=store)
        with pytest.raises(InputError):
            api_prune_text(lm, PROMPT, layer=99, db=store)
        assert store.list_runs() == []
        r = prune(
            prompt=PROMPT,
            model=lm,
            strategies="all",
            keep_ratios=(1.0, 0.5),
            layer=1,
            continuation_tokens=2,
            db=store,
        )
        assert r.run_id is not None
        again = api_prune_text(lm, PROMPT, keep_ratios=(1.0, 0.5), layer=1, continuation_tokens=2, db=store)
        assert again.run_id == r.run_id
        loaded = load_run(r.run_id, db=store)
        assert isinstance(loaded, TextPruningResult)
        assert json.dumps(loaded.to_dict(), sort_keys=True) == json.dumps(r.to_dict(), sort_keys=True)
        np.testing.assert_array_equal(loaded.scores["self_information"], r.scores["self_information"])
        with pytest.raises(InputError, match="exactly one"):
            prune(model=lm, db=store)
    finally:
        store.close()


def test_figures_build_with_data() -> None:
    from explorer.plots import figures_for

    lm = lm_of("gpt2")
    result = prune_text(lm, PROMPT, keep_ratios=(1.0, 0.5, 0.2), layer=1, continuation_tokens=2)
    specs = figures_for(result)
    assert [s.name for s in specs] == ["retention", "pruned_prompt", "outputs"]
    for spec in specs:
        fig = spec.build(result)
        assert fig.layout.title.text
        assert spec.data(result).num_rows > 0
    retention = specs[0].build(result, metric="continuation_agreement")
    assert len(retention.data) == len(DEFAULT_STRATEGIES)
    assert retention.layout.xaxis.title.text and retention.layout.yaxis.title.text


def test_cli_prints_rows_and_exits_2_on_bad_keep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from explorer.cli import main

    lm = lm_of("llama")
    model_dir = tmp_path / "tiny-llama"
    lm.hf_model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    db = str(tmp_path / "cli.duckdb")
    base = ["--db", db, "prune", "--prompt", PROMPT, "--model", str(model_dir), "--layer", "1"]
    code = main(
        base
        + [
            "--strategy",
            "random",
            "--strategy",
            "fastv",
            "--keep",
            "1.0",
            "0.25",
            "--continuation",
            "0",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "prune_text" and out["run_id"]
    assert [(r["strategy"], r["keep_ratio"]) for r in out["rows"]] == [
        ("random", 1.0), ("random", 0.25), ("fastv", 1.0), ("fastv", 0.25),
    ]  # fmt: skip
    for row in out["rows"]:
        assert {"strategy", "keep_ratio", "layer", "kept", "fidelity", "seconds", "flops_ratio"} <= set(row)
    assert main(base + ["--keep", "0"]) == 2
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["--db", db, "prune", "--prompt", PROMPT, "--model", str(model_dir), "--layer", "7"]) == 2


def test_fastv_offers_both_scoring_rules_each_truthfully_labelled() -> None:
    """`fastv` ranks by block K-1's attention averaged over all query rows (the paper's text),
    `fastv_last_row` by the last query row only (FastV's code); each label says which."""
    lm = lm_of("llama")
    layer = 2
    result = prune_text(
        lm,
        PROMPT,
        strategies=["fastv", "fastv_last_row"],
        keep_ratios=[0.5],
        layer=layer,
        continuation_tokens=0,
    )
    ids = torch.tensor(result.input_ids)
    attention = lm.capture(ids).attentions[layer - 1].mean(dim=0).double()  # (n, n) query x key
    n = len(ids)
    keep = keep_count(0.5, n)
    expected = {
        "fastv": attention.mean(dim=0).numpy(),  # mean over all query rows
        "fastv_last_row": attention[-1].numpy(),  # the last query row
    }
    for row in result.rows:
        order = np.argsort(-expected[row.strategy][: n - 1], kind="stable")[: keep - 1]
        assert row.kept == sorted([*order.tolist(), n - 1]), row.strategy
    np.testing.assert_allclose(result.scores["fastv_attention"], expected["fastv"], atol=1e-6)
    np.testing.assert_allclose(
        result.scores["fastv_last_row_attention"], expected["fastv_last_row"], atol=1e-6
    )
    assert "paper's text" in TEXT_STRATEGIES["fastv"].label
    assert "code" in TEXT_STRATEGIES["fastv_last_row"].label
    assert "As in FastV's code" not in TEXT_STRATEGIES["fastv"].deviation


def test_every_text_strategy_is_charged_exactly_what_it_runs() -> None:
    """Scoring is part of the cost: an attribution method's passes (integrated gradients runs many),
    one forward pass over the prompt for self-information, nothing for random and FastV."""
    lm = lm_of("llama")
    result = prune_text(
        lm,
        PROMPT,
        strategies=["frugalprompt:integrated_gradients", "self_information", "random", "fastv"],
        keep_ratios=[0.5],
        layer=2,
        continuation_tokens=0,
    )
    by_name = {row.strategy: row for row in result.rows}
    ig = by_name["frugalprompt:integrated_gradients"]
    assert ig.scoring_flops_ratio > 3 and ig.scoring_seconds > 0  # many forward + backward passes
    assert by_name["self_information"].scoring_flops_ratio == pytest.approx(1.0)
    assert by_name["self_information"].scoring_seconds > 0
    for name in ("random", "fastv"):
        assert by_name[name].scoring_flops_ratio == 0 and by_name[name].scoring_seconds == 0
    random_pass = by_name["random"].flops_ratio
    assert by_name["self_information"].flops_ratio == pytest.approx(random_pass + 1.0)
    for row in result.rows:
        assert row.seconds >= row.scoring_seconds and row.flops_ratio > row.scoring_flops_ratio
        assert {"scoring_seconds", "scoring_flops_ratio"} <= set(row.to_dict())


def _recorded_batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record the (rows, tokens) of every pruned-row prefill of the sweep."""
    from explorer.analysis.pruning.text import sweep

    shapes: list[tuple[int, int]] = []

    def recording(lm: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append((int(input_ids.shape[0]), int(input_ids.shape[1])))
        return run_batch(lm, input_ids, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_batch", recording)
    return shapes


def test_batches_within_the_memory_budget_equal_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from explorer.analysis.pruning.text.cost import row_bytes

    lm = lm_of("llama")
    n = int(_ids(lm).shape[0])
    kwargs: dict[str, Any] = dict(
        strategies=["random", "self_information", "fastv", "bottom_k:saliency"],
        keep_ratios=(0.5, 0.3),
        layer=1,
        continuation_tokens=3,
    )
    shapes = _recorded_batches(monkeypatch)
    one = prune_text(lm, PROMPT, **kwargs)
    assert len(shapes) == 2 and shapes[0][0] == 4  # one batch per ratio: every distinct row
    two_rows_mb = 2.5 * row_bytes(lm, n) / 2**20  # room for 2 rows of the padded (n-token) batch
    shapes.clear()
    split = prune_text(lm, PROMPT, batch_mb=two_rows_mb, **kwargs)
    assert [s[0] for s in shapes] == [2, 2, 2, 2] and any(
        "4 batches of at most 2 rows" in t for t in split.notes
    )
    shapes.clear()
    single = prune_text(lm, PROMPT, batch_mb=1e-9, **kwargs)  # below one row: one row at a time
    assert [s[0] for s in shapes] == [1] * 8
    for other in (split, single):
        for a, b in zip(_stable(one), _stable(other), strict=True):
            assert a[:5] == b[:5]  # strategy, ratio, kept, continuation ids, top token
            np.testing.assert_allclose(
                [x if x is not None else np.nan for x in a[5:]],
                [x if x is not None else np.nan for x in b[5:]],
                atol=1e-5,
            )
    with pytest.raises(InputError, match="^batch_mb must be > 0"):
        prune_text(lm, PROMPT, batch_mb=0, **kwargs)
