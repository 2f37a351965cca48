"""Is an object's colour in the demo VLM's projector input? A linear probe per input.

For the first N training scenes, takes the pooled cell at each object's centre and fits a
multinomial logistic regression (standardised inputs, L2, L-BFGS) from that cell's vector to
the object's colour, on 70% of the objects; prints test accuracy overall and on red / orange /
yellow, for: DINOv2 block 12, block 6, both (the shipped input), the colour statistics
(tiny_vlm.colour_statistics), and both plus the statistics.

    python bench/vlm_colour_probe.py [--scenes 1000]

Uses the cached DINOv2 features of the training scenes (cache/tiny-vlm/, written by
`python -m explorer.vlm.train --features-only`); computes them if they are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.vlm.scenes import COLOURS, IMAGE_SIZE, TRAIN_SEED_BASE, make_scene  # noqa: E402

HARD = ("red", "orange", "yellow")


def probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Predicted class of every row of the test split (~train) from a softmax regression."""
    xt = torch.from_numpy(x).float()
    mu, sd = xt[train].mean(0), xt[train].std(0) + 1e-6
    xt = (xt - mu) / sd
    yt = torch.from_numpy(y).long()
    n_cls = int(y.max()) + 1
    w = torch.zeros(xt.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    mask = torch.from_numpy(train)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt[mask] @ w + b
        loss = torch.nn.functional.cross_entropy(logits, yt[mask]) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (xt[~mask] @ w + b).argmax(1).numpy()  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=1000)
    args = parser.parse_args()

    from explorer.backends.vision import load_vision_model
    from explorer.config import Settings
    from explorer.vlm.train import extract_colour, extract_features

    cache = Settings.from_env().cache_dir / "tiny-vlm"
    vision = load_vision_model("dinov2-small-focus")
    seeds = [TRAIN_SEED_BASE + i for i in range(2000)]  # the training scenes of seed 0 (cached once)
    feats = extract_features(seeds, cache / "train-s0-n2000.npy", vision)[: args.scenes]
    stats = extract_colour(seeds, cache / "train-s0-n2000-colour.npy", vision)[: args.scenes]
    cell = IMAGE_SIZE // 8
    names = list(COLOURS)
    rows, labels = [], []
    for i in range(args.scenes):
        for obj in make_scene(seeds[i]).objects:
            index = min(obj.centre[1] // cell, 7) * 8 + min(obj.centre[0] // cell, 7)
            rows.append(np.concatenate([feats[i, index], stats[i, index]]).astype(np.float32))
            labels.append(names.index(obj.colour))
    x, y = np.stack(rows), np.asarray(labels)
    train = np.arange(len(y)) < int(0.7 * len(y))
    hard = np.isin(y[~train], [names.index(c) for c in HARD])
    d = feats.shape[-1] // 2
    inputs = {
        "DINOv2 block 12": slice(d, 2 * d),
        "DINOv2 block 6": slice(0, d),
        "DINOv2 blocks 6 + 12 (shipped input)": slice(0, 2 * d),
        "colour statistics": slice(2 * d, None),
        "blocks 6 + 12 + colour statistics": slice(0, None),
    }
    out = {"objects": len(y), "test_objects": int((~train).sum()), "accuracy": {}}
    for name, cols in inputs.items():
        pred = probe(x[:, cols], y, train)
        acc = float((pred == y[~train]).mean())
        acc_hard = float((pred[hard] == y[~train][hard]).mean())
        out["accuracy"][name] = {"all": round(acc, 3), "red/orange/yellow": round(acc_hard, 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
