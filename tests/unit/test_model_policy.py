"""A host decides what loads: allow-list, one spelling per folder, a bounded model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from explorer.errors import ModelNotAvailableError
from explorer.model_policy import ModelLRU, admit_model, canonical_model_name, model_bytes


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_tiny_lm

    lm = make_tiny_lm("gpt2")
    d = tmp_path_factory.mktemp("models") / "tiny"
    lm.hf_model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def test_four_spellings_of_one_folder_load_once(tiny_dir: Path, monkeypatch) -> None:
    from explorer.backends.language import load_model
    from explorer.backends.loading import MODEL_CACHE

    monkeypatch.chdir(tiny_dir.parent.parent)
    rel = os.path.relpath(tiny_dir)
    a_dot = str(Path(rel).parent / "." / Path(rel).name)
    spellings = [str(tiny_dir), str(tiny_dir) + "/", str(tiny_dir) + "/.", a_dot]
    before = len(MODEL_CACHE.keys())
    models = [load_model(s) for s in spellings]
    assert all(m is models[0] for m in models)
    assert len(MODEL_CACHE.keys()) == before + 1
    assert models[0].model_id == str(tiny_dir.resolve())


def test_canonical_names() -> None:
    assert canonical_model_name(" smollm2-135m ", embedded={"smollm2-135m"}) == "smollm2-135m"
    assert canonical_model_name("HuggingFaceTB/SmolLM2-135M/") == "HuggingFaceTB/SmolLM2-135M"
    assert canonical_model_name("/a/b/../c/./d") == "/a/c/d"


def test_allow_list_admits_names_hub_globs_and_folders(tiny_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", f"smollm2-135m, HuggingFaceTB/*\n{tiny_dir.parent}/*")
    assert admit_model("smollm2-135m", {"smollm2-135m"}) == "smollm2-135m"
    assert admit_model("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    assert admit_model(str(tiny_dir) + "/.") == str(tiny_dir.resolve())
    for refused in ["gpt2", "openai-community/gpt2", f"{tiny_dir.parent}/../../etc", "/etc/passwd", "~/.ssh"]:
        with pytest.raises(ModelNotAvailableError, match="is not an available model") as info:
            admit_model(refused)
        assert str(tiny_dir.parent) not in str(info.value)


def test_allow_list_covers_every_model_field(monkeypatch, tiny_dir: Path) -> None:
    import torch

    from explorer.backends.language import load_model
    from explorer.backends.masked import load_masked_lm
    from explorer.backends.vision import load_vision_model

    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", "smollm2-135m")
    for load in (
        lambda: load_model(str(tiny_dir)),
        lambda: load_vision_model("google/vit-base-patch16-224"),
        lambda: load_masked_lm("FacebookAI/roberta-base", torch.device("cpu")),
    ):
        with pytest.raises(ModelNotAvailableError, match="not an available model"):
            load()


def test_allow_list_covers_vlms_tokenizers_and_the_vlm_probe(
    monkeypatch, tiny_dir: Path, tmp_path: Path
) -> None:
    """Hub VLMs, the atlas tokenizer inspector and the "is this a VLM?" config probe all refuse a
    model outside the allow-list before reading any file of it."""
    from explorer.analysis.atlas.tokenizers import load_tokenizer
    from explorer.api.vlm import is_vlm
    from explorer.backends.vlm import load_vlm
    from explorer.config import Settings

    vlm_dir = tmp_path / "secret-vlm"
    vlm_dir.mkdir()
    (vlm_dir / "config.json").write_text('{"model_type": "llava", "vision_config": {}}')
    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", "smollm2-135m")
    for load in (
        lambda: load_vlm("llava-hf/llava-1.5-7b-hf"),
        lambda: load_vlm(str(vlm_dir)),
        lambda: is_vlm(str(vlm_dir)),
        lambda: load_tokenizer(str(tiny_dir), Settings.from_env()),
        lambda: load_tokenizer("openai-community/gpt2", Settings.from_env()),
    ):
        with pytest.raises(ModelNotAvailableError, match="not an available model") as info:
            load()
        assert str(tmp_path) not in str(info.value) and str(tiny_dir) not in str(info.value)


def test_tokenizers_load_once_per_folder_through_the_model_cache(tiny_dir: Path, monkeypatch) -> None:
    from explorer.analysis.atlas.tokenizers import load_tokenizer
    from explorer.backends.loading import MODEL_CACHE
    from explorer.config import Settings

    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", f"{tiny_dir.parent}/*")
    settings = Settings.from_env()
    first = load_tokenizer(str(tiny_dir) + "/.", settings)
    assert load_tokenizer(str(tiny_dir) + "/", settings) is first
    assert ("tokenizer:" + str(tiny_dir.resolve()),) in MODEL_CACHE.keys()


def test_cache_bounds_the_number_of_entries() -> None:
    cache = ModelLRU(budget=lambda: 1 << 40, max_entries=3)
    for name in "abcde":
        cache.get(("tokenizer:" + name,), object)
    assert [k[0] for k in cache.keys()] == ["tokenizer:c", "tokenizer:d", "tokenizer:e"]


def test_vlm_memory_counts_its_text_model() -> None:
    from types import SimpleNamespace

    inner = _Model(1)
    assert model_bytes(SimpleNamespace(lm=SimpleNamespace(hf_model=inner.model))) == 1024 * 1024


@pytest.mark.real
def test_allow_listed_demo_vlm_loads_its_own_parts(monkeypatch) -> None:
    """ "tiny-vlm" alone on the list: the demo VLM loads (its SmolLM2 and DINOv2 are its parts),
    while SmolLM2 as a model of its own stays refused."""
    from explorer.backends.language import load_model
    from explorer.backends.vlm import load_vlm

    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", "tiny-vlm")
    assert load_vlm("tiny-vlm").model_id == "tiny-vlm"
    with pytest.raises(ModelNotAvailableError, match="not an available model"):
        load_model("smollm2-135m")


def test_local_mode_keeps_detailed_messages(tmp_path: Path, monkeypatch) -> None:
    from explorer.backends.language import load_model

    monkeypatch.delenv("EXPLORER_ALLOWED_MODELS", raising=False)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nothing-here"))


def test_hosted_load_failure_says_nothing_more(tmp_path: Path, monkeypatch) -> None:
    from explorer.backends.language import load_model

    bad = tmp_path / "models" / "broken"
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("not json")
    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", f"{tmp_path}/models/*")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model(str(bad))
    assert str(info.value) == "'broken' is not an available model"


class _Model:
    def __init__(self, mb: int) -> None:
        import torch

        self.model = torch.nn.Linear(mb * 1024 * 256, 1, bias=False)  # mb MB of float32

    def run(self) -> float:
        import torch

        return float(self.model(torch.ones(self.model.in_features)).item())


def test_lru_stays_under_budget_and_never_breaks_a_request_in_flight() -> None:
    cache = ModelLRU(budget=lambda: 5 * 1024 * 1024)  # 5 MB
    a = cache.get(("lm:a", "cpu"), lambda: _Model(2))
    assert model_bytes(a) == 2 * 1024 * 1024
    cache.get(("lm:b", "cpu"), lambda: _Model(2))
    cache.get(("lm:a", "cpu"), lambda: _Model(2))  # touch a: b is now the oldest
    cache.get(("lm:c", "cpu"), lambda: _Model(2))
    assert [k[0] for k in cache.keys()] == ["lm:a", "lm:c"]
    assert cache.memory_bytes() <= 5 * 1024 * 1024
    big = cache.get(("lm:big", "cpu"), lambda: _Model(6))  # over budget alone: kept, others dropped
    assert [k[0] for k in cache.keys()] == ["lm:big"]
    assert a.run() == a.run() and big.run() == big.run()  # evicted models still work for their holders


def test_memory_budget_from_environment(monkeypatch) -> None:
    from explorer.model_policy import memory_budget_bytes

    monkeypatch.setenv("EXPLORER_MODEL_MEMORY_GB", "0.5")
    assert memory_budget_bytes() == 512 * 1024 * 1024


def test_dockerfile_allows_every_embedded_model(monkeypatch) -> None:
    """The Space image's default allow-list admits each embedded model (language, vision, demo VLM,
    the atlas's embedded tokenizers) and nothing from the hub."""
    import re

    from explorer.analysis.atlas.tokenizers import EMBEDDED_TOKENIZERS
    from explorer.backends.embedded import EMBEDDED_LMS, EMBEDDED_VISION_MODELS
    from explorer.backends.vlm import EMBEDDED_VLMS
    from explorer.config import PROJECT_ROOT

    found = re.search(r'EXPLORER_ALLOWED_MODELS="([^"]*)"', (PROJECT_ROOT / "Dockerfile").read_text())
    assert found, "the Dockerfile sets EXPLORER_ALLOWED_MODELS"
    monkeypatch.setenv("EXPLORER_ALLOWED_MODELS", found.group(1))
    embedded = {*EMBEDDED_LMS, *EMBEDDED_VISION_MODELS, *EMBEDDED_VLMS, *EMBEDDED_TOKENIZERS}
    for name in embedded:
        assert admit_model(name, embedded) == name
    with pytest.raises(ModelNotAvailableError):
        admit_model("openai-community/gpt2", embedded)
