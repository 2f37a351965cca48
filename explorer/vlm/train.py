"""Train the embedded demo VLM's projector, reproducibly from a seed.

    explorer train-demo-vlm --seed 0 --steps 800 --out explorer/vlm/weights

1. Draw the training scenes (seeds TRAIN_SEED_BASE..+n) and the 300 held-out scenes (a
   disjoint seed range), run the embedded DINOv2 once over all of them and keep the pooled
   patch features (cached under <cache_dir>/tiny-vlm/).
2. Train the projector with SmolLM2 frozen: next-token loss on the answer tokens only, over
   a mix of captions and colour / presence / count / position questions.
3. Evaluate on the held-out scenes (explorer.vlm.evaluate) and write the weights (fp16
   safetensors), the loss curve and the model card.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.vlm.scenes import QA, TRAIN_SEED_BASE, heldout_seeds, make_scene
from explorer.vlm.tiny_vlm import (
    ANSWER_END,
    COLOUR_DIM,
    IMAGE_PLACEHOLDER,
    Projector,
    ProjectorConfig,
    chat_prompt,
    colour_statistics,
)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    n_train_scenes: int = 2000
    n_heldout_scenes: int = 300
    steps: int = 800
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 40
    weight_decay: float = 0.0
    bf16: bool = True  # autocast the frozen LM's matmuls in bfloat16 on CPU (fast on AVX512-BF16)
    lora_rank: int = 0  # > 0: also train LoRA adapters on the LM's attention projections
    lora_alpha: float = 16.0
    init_from: str | None = (
        None  # a directory with a projector.safetensors (and lora.safetensors) to start from
    )
    colour: bool = True  # also feed the projector per-cell colour statistics (tiny_vlm.colour_statistics)
    colour_lr_scale: float = 1.0  # learning rate of the projector's colour branch, relative to lr
    # how often each question type is drawn (caption, colour, presence, count, position)
    type_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)


def _log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def extract_colour(seeds: list[int], path: Path, vision: Any, grid: int = 8) -> np.ndarray:
    """Per-cell colour statistics of the scenes of `seeds`: (n, grid * grid, 10) float16, cached
    at `path` (computed from the same pixel values DINOv2 sees; no network involved)."""
    from explorer.backends.images import preprocess

    prep = vision.preprocessing

    def compute() -> np.ndarray:
        return np.concatenate(
            [
                colour_statistics(preprocess(vision, make_scene(s).image), prep.mean, prep.std, grid)
                .to(torch.float16)
                .numpy()
                for s in seeds
            ]
        )

    return _cached(path, len(seeds), compute)


def _cached(path: Path, n: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array cached at `path` if it has `n` rows, else `compute()`, saved there atomically."""
    if path.exists():
        cached = np.load(path)
        if cached.shape[0] == n:
            return cached
    array = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.rename(path)
    return array


def extract_features(seeds: list[int], path: Path, vision: Any, batch: int = 25) -> np.ndarray:
    """Pooled DINOv2 features of the scenes of `seeds`: (n, 64, D) float16, cached at `path`."""
    from explorer.backends.images import preprocess
    from explorer.vlm.tiny_vlm import visual_features

    def compute() -> np.ndarray:
        parts = []
        t0 = time.perf_counter()
        for start in range(0, len(seeds), batch):
            images = [make_scene(s).image for s in seeds[start : start + batch]]
            pixels = torch.cat([preprocess(vision, im) for im in images])
            parts.append(visual_features(vision, pixels).to(torch.float16).numpy())
            done = start + len(images)
            if done % (batch * 8) == 0 or done == len(seeds):
                _log(f"features {done}/{len(seeds)} ({time.perf_counter() - t0:.0f} s)")
        return np.concatenate(parts)

    return _cached(path, len(seeds), compute)


class PromptCodec:
    """Tokenises the chat prompt around the image placeholder once per question."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.end_ids = tokenizer(ANSWER_END, add_special_tokens=False).input_ids

    def split(self, question: str) -> tuple[list[int], list[int]]:
        before, after = chat_prompt(question).split(IMAGE_PLACEHOLDER)
        enc = self.tokenizer
        return enc(before, add_special_tokens=False).input_ids, enc(after, add_special_tokens=False).input_ids

    def answer(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False).input_ids) + list(self.end_ids)


def _batch(
    codec: PromptCodec,
    embed: torch.nn.Module,
    visual: torch.Tensor,
    qas: list[QA],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """inputs_embeds (B, T, d), attention mask (B, T), labels (B, T) with -100 off the answers."""
    rows = []
    for i, qa in enumerate(qas):
        before, after = codec.split(qa.question)
        answer = codec.answer(qa.answer)
        rows.append((i, before, after, answer))
    n_vis = visual.shape[1]
    length = max(len(b) + n_vis + len(a) + len(ans) for _, b, a, ans in rows)
    d = visual.shape[-1]
    embeds = torch.zeros(len(rows), length, d)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    pieces = []
    for i, before, after, answer in rows:
        text_before = embed(torch.tensor(before))
        text_after = embed(torch.tensor(after + answer))
        seq = torch.cat([text_before, visual[i], text_after])
        pieces.append(seq)
        n = seq.shape[0]
        mask[i, :n] = 1
        start = len(before) + n_vis + len(after)
        labels[i, start : start + len(answer)] = torch.tensor(answer)
    for i, seq in enumerate(pieces):
        embeds[i, : seq.shape[0]] = seq
    return embeds, mask, labels


def train(
    config: TrainConfig,
    out_dir: Path,
    cache_dir: Path,
    lm: Any | None = None,
    vision: Any | None = None,
) -> dict[str, Any]:
    """Train the projector; write weights, loss curve and metrics to `out_dir`."""
    from safetensors.torch import save_file

    from explorer.backends.language import load_model
    from explorer.backends.vision import load_vision_model

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    lm = lm or load_model("smollm2-135m")
    vision = vision or load_vision_model("dinov2-small-focus")
    train_seeds = [TRAIN_SEED_BASE + config.seed * 1_000_000 + i for i in range(config.n_train_scenes)]
    stem = f"train-s{config.seed}-n{len(train_seeds)}"
    feats = torch.from_numpy(extract_features(train_seeds, cache_dir / f"{stem}.npy", vision))
    if config.colour:
        colour = extract_colour(train_seeds, cache_dir / f"{stem}-colour.npy", vision)
        feats = torch.cat([feats, torch.from_numpy(colour)], dim=-1)
    scenes = [make_scene(s) for s in train_seeds]
    from explorer.backends.vlm import attach_lora, freeze_language_model, load_lora, lora_weights

    freeze_language_model(lm)
    colour_dim = COLOUR_DIM if config.colour else 0
    if config.init_from:
        projector = warm_start_projector(Path(config.init_from) / "projector.safetensors", colour_dim)
    else:
        projector = Projector(ProjectorConfig(lm_dim=int(lm.config.hidden_size), colour_dim=colour_dim))
    colour_params = list(projector.colour.parameters()) if projector.colour is not None else []
    params = [p for n, p in projector.named_parameters() if not n.startswith("colour.")]
    if config.lora_rank > 0:
        params += attach_lora(lm, config.lora_rank, config.lora_alpha)
        lora_init = Path(config.init_from or "") / "lora.safetensors"
        if config.init_from and lora_init.exists():
            load_lora(lm, lora_init)
    groups = [
        {"params": list(params), "scale": 1.0},
        {"params": colour_params, "scale": config.colour_lr_scale},
    ]
    params += colour_params
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    kinds = ("caption", "colour", "presence", "count", "position")
    weights = dict(zip(kinds, config.type_weights, strict=True))
    codec = PromptCodec(lm.tokenizer)
    embed = lm.embed_module()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * min(1.0, (step + 1) / config.warmup)
        lr *= 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        idx = [rng.randrange(len(scenes)) for _ in range(config.batch_size)]
        qas = []
        for i in idx:
            options = scenes[i].questions(rng)
            qas.append(rng.choices(options, weights=[weights[qa.kind] for qa in options])[0])
        visual = projector(feats[idx].float())
        embeds, mask, labels = _batch(codec, embed, visual, qas)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = lm.forward(inputs_embeds=embeds, attention_mask=mask).logits
        logits = logits.float()[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == config.steps - 1:
            recent = sum(losses[-10:]) / len(losses[-10:])
            _log(
                f"step {step + 1}/{config.steps} loss {recent:.4f} lr {lr:.2e} ({time.perf_counter() - t0:.0f} s)"
            )
        if (step + 1) % 100 == 0:
            _save(projector, out_dir, save_file, lora_weights(lm), config)
    train_seconds = time.perf_counter() - t0
    _save(projector, out_dir, save_file, lora_weights(lm), config)
    (out_dir / "loss.json").write_text(json.dumps({"loss": [round(v, 4) for v in losses]}))
    plot_loss(out_dir)
    info = {"config": asdict(config), "train_seconds": round(train_seconds, 1)}
    (out_dir / "training.json").write_text(json.dumps(info, indent=2))
    return info


def warm_start_projector(path: Path, colour_dim: int) -> Projector:
    """The projector saved at `path`, in training mode; a colour branch it lacks is added with
    zero weights, so training starts from exactly the saved model's outputs."""
    from explorer.backends.vlm import load_projector

    old = load_projector(path)
    if old.config.colour_dim == colour_dim:
        return old.train()
    if old.config.colour_dim:
        raise ValueError(f"{path} has colour_dim {old.config.colour_dim}; cannot continue with {colour_dim}")
    projector = Projector(replace(old.config, colour_dim=colour_dim))
    missing, unexpected = projector.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("colour.") for k in missing), (missing, unexpected)
    assert projector.colour is not None
    with torch.no_grad():
        projector.colour.weight.zero_()
        projector.colour.bias.zero_()
    return projector.train()


def load_lora_adapters(model: torch.nn.Module, path: Path) -> None:
    """Load saved LoRA adapters into a model wrapped by `attach_lora` (same rank)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    current = model.state_dict()
    for key, value in state.items():
        if key not in current or current[key].shape != value.shape:
            raise ValueError(f"{path}: adapter {key} does not fit this model (rank or layers differ)")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def plot_loss(out_dir: Path) -> Path:
    """loss.json -> loss.png: the per-step loss and its 50-step running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(json.loads((out_dir / "loss.json").read_text())["loss"])
    window = max(1, min(50, len(losses) // 4))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3), dpi=150)
    ax.plot(np.arange(1, len(losses) + 1), losses, color="#bbbbbb", linewidth=0.6, label="per step")
    ax.plot(np.arange(window, len(losses) + 1), smooth, color="#0072B2", label=f"{window}-step mean")
    ax.set_xlabel("step (batch of 8)")
    ax.set_ylabel("answer-token cross-entropy")
    ax.set_ylim(0, min(4.0, float(losses.max())))
    ax.legend(frameon=False)
    fig.tight_layout()
    path = out_dir / "loss.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _save(
    projector: Projector,
    out_dir: Path,
    save_file: Any,
    adapters: dict[str, torch.Tensor],
    config: TrainConfig,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.lora_rank > 0:
        lora = {k: v.to(torch.float16).contiguous() for k, v in adapters.items()}
        meta = {"rank": str(config.lora_rank), "alpha": str(config.lora_alpha)}
        tmp_lora = out_dir / "lora.safetensors.tmp"
        save_file(lora, str(tmp_lora), metadata=meta)
        tmp_lora.rename(out_dir / "lora.safetensors")
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in projector.state_dict().items()}
    tmp = out_dir / "projector.safetensors.tmp"
    save_file(state, str(tmp), metadata={"config": json.dumps(asdict(projector.config))})
    tmp.rename(out_dir / "projector.safetensors")


def heldout_features(cache_dir: Path, vision: Any, n: int = 300) -> np.ndarray:
    seeds = heldout_seeds(n)
    feats = extract_features(seeds, cache_dir / f"heldout-n{n}.npy", vision)
    colour = extract_colour(seeds, cache_dir / f"heldout-n{n}-colour.npy", vision)
    return np.concatenate([feats, colour], axis=-1)


if __name__ == "__main__":
    import argparse

    from explorer.config import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--scenes", type=int, default=TrainConfig.n_train_scenes)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument("--features-only", action="store_true")
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--init-from", default=None)
    parser.add_argument("--type-weights", default="1,1,1,1,1", help="caption,colour,presence,count,position")
    parser.add_argument(
        "--no-colour", action="store_true", help="DINOv2 features only (the first two stages)"
    )
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    parser.add_argument("--colour-lr-scale", type=float, default=TrainConfig.colour_lr_scale)
    args = parser.parse_args()
    settings = Settings.from_env()
    cache = settings.cache_dir / "tiny-vlm"
    cfg = TrainConfig(
        seed=args.seed,
        steps=args.steps,
        n_train_scenes=args.scenes,
        lora_rank=args.lora_rank,
        lr=args.lr,
        init_from=args.init_from,
        type_weights=tuple(float(v) for v in args.type_weights.split(",")),
        colour=not args.no_colour,
        colour_lr_scale=args.colour_lr_scale,
        warmup=args.warmup,
    )
    if args.features_only:
        from explorer.backends.vision import load_vision_model

        vm = load_vision_model("dinov2-small-focus")
        seeds = [TRAIN_SEED_BASE + cfg.seed * 1_000_000 + i for i in range(cfg.n_train_scenes)]
        extract_features(seeds, cache / f"train-s{cfg.seed}-n{len(seeds)}.npy", vm)
        extract_colour(seeds, cache / f"train-s{cfg.seed}-n{len(seeds)}-colour.npy", vm)
        heldout_features(cache, vm, cfg.n_heldout_scenes)
    else:
        print(train(cfg, args.out, cache))
