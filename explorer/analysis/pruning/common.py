"""What text-token and image-patch pruning share: one strategy protocol, one validator of keep
ratios and layers, one default ratio list and one row type.

A strategy is a function `select(signals, keep, seed, option) -> kept` (sorted int64 indices,
exactly `keep` of them) registered by name in a `StrategyRegistry`, with what it departs from
its paper (`deviation`) and what its scoring runs (`scoring`, charged to its rows). Text
strategies read `TextSignals`, image strategies `PruningSignals`; the sweep never branches on a
strategy's name. `option` is the part after a colon (`frugalprompt:reagent` -> "reagent") for
strategies that declare options; None otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

from explorer.errors import InputError

# The one default sweep of keep ratios (CLI, UI, API and benchmarks), from 1.0 down.
DEFAULT_KEEP_RATIOS: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05)

SignalsT = TypeVar("SignalsT")
SelectFn = Callable[[SignalsT, int, int, "str | None"], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def resolve_keep_ratios(keep_ratios: Sequence[float] | float, unit: str = "tokens") -> list[float]:
    """Each ratio a number in (0, 1]; de-duplicated, sorted from 1.0 down."""
    values = [keep_ratios] if isinstance(keep_ratios, (int, float)) else list(keep_ratios)
    ratios: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"keep_ratios: keep ratio {value!r} is not a number")
        ratio = float(value)
        if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
            raise InputError(
                f"keep_ratios: keep ratio {ratio} is outside (0, 1]: give the fraction of {unit} to keep"
            )
        if ratio not in ratios:
            ratios.append(ratio)
    if not ratios:
        raise InputError("keep_ratios: give at least one keep ratio in (0, 1]")
    return sorted(ratios, reverse=True)


def parse_keep_ratios(text: str, flag: str = "keep ratios") -> list[float]:
    """ "1,0.5 0.25" -> [1.0, 0.5, 0.25] (commas or spaces); InputError naming `flag` otherwise.
    The values are checked by `resolve_keep_ratios`."""
    values = [v for v in str(text or "").replace(" ", ",").split(",") if v]
    try:
        return [float(v) for v in values]
    except ValueError:
        raise InputError(
            f"{flag}: give numbers in (0, 1] separated by commas, e.g. 1,0.5,0.25 (got {text!r})"
        ) from None


def validate_layer(layer: Any, low: int, high: int, meaning: str) -> int:
    """The pruning layer as an int in low..high; InputError naming the range and its `meaning`."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise InputError(f"layer: the pruning layer must be an integer; got {layer!r}")
    if not low <= int(layer) <= high:
        raise InputError(f"layer: pruning layer {layer} is out of range: {meaning}")
    return int(layer)


def validate_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer; got {seed!r}")
    return int(seed)


def keep_count(ratio: float, n: int) -> int:
    """Items kept at `ratio` of `n`: max(1, round(ratio * n)) (Python rounding), at most n."""
    return max(1, min(n, round(ratio * n)))


# ---------------------------------------------------------------------------------------------
# The strategy protocol
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruningStrategy(Generic[SignalsT]):
    """A registered pruning strategy.

    select:         (signals, keep, seed, option) -> sorted kept indices (int64, exactly `keep`)
    deviation:      how it departs from its paper (shown in the UI, README and JSON)
    scoring:        what its scoring runs, one of the registry's `scoring_costs` (charged to its rows)
    label / description: display name and one line for the UI
    inside_model:   text: prunes inside the LM after layer K (FastV) rather than the prompt itself
    signal:         name of the signal it ranks by, with "{option}" filled in (None: no signal)
    options:        the accepted options ("name:option"), e.g. attribution methods; None: no option
    default_option: the option used when the name has none
    """

    name: str
    select: Callable[[Any, int, int, str | None], np.ndarray]
    deviation: str
    scoring: str
    label: str = ""
    description: str = ""
    inside_model: bool = False
    signal: str | None = None
    options: Callable[[], Sequence[str]] | None = None
    default_option: str | None = None

    def signal_name(self, option: str | None) -> str | None:
        return None if self.signal is None else self.signal.format(option=option)

    def canonical(self, option: str | None) -> str:
        return f"{self.name}:{option}" if option else self.name


class StrategyRegistry(Mapping[str, PruningStrategy[SignalsT]]):
    """name -> PruningStrategy, in registration order; read like a dict.

    `register` adds one; `parse` / `resolve` validate names (InputError listing the known ones);
    `select` runs one and checks what it returns. "all" means every registered strategy (each
    with its default option)."""

    def __init__(self, what: str, scoring_costs: Sequence[str], option_name: str = "option") -> None:
        self.what = what  # "text" or "image", for messages
        self.scoring_costs = tuple(scoring_costs)
        self.option_name = option_name  # what the part after a colon is, for messages
        self._strategies: dict[str, PruningStrategy[SignalsT]] = {}

    def __getitem__(self, name: str) -> PruningStrategy[SignalsT]:
        return self._strategies[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._strategies)

    def __len__(self) -> int:
        return len(self._strategies)

    def register(
        self, name: str, *, deviation: str, scoring: str, **fields: Any
    ) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
        """Decorator: register `fn(signals, keep, seed, option)` under `name` (see PruningStrategy)."""
        if scoring not in self.scoring_costs:
            raise ValueError(f"scoring must be one of {self.scoring_costs}, got {scoring!r}")

        def decorate(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
            if name in self._strategies:
                raise ValueError(f"{self.what} pruning strategy {name!r} registered twice")
            self._strategies[name] = PruningStrategy(name, fn, deviation, scoring, **fields)
            return fn

        return decorate

    def deviations(self) -> dict[str, str]:
        return {name: s.deviation for name, s in self._strategies.items()}

    def selectable_names(self) -> list[str]:
        """Every selectable name: "<name>:<option>" for strategies with options, else the name."""
        names: list[str] = []
        for s in self._strategies.values():
            names.extend(f"{s.name}:{o}" for o in s.options()) if s.options else names.append(s.name)
        return names

    def default_names(self) -> list[str]:
        """What "all" means: every strategy, with its default option."""
        return [s.canonical(s.default_option) for s in self._strategies.values()]

    def _unknown(self, name: str) -> InputError:
        with_options = [s.name for s in self._strategies.values() if s.options]
        hint = (
            f" ({' and '.join(with_options)} take an option after a colon, e.g. {with_options[0]}:NAME)"
            if with_options
            else ""
        )
        return InputError(
            f"unknown pruning strategy {name!r} for {self.what}; known: {', '.join(self._strategies)}{hint}, or 'all'"
        )

    def parse(self, name: str) -> tuple[PruningStrategy[SignalsT], str | None]:
        """ "frugalprompt:reagent" -> (strategy, "reagent"); the default option when none is given."""
        base, _, option = str(name).strip().partition(":")
        if base not in self._strategies:
            raise self._unknown(str(name))
        strategy = self._strategies[base]
        if strategy.options is None:
            if option:
                raise InputError(f"strategy {base!r} takes no {self.option_name} (got {name!r})")
            return strategy, None
        chosen = option or strategy.default_option
        known = list(strategy.options())
        if chosen not in known:
            raise InputError(f"unknown {self.option_name} {chosen!r} in {name!r}; known: {', '.join(known)}")
        return strategy, chosen

    def resolve(self, strategies: Sequence[str] | str) -> list[str]:
        """ "all", one name or a list -> canonical names, de-duplicated in order ("all" anywhere in
        the list adds every strategy not yet named). InputError for unknown names or none at all."""
        raw = [strategies] if isinstance(strategies, str) else list(strategies)
        names: list[str] = []
        for item in raw:
            if str(item).strip() == "all":
                names.extend(n for n in self.default_names() if n not in names)
                continue
            strategy, option = self.parse(item)
            canonical = strategy.canonical(option)
            if canonical not in names:
                names.append(canonical)
        if not names:
            raise InputError(
                f"strategies: choose at least one pruning strategy; known: {', '.join(self._strategies)}"
            )
        return names

    def select(self, name: str, signals: SignalsT, keep: int, seed: int, n: int) -> np.ndarray:
        """Run strategy `name` on `signals` -> kept indices (sorted int64, exactly `keep` of `n`)."""
        if not 1 <= keep <= n:
            raise InputError(f"keep count {keep} must be between 1 and {n}")
        strategy, option = self.parse(name)
        kept = np.asarray(strategy.select(signals, keep, seed, option), dtype=np.int64)
        if kept.shape != (keep,) or len(np.unique(kept)) != keep or np.any(np.diff(kept) <= 0):
            raise RuntimeError(f"strategy {name!r} kept {kept.tolist()} for keep={keep} of {n}")
        return kept


# ---------------------------------------------------------------------------------------------
# The row type
# ---------------------------------------------------------------------------------------------
@dataclass
class PruningRow:
    """One (strategy, keep ratio) cell of a sweep, text or image.

    kept:      0-based indices (prompt positions or patches), ascending
    fidelity:  measure -> value (None when not computed), the modality's FIDELITY_KEYS
    seconds / flops_ratio: cost of scoring + the pruned pass; scoring_*: the scoring part
    time_ratio: image only, seconds over the unpruned pass
    continuation / continuation_ids / top_token: text only, the pruned run's greedy continuation
               (decoded, cut after EOS), its ids and its top-1 next token
    Which optional fields a modality fills, stores and prints is its `ROW_EXTRAS`.
    """

    strategy: str
    keep_ratio: float
    keep_count: int
    layer: int
    kept: list[int]
    fidelity: dict[str, float | None]
    seconds: float
    flops_ratio: float
    scoring_seconds: float = 0.0
    scoring_flops_ratio: float = 0.0
    time_ratio: float = 0.0
    continuation: str = ""
    continuation_ids: list[int] = field(default_factory=list)
    top_token: str = ""

    def to_dict(self, extra: Sequence[str] = ()) -> dict[str, Any]:
        """JSON of the row with the modality's `extra` fields (time_ratio goes after seconds)."""
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "keep_ratio": self.keep_ratio,
            "keep_count": self.keep_count,
            "layer": self.layer,
            "kept": self.kept,
            "fidelity": self.fidelity,
            "seconds": self.seconds,
        }
        if "time_ratio" in extra:
            out["time_ratio"] = self.time_ratio
        out |= {
            "flops_ratio": self.flops_ratio,
            "scoring_seconds": self.scoring_seconds,
            "scoring_flops_ratio": self.scoring_flops_ratio,
        }
        out |= {name: getattr(self, name) for name in extra if name != "time_ratio"}
        return out


_EXTRA_COLUMNS: dict[str, pa.DataType] = {
    "time_ratio": pa.float64(),
    "continuation": pa.string(),
    "continuation_ids": pa.list_(pa.int32()),
    "top_token": pa.string(),
}


def rows_table(
    rows: Sequence[PruningRow], fidelity_keys: Sequence[str], extra: Sequence[str] = ()
) -> pa.Table:
    """Long-form table of rows: idx, strategy, keep_ratio, keep_count, layer, kept, one float
    column per fidelity measure, the cost (seconds, flops_ratio, scoring_seconds,
    scoring_flops_ratio) and the modality's `extra` columns (names of PruningRow's optional fields)."""
    columns: dict[str, pa.Array] = {
        "idx": pa.array(range(len(rows)), type=pa.int32()),
        "strategy": pa.array([r.strategy for r in rows], type=pa.string()),
        "keep_ratio": pa.array([r.keep_ratio for r in rows], type=pa.float64()),
        "keep_count": pa.array([r.keep_count for r in rows], type=pa.int32()),
        "layer": pa.array([r.layer for r in rows], type=pa.int32()),
        "kept": pa.array([r.kept for r in rows], type=pa.list_(pa.int32())),
        **{k: pa.array([r.fidelity.get(k) for r in rows], type=pa.float64()) for k in fidelity_keys},
        "seconds": pa.array([r.seconds for r in rows], type=pa.float64()),
        "flops_ratio": pa.array([r.flops_ratio for r in rows], type=pa.float64()),
        "scoring_seconds": pa.array([r.scoring_seconds for r in rows], type=pa.float64()),
        "scoring_flops_ratio": pa.array([r.scoring_flops_ratio for r in rows], type=pa.float64()),
    }
    for name in extra:
        columns[name] = pa.array([getattr(r, name) for r in rows], type=_EXTRA_COLUMNS[name])
    return pa.table(columns)


def rows_from_table(
    table: pa.Table, fidelity_keys: Sequence[str], extra: Sequence[str] = ()
) -> list[PruningRow]:
    """The inverse of `rows_table` (rows in `idx` order)."""
    rows = []
    for r in table.sort_by("idx").to_pylist():
        values = {name: r[name] for name in extra}
        if "continuation_ids" in values:
            values["continuation_ids"] = list(values["continuation_ids"])
        rows.append(
            PruningRow(
                strategy=r["strategy"],
                keep_ratio=r["keep_ratio"],
                keep_count=r["keep_count"],
                layer=r["layer"],
                kept=list(r["kept"]),
                fidelity={k: r[k] for k in fidelity_keys},
                seconds=r["seconds"],
                flops_ratio=r["flops_ratio"],
                scoring_seconds=r.get("scoring_seconds") or 0.0,
                scoring_flops_ratio=r.get("scoring_flops_ratio") or 0.0,
                **values,
            )
        )
    return rows


def retention_curve(
    rows: Sequence[PruningRow],
    metric: str,
    fidelity_keys: Sequence[str],
    cost_keys: Sequence[str],
    descending: bool = False,
) -> dict[str, list[tuple[float, float | None]]]:
    """strategy -> [(keep_ratio, value)] for a fidelity measure or a cost column, sorted by ratio."""
    if metric not in fidelity_keys and metric not in cost_keys:
        raise InputError(f"unknown metric {metric!r}; known: {', '.join([*fidelity_keys, *cost_keys])}")
    curves: dict[str, list[tuple[float, float | None]]] = {}
    for r in rows:
        value = getattr(r, metric) if metric in cost_keys else r.fidelity.get(metric)
        curves.setdefault(r.strategy, []).append((r.keep_ratio, value))
    return {k: sorted(v, reverse=descending) for k, v in curves.items()}
