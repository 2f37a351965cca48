"""A seeded procedural scene generator: simple shapes on plain or textured backgrounds.

Each scene has 1-3 objects with distinct shapes (so "the circle" is never ambiguous), each
with a colour, a size and a position in a 3x3 grid (top left ... bottom right). A scene
knows its ground truth, which gives captions and question-answer pairs with exact answers:
the training data of the embedded demo VLM and, later, evaluation sets for hallucination
and pruning studies.

Everything is a pure function of the seed: `make_scene(seed)` always draws the same image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 130, 20),
}
SIZES: dict[str, int] = {"small": 22, "large": 38}  # radius in pixels at 224 x 224
# 3x3 grid of positions, row-major, with their names
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
BACKGROUNDS = ("plain", "noise", "stripes", "checker")
IMAGE_SIZE = 224

QuestionType = Literal["caption", "colour", "presence", "count", "position"]
QUESTION_TYPES: tuple[QuestionType, ...] = ("caption", "colour", "presence", "count", "position")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    centre: tuple[int, int]  # (x, y) in pixels

    @property
    def name(self) -> str:
        """'red circle'"""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class QA:
    kind: QuestionType
    question: str
    answer: str
    # presence probes: is the asked object really in the scene
    present: bool | None = None


@dataclass
class Scene:
    seed: int
    objects: list[SceneObject]
    background: str
    image: Image.Image = field(repr=False)

    @property
    def caption(self) -> str:
        """Objects left to right (then top to bottom): 'a red circle and a blue square'."""
        ordered = sorted(self.objects, key=lambda o: (o.centre[0], o.centre[1]))
        names = [f"{article(o.name)} {o.name}" for o in ordered]
        if len(names) == 1:
            return names[0]
        return ", ".join(names[:-1]) + " and " + names[-1]

    def object_words(self) -> set[str]:
        return {o.shape for o in self.objects} | {o.colour for o in self.objects}

    def questions(self, rng: random.Random) -> list[QA]:
        """One question of each type, with exact answers from the ground truth.

        Presence probes are about an absent object half of the time: either a shape that is
        not in the scene, or a present shape in another colour (the harder case)."""
        obj = rng.choice(self.objects)
        qas = [
            QA("caption", "Describe the image.", self.caption),
            QA("colour", f"What color is the {obj.shape}?", obj.colour),
            QA("count", "How many shapes are there?", NUMBER_WORDS[len(self.objects)]),
            QA("position", f"Where is the {obj.shape}?", obj.position),
        ]
        if rng.random() < 0.5:
            probe = rng.choice(self.objects)
            qas.append(QA("presence", f"Is there {article(probe.name)} {probe.name}?", "yes", present=True))
        else:
            shape, colour = absent_object(self, rng)
            name = f"{colour} {shape}"
            qas.append(QA("presence", f"Is there {article(name)} {name}?", "no", present=False))
        return qas


def article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


def absent_object(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A (shape, colour) not in the scene: half the time a present shape in a new colour."""
    present = {(o.shape, o.colour) for o in scene.objects}
    if rng.random() < 0.5:
        shape = rng.choice([o.shape for o in scene.objects])
    else:
        missing = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
        shape = rng.choice(missing) if missing else rng.choice(SHAPES)
    colours = [c for c in COLOURS if (shape, c) not in present]
    return shape, rng.choice(colours)


def _background(kind: str, rng: random.Random) -> Image.Image:
    np_rng = np.random.default_rng(rng.randrange(2**32))
    base = np.array([rng.randint(150, 235)] * 3, dtype=np.float32)
    base += np.array([rng.randint(-12, 12) for _ in range(3)], dtype=np.float32)
    img = np.broadcast_to(base, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
    if kind == "noise":
        img += np_rng.normal(0.0, 14.0, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    elif kind == "stripes":
        period = rng.randint(10, 28)
        phase = np.arange(IMAGE_SIZE)
        band = ((phase // period) % 2 == 0).astype(np.float32) * rng.randint(12, 30)
        img += band[:, None, None] if rng.random() < 0.5 else band[None, :, None]
    elif kind == "checker":
        period = rng.randint(12, 32)
        idx = np.arange(IMAGE_SIZE) // period
        board = ((idx[:, None] + idx[None, :]) % 2).astype(np.float32) * rng.randint(12, 30)
        img += board[:, :, None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _star(cx: int, cy: int, r: int, rotation: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = rotation + math.pi * i / 5 - math.pi / 2
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, r: int, rng: random.Random) -> None:
    cx, cy = obj.centre
    fill = tuple(int(np.clip(c + rng.randint(-15, 15), 0, 255)) for c in COLOURS[obj.colour])
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = int(r * 0.85)
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif obj.shape == "triangle":
        h = r * 1.0
        draw.polygon([(cx, cy - h), (cx - h, cy + h * 0.8), (cx + h, cy + h * 0.8)], fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(cx, cy, int(r * 1.15), rng.uniform(-0.2, 0.2)), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def make_scene(seed: int, n_objects: int | None = None) -> Scene:
    """The scene of `seed`: 1-3 objects (distinct shapes and grid cells), drawn at 224 x 224."""
    rng = random.Random(seed)
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    if not 1 <= n <= len(SHAPES):
        raise ValueError(f"n_objects must be between 1 and {len(SHAPES)}")
    background = rng.choice(BACKGROUNDS)
    image = _background(background, rng)
    draw = ImageDraw.Draw(image)
    shapes = rng.sample(SHAPES, n)
    cells = rng.sample(range(len(POSITIONS)), n)
    cell = IMAGE_SIZE / 3
    objects = []
    for shape, index in zip(shapes, cells, strict=True):
        size = rng.choice(tuple(SIZES))
        r = SIZES[size]
        row, col = divmod(index, 3)
        jitter = max(0, int(cell / 2 - r) - 2)
        cx = int(col * cell + cell / 2) + rng.randint(-jitter, jitter)
        cy = int(row * cell + cell / 2) + rng.randint(-jitter, jitter)
        obj = SceneObject(shape, rng.choice(tuple(COLOURS)), size, POSITIONS[index], (cx, cy))
        _draw(draw, obj, r, rng)
        objects.append(obj)
    return Scene(seed=seed, objects=objects, background=background, image=image)


def compose_scene(
    objects: list[tuple[str, str, str]], seed: int = 0, size: str = "large", background: str = "plain"
) -> Scene:
    """A scene with exactly these (colour, shape, position) objects, e.g.
    [("red", "circle", "left"), ("blue", "square", "right")]: for examples and planted tests."""
    rng = random.Random(seed)
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}")
    image = _background(background, rng)
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIZE / 3
    placed = []
    for colour, shape, position in objects:
        if colour not in COLOURS or shape not in SHAPES or position not in POSITIONS:
            raise ValueError(f"unknown object ({colour!r}, {shape!r}, {position!r})")
        row, col = divmod(POSITIONS.index(position), 3)
        centre = (int(col * cell + cell / 2), int(row * cell + cell / 2))
        obj = SceneObject(shape, colour, size, position, centre)
        _draw(draw, obj, SIZES[size], rng)
        placed.append(obj)
    return Scene(seed=seed, objects=placed, background=background, image=image)


# Seeds of the training scenes and of the held-out scenes never overlap.
TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 10_000_000


def heldout_seeds(n: int) -> list[int]:
    return [HELDOUT_SEED_BASE + i for i in range(n)]
