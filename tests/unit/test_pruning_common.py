"""Text and image pruning share one strategy protocol, one validator, one ratio list, one row type.

Checked here: both registries are `StrategyRegistry`s and every strategy declares a known
scoring cost; a strategy registered in a fresh registry goes through name resolution, option
parsing and output checks with no other code; the CLI's help, the CLI's and the UI's default
ratios come from the registries and the one default list; the sweeps never branch on a name.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from explorer.analysis.pruning import common, image, params, text
from explorer.analysis.pruning.common import (
    DEFAULT_KEEP_RATIOS,
    PruningRow,
    StrategyRegistry,
    resolve_keep_ratios,
    rows_from_table,
    rows_table,
)
from explorer.errors import InputError

PRUNING = Path(common.__file__).resolve().parent


def test_both_modalities_use_the_one_protocol_and_validators() -> None:
    for registry in (text.TEXT_STRATEGIES, image.IMAGE_STRATEGIES):
        assert isinstance(registry, StrategyRegistry)
        assert all(s.scoring in registry.scoring_costs and s.deviation for s in registry.values())
    # the engines take their Params: ratios are resolved and checked by the one shared `of` / `check_sweep`
    assert params.resolve_keep_ratios is text.resolve_keep_ratios is resolve_keep_ratios
    assert params.PruneTextParams.of.__func__ is params.PruneImageParams.of.__func__  # type: ignore[attr-defined]
    assert params.PruneTextParams.check_sweep is params.PruneImageParams.check_sweep
    assert text.keep_count is image.keep_count is common.keep_count
    assert text.PruningRow is image.PruningRow is PruningRow


def test_a_new_strategy_is_one_registration() -> None:
    registry: StrategyRegistry[int] = StrategyRegistry("test", ("none", "probe"))

    @registry.register("first", deviation="keeps the first items", scoring="none")
    def first(n: int, keep: int, seed: int, option: str | None) -> np.ndarray:
        return np.arange(keep)

    @registry.register(
        "stride", deviation="every k-th", scoring="probe", options=lambda: ["2", "3"], default_option="2"
    )
    def stride(n: int, keep: int, seed: int, option: str | None) -> np.ndarray:
        return np.arange(keep) * int(option or 1)

    assert registry.resolve("all") == ["first", "stride:2"]
    assert registry.resolve(["stride:3", "all", "first"]) == ["stride:3", "first", "stride:2"]
    assert registry.selectable_names() == ["first", "stride:2", "stride:3"]
    assert registry.select("stride:3", 20, 4, 0, 20).tolist() == [0, 3, 6, 9]
    with pytest.raises(InputError, match="unknown pruning strategy 'nope'"):
        registry.resolve(["nope"])
    with pytest.raises(InputError, match="takes no option"):  # the registry's default option name
        registry.parse("first:2")
    with pytest.raises(InputError, match="unknown option '5'"):
        registry.parse("stride:5")
    with pytest.raises(InputError, match="keep count"):
        registry.select("first", 20, 0, 0, 20)
    with pytest.raises(ValueError, match="twice"):
        registry.register("first", deviation="again", scoring="none")(first)
    with pytest.raises(ValueError, match="scoring"):
        registry.register("x", deviation="?", scoring="everything")

    @registry.register("broken", deviation="returns duplicates", scoring="none")
    def broken(n: int, keep: int, seed: int, option: str | None) -> np.ndarray:
        return np.zeros(keep, dtype=np.int64)

    with pytest.raises(RuntimeError, match="broken"):
        registry.select("broken", 20, 3, 0, 20)


def test_keep_ratios_are_validated_once_the_same_way() -> None:
    assert resolve_keep_ratios([0.5, 1, 0.5, 0.25]) == [1.0, 0.5, 0.25]
    for bad in ([0.0], [1.5], [float("nan")], ["half"], [True], []):
        with pytest.raises(InputError):
            resolve_keep_ratios(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="fraction of patches"):
        resolve_keep_ratios([2.0], "patches")


def test_rows_round_trip_through_one_table_layout() -> None:
    rows = [
        PruningRow("a", 0.5, 2, 0, [0, 3], {"m": 0.25, "n": None}, 1.0, 0.5, continuation="x", top_token="y"),
        PruningRow("b", 1.0, 4, 1, [0, 1, 2, 3], {"m": 1.0, "n": 2.0}, 2.0, 1.0, continuation_ids=[5, 6]),
    ]
    extra = ("continuation", "continuation_ids", "top_token")
    assert rows_from_table(rows_table(rows, ("m", "n"), extra), ("m", "n"), extra) == rows
    assert list(rows[0].to_dict(("time_ratio",))) == [
        "strategy", "keep_ratio", "keep_count", "layer", "kept", "fidelity", "seconds", "time_ratio",
        "flops_ratio", "scoring_seconds", "scoring_flops_ratio",
    ]  # fmt: skip


def test_front_ends_take_names_and_ratios_from_the_registries() -> None:
    import argparse

    from explorer.commands import prune as prune_command

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    help_text = " ".join(prune_command.add_parser(sub).format_help().split())
    for name in [*text.TEXT_STRATEGIES, *image.IMAGE_STRATEGIES]:
        assert re.search(rf"\b{name}\b", help_text), name
    assert " ".join(str(r) for r in DEFAULT_KEEP_RATIOS) in help_text

    from explorer.ui.pruning_tab import DEFAULT_RATIOS, parse_ratios

    assert tuple(parse_ratios(DEFAULT_RATIOS)) == DEFAULT_KEEP_RATIOS


def test_the_sweeps_never_branch_on_a_strategy_name() -> None:
    chain = re.compile(r"""\.name\s*==\s*["']|strategy\s*==\s*["']|name\s*==\s*["'](random|fastv|uniform)""")
    offenders = [
        f"{path.relative_to(PRUNING)}:{i}"
        for path in PRUNING.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if chain.search(line)
    ]
    assert not offenders, offenders
