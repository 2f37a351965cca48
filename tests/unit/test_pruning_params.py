"""Pruning parameters (text and image): user input becomes one canonical `Params`, validated once
before any model loads, with messages that name the parameter; the cache key keeps its old form."""

from __future__ import annotations

import pytest

from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS
from explorer.analysis.pruning.params import PruneImageParams, PruneTextParams
from explorer.api import pruning as pruning_api
from explorer.api.runner import cache_params
from explorer.errors import InputError


def test_text_params_are_canonical_and_keep_the_old_cache_key() -> None:
    p = PruneTextParams.of(["random", "frugalprompt", "random"], [0.5, 1, 0.5], layer=2, target="", seed=3)
    assert p.strategies == ("random", "frugalprompt:input_x_gradient")
    assert p.keep_ratios == (1.0, 0.5) and p.target is None
    assert cache_params(p, max_tokens=512) == {
        "strategies": ["random", "frugalprompt:input_x_gradient"], "keep_ratios": [1.0, 0.5], "layer": 2,
        "target": None, "continuation_tokens": 8, "seed": 3, "max_tokens": 512,
    }  # fmt: skip
    assert PruneTextParams.of().keep_ratios == DEFAULT_KEEP_RATIOS
    assert not p.needs_layer and PruneTextParams.of("fastv").needs_layer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"continuation_tokens": 1000}, "continuation_tokens must be"),
        ({"continuation_tokens": True}, "continuation_tokens must be"),
        ({"layer": -1}, "layer must be a non-negative integer"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"keep_ratios": [0.0]}, "keep ratio 0.0 is outside"),
        ({"strategies": ["no_such"]}, "no_such"),
    ],
)
def test_bad_text_params_name_the_parameter_before_the_model_loads(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        pruning_api.run_prune_text("no-such-model", "a b c", db=False, **kwargs)


def test_params_built_by_hand_are_validated_too() -> None:
    with pytest.raises(InputError, match="keep_ratios must be distinct and sorted"):
        PruneTextParams(strategies=("random",), keep_ratios=(0.5, 1.0)).validate()
    with pytest.raises(InputError, match="strategies must be canonical"):
        PruneTextParams(strategies=("frugalprompt",)).validate()
    with pytest.raises(InputError, match="layer"):
        PruneImageParams(strategies=("random",), layer=-2).validate()


def test_image_params() -> None:
    p = PruneImageParams.of("all", 0.5, layer=1, seed=2)
    assert p.keep_ratios == (0.5,) and len(p.strategies) > 3 and "random" in p.strategies
    assert set(cache_params(p)) == {"strategies", "keep_ratios", "layer", "seed"}
    with pytest.raises(InputError, match="seed must be an integer"):  # before the image is read
        pruning_api.run_prune_image("no-such-file.png", strategies="random", seed="x", db=False)  # type: ignore[arg-type]
