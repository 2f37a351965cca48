"""The LLM-Microscope and tokenizer-inspector parameters: validated once, before any model or
tokenizer loads, with messages that name the parameter; the cache key is what it was before."""

from __future__ import annotations

import pytest

from explorer.analysis.atlas.microscope import PREFIX_WINDOW, REFERENCE_TOKENS, MicroscopeParams
from explorer.analysis.atlas.tokenizers import EMBEDDED_TOKENIZERS, TokenizerParams
from explorer.api import atlas as atlas_api
from explorer.api.runner import cache_params
from explorer.errors import InputError


def test_microscope_params_name_the_parameter_and_keep_the_old_key() -> None:
    assert cache_params(MicroscopeParams(), max_tokens=512) == {
        "reference_tokens": REFERENCE_TOKENS, "prefix_window": PREFIX_WINDOW, "max_tokens": 512,
    }  # fmt: skip
    with pytest.raises(InputError, match="reference_tokens"):
        MicroscopeParams(reference_tokens=10).validate()
    with pytest.raises(InputError, match="prefix_window"):
        MicroscopeParams(prefix_window=0).validate()


def test_bad_microscope_params_fail_before_the_model_loads() -> None:
    with pytest.raises(
        InputError, match="prefix_window"
    ):  # a model name that does not exist is never reached
        atlas_api.run_microscope(
            "no-such-model", "a b c", params=MicroscopeParams(prefix_window=-1), db=False
        )


def test_tokenizer_params() -> None:
    assert TokenizerParams().tokenizers == EMBEDDED_TOKENIZERS
    assert TokenizerParams.of([" a ", "", "b"]).tokenizers == ("a", "b")
    assert cache_params(TokenizerParams.of(["a", "b"])) == {}  # the names are the run's model, not its key
    with pytest.raises(InputError, match="tokenizers: choose at least one"):
        TokenizerParams.of(["  "]).validate()
    with pytest.raises(InputError, match="tokenizers: 'a' listed twice"):
        TokenizerParams.of(["a", "b", "a"]).validate()
    with pytest.raises(InputError, match="tokenizers: at most"):
        TokenizerParams.of([str(i) for i in range(20)]).validate()
    with pytest.raises(InputError, match="listed twice"):  # before any tokenizer loads
        atlas_api.inspect_tokenizers("hello", ["no-such-tokenizer", "no-such-tokenizer"], db=False)
