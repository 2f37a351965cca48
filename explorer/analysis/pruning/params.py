"""The parameters of a pruning sweep, text and image: one `Params` dataclass each, validated once
(messages name the parameter; the front ends translate them into flags or controls).

`PruneTextParams.of(...)` / `PruneImageParams.of(...)` turn user input ("all", one name or a list
of strategies; one keep ratio or several) into the canonical form the cache key is made of:
strategy names resolved through the modality's registry, keep ratios de-duplicated from 1.0 down.
`validate()` checks everything that needs no model; `for_model(...)` adds the layer's range,
which depends on the model's depth. `to_json()` is the parameters' part of the cache key (the
same keys and values as before these dataclasses existed, so stored runs keep matching).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS, resolve_keep_ratios, validate_seed
from explorer.analysis.pruning.text import (
    DEFAULT_LAYER,
    MAX_CONTINUATION,
    TEXT_STRATEGIES,
    resolve_strategies,
    validate_layer,
)
from explorer.errors import InputError
from explorer.params import params_json


class _SweepParams:
    """What both modalities' Params share. `of`: strategies resolved through the modality's
    registry (`resolve`), keep ratios of its `unit` de-duplicated from 1.0 down; every other field
    is passed to the dataclass as given (its defaults are the dataclass's)."""

    unit: ClassVar[str]
    strategies: tuple[str, ...]  # the fields both dataclasses declare
    keep_ratios: tuple[float, ...]
    layer: int
    seed: int

    @staticmethod
    def resolve(strategies: Sequence[str] | str) -> list[str]:
        raise NotImplementedError

    @classmethod
    def of(
        cls,
        strategies: Sequence[str] | str = "all",
        keep_ratios: Sequence[float] | float = DEFAULT_KEEP_RATIOS,
        **others: Any,
    ) -> Self:
        return cls(
            strategies=tuple(cls.resolve(strategies)),  # type: ignore[call-arg]  # the dataclass fields
            keep_ratios=tuple(resolve_keep_ratios(keep_ratios, cls.unit)),
            **others,
        )

    def check_sweep(self) -> None:
        """What both modalities check: canonical strategies (each once), keep ratios as `of` makes
        them, a non-negative integer layer (its upper bound needs the model) and an integer seed."""
        strategies, ratios, layer = list(self.strategies), list(self.keep_ratios), self.layer
        if self.resolve(strategies) != strategies:
            raise InputError(f"strategies must be canonical and listed once, got {strategies}")
        if resolve_keep_ratios(ratios, self.unit) != ratios:
            raise InputError(f"keep_ratios must be distinct and sorted from 1.0 down, got {ratios}")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise InputError(f"layer must be a non-negative integer; got {layer!r}")
        validate_seed(self.seed)


@dataclass(frozen=True)
class PruneTextParams(_SweepParams):
    """A text-pruning sweep.

    strategies:          canonical strategy names (see `analysis.pruning.text.TEXT_STRATEGIES`; default all)
    keep_ratios:         fractions of the prompt's tokens to keep, in (0, 1], from 1.0 down
    layer:               FastV's K (blocks 0..K-1 see every token); must exist in the model
    target:              the token whose probability and rank are tracked (None: the unpruned top-1)
    continuation_tokens: N greedy tokens compared (0 skips the continuation measures)
    seed:                seed of the random strategy and of sampled attribution baselines
    """

    unit: ClassVar[str] = "tokens"
    resolve = staticmethod(resolve_strategies)

    strategies: tuple[str, ...] = field(default_factory=lambda: tuple(resolve_strategies("all")))
    keep_ratios: tuple[float, ...] = tuple(DEFAULT_KEEP_RATIOS)
    layer: int = DEFAULT_LAYER
    target: str | None = None
    continuation_tokens: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", self.target or None)  # "" (an empty field) is no target

    @property
    def needs_layer(self) -> bool:
        """True when a strategy prunes inside the model (FastV): then 1 <= layer is required."""
        return any(TEXT_STRATEGIES.parse(name)[0].inside_model for name in self.strategies)

    def validate(self) -> None:
        self.check_sweep()
        c = self.continuation_tokens
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CONTINUATION:
            raise InputError(
                f"continuation_tokens must be an integer between 0 and {MAX_CONTINUATION}, got {c!r}"
            )

    def for_model(self, lm: Any) -> PruneTextParams:
        """The parameters with `layer` checked against `lm`'s depth (InputError naming the range)."""
        self.validate()
        return dataclasses.replace(self, layer=validate_layer(lm, self.layer, needs_layer=self.needs_layer))

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


def _image_strategies(strategies: Sequence[str] | str) -> list[str]:
    from explorer.analysis.pruning.image import resolve_strategies

    return resolve_strategies(strategies)


@dataclass(frozen=True)
class PruneImageParams(_SweepParams):
    """An image-pruning sweep inside a vision transformer.

    strategies:  strategy names (see `analysis.pruning.image.IMAGE_STRATEGIES`; default all)
    keep_ratios: fractions of the patches to keep, in (0, 1], from 1.0 down
    layer:       blocks 0..layer-1 run on every patch, the rest on the kept ones (0..n_layers)
    seed:        seed of the random strategies
    """

    unit: ClassVar[str] = "patches"
    resolve = staticmethod(_image_strategies)

    strategies: tuple[str, ...] = field(default_factory=lambda: tuple(_image_strategies("all")))
    keep_ratios: tuple[float, ...] = tuple(DEFAULT_KEEP_RATIOS)
    layer: int = 0
    seed: int = 0

    def validate(self) -> None:
        self.check_sweep()

    def for_model(self, vm: Any) -> PruneImageParams:
        """The parameters with `layer` checked against `vm`'s depth (0..n_layers)."""
        from explorer.analysis.pruning.image import validate_layer

        self.validate()
        return dataclasses.replace(self, layer=validate_layer(vm, self.layer))

    def to_json(self) -> dict[str, Any]:
        return params_json(self)
