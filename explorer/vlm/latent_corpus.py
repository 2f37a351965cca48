"""The text corpus behind the LatentLens text bank: scene captions plus general sentences.

LatentLens (Krojer et al. 2026) runs a language model over a text corpus and keeps the
contextual hidden state of every token; a visual token is then described by its nearest
text-token representations. The paper uses a large corpus (117k sentences about 23k WordNet
concepts); here the corpus ships with the app and is small enough to encode on two CPU cores
in under two minutes:

- captions and question-answer pairs of the synthetic scenes the demo VLM was trained on
  (the vocabulary of `explorer.vlm.scenes`: shapes, colours, sizes, grid positions), and
- a few thousand general sentences drawn from templates (objects with their usual colours,
  animals, food, places, weather, shapes in everyday contexts, numbers, actions).

Everything is generated from fixed seeds, so the corpus (and its hash, part of the bank's
cache key) is the same on every machine.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

from explorer.vlm.scenes import COLOURS, NUMBER_WORDS, POSITIONS, SHAPES, SIZES, article

SOURCE_CAPTION = "caption"
SOURCE_GENERAL = "general"
N_SCENES = 350
N_GENERAL = 2400


@dataclass(frozen=True)
class Corpus:
    """sentences: the texts, in order; sources: "caption" or "general" for each."""

    sentences: tuple[str, ...]
    sources: tuple[str, ...]

    @property
    def digest(self) -> str:
        """sha256 (16 hex digits) of the sentences: part of the bank's cache key."""
        h = hashlib.sha256()
        for s in self.sentences:
            h.update(s.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.sentences)

    def head(self, n: int) -> Corpus:
        """A smaller corpus with (about) the same mix: the first n of each source, interleaved."""
        caps = [s for s, src in zip(self.sentences, self.sources, strict=True) if src == SOURCE_CAPTION]
        gen = [s for s, src in zip(self.sentences, self.sources, strict=True) if src == SOURCE_GENERAL]
        n_caps = min(len(caps), max(1, n * len(caps) // max(1, len(self))))
        return Corpus(
            tuple(caps[:n_caps] + gen[: n - n_caps]),
            tuple([SOURCE_CAPTION] * n_caps + [SOURCE_GENERAL] * len(gen[: n - n_caps])),
        )


# ---- scene captions -------------------------------------------------------------------------
def _scene_texts(rng: random.Random) -> list[str]:
    """Caption + questions and answers of one random scene, worded as explorer.vlm.scenes does."""
    n = rng.randint(1, 3)
    shapes = rng.sample(SHAPES, n)
    cells = rng.sample(range(len(POSITIONS)), n)
    objs = [
        (rng.choice(tuple(SIZES)), rng.choice(tuple(COLOURS)), s, POSITIONS[c])
        for s, c in zip(shapes, cells, strict=True)
    ]
    names = [f"{article(f'{c} {s}')} {c} {s}" for _, c, s, _ in objs]
    caption = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    size, colour, shape, where = rng.choice(objs)
    where_phrase = {"center": "in the center", "left": "on the left", "right": "on the right"}.get(
        where, f"at the {where}" if where in ("top", "bottom") else f"in the {where}"
    )
    return [
        caption[0].upper() + caption[1:] + ".",
        f"There is {article(size)} {size} {colour} {shape} {where_phrase}.",
        f"What color is the {shape}? The {shape} is {colour}.",
        f"How many shapes are there? There are {NUMBER_WORDS[n]}." if n > 1 else "How many shapes? Just one.",
    ]


# ---- general sentences ----------------------------------------------------------------------
COLOURED_THINGS = {
    "red": ("apple", "fire truck", "tomato", "strawberry", "rose", "stop sign", "brick wall"),
    "green": ("leaf", "frog", "lime", "field of grass", "cucumber", "pine tree"),
    "blue": ("sky", "ocean", "sapphire", "pair of jeans", "whale", "lake"),
    "yellow": ("banana", "lemon", "sunflower", "school bus", "duckling", "egg yolk"),
    "purple": ("grape", "plum", "lavender", "eggplant", "violet"),
    "orange": ("carrot", "pumpkin", "tangerine", "fox", "sunset"),
    "white": ("snow", "cloud", "sheet of paper", "swan", "glass of milk"),
    "black": ("night sky", "crow", "piece of coal", "tire", "panther"),
    "brown": ("bear", "tree trunk", "loaf of bread", "cup of coffee", "wooden table"),
    "gray": ("elephant", "stone", "mouse", "rain cloud"),
}
SHAPE_THINGS = {
    "circle": ("wheel", "coin", "clock face", "full moon", "plate", "ring"),
    "square": ("window", "chessboard", "napkin", "tile", "box lid"),
    "triangle": ("slice of pizza", "roof", "road sign", "mountain peak", "sail"),
    "star": ("starfish", "sheriff badge", "flag emblem", "cookie", "ornament"),
}
ANIMALS = ("dog", "cat", "horse", "bird", "rabbit", "cow", "lion", "tiger", "monkey", "owl", "fish", "sheep")
PEOPLE = ("the teacher", "my brother", "the doctor", "a child", "the farmer", "our neighbour", "the pilot",
          "a student", "the chef", "my grandmother", "the artist", "a tourist")  # fmt: skip
PLACES = ("the park", "the kitchen", "the station", "the library", "the beach", "the market", "the garden",
          "the forest", "the city", "the museum", "the river", "the mountains")  # fmt: skip
FOODS = ("bread", "soup", "rice", "cheese", "cake", "pasta", "salad", "fish", "chocolate", "honey", "tea")
VERBS_PAST = (
    "painted",
    "found",
    "bought",
    "carried",
    "drew",
    "cleaned",
    "dropped",
    "sold",
    "built",
    "opened",
)
WEATHER = ("sunny", "rainy", "cold", "windy", "warm", "foggy", "stormy", "cloudy")
TIMES = ("in the morning", "at noon", "in the evening", "at night", "on Monday", "last summer", "every day")
SIZE_WORDS = ("small", "large", "tiny", "huge", "big", "little")
FEELINGS = ("happy", "tired", "surprised", "calm", "nervous", "proud", "hungry")
DIRECTIONS = ("left", "right", "top", "bottom", "middle", "corner", "edge", "center")
TOPICS = ("music", "science", "history", "football", "painting", "cooking", "mathematics", "poetry")
# broad everyday vocabulary, so that neighbours can be more than the scene words
NOUNS = (
    "car",
    "bicycle",
    "train",
    "boat",
    "plane",
    "bridge",
    "tower",
    "house",
    "door",
    "window",
    "chair",
    "table",
    "bed",
    "lamp",
    "book",
    "pen",
    "cup",
    "bottle",
    "knife",
    "spoon",
    "phone",
    "computer",
    "camera",
    "guitar",
    "piano",
    "drum",
    "ball",
    "kite",
    "balloon",
    "hat",
    "shirt",
    "shoe",
    "coat",
    "umbrella",
    "bag",
    "key",
    "clock",
    "mirror",
    "candle",
    "basket",
    "rope",
    "ladder",
    "fence",
    "wall",
    "road",
    "street",
    "river",
    "lake",
    "hill",
    "valley",
    "island",
    "desert",
    "cave",
    "forest",
    "meadow",
    "garden",
    "farm",
    "village",
    "castle",
    "church",
    "school",
    "hospital",
    "shop",
    "factory",
    "harbor",
    "tree",
    "flower",
    "grass",
    "leaf",
    "stone",
    "rock",
    "sand",
    "water",
    "ice",
    "snow",
    "rain",
    "wind",
    "cloud",
    "sun",
    "moon",
    "star",
    "sky",
    "fire",
    "smoke",
    "light",
    "shadow",
    "wood",
    "metal",
    "glass",
    "paper",
    "cloth",
    "wool",
    "silk",
    "gold",
    "silver",
    "iron",
    "copper",
    "plastic",
    "brick",
    "marble",
    "hand",
    "face",
    "eye",
    "ear",
    "nose",
    "mouth",
    "hair",
    "arm",
    "leg",
    "foot",
    "heart",
    "voice",
    "king",
    "queen",
    "soldier",
    "sailor",
    "baker",
    "nurse",
    "driver",
    "singer",
    "dancer",
    "painter",
    "engineer",
    "lawyer",
    "judge",
    "poet",
    "scientist",
    "worker",
    "friend",
    "stranger",
    "family",
)
ADJECTIVES = (
    "bright",
    "dark",
    "pale",
    "shiny",
    "dull",
    "smooth",
    "rough",
    "soft",
    "hard",
    "heavy",
    "light",
    "round",
    "flat",
    "sharp",
    "narrow",
    "wide",
    "tall",
    "short",
    "long",
    "thin",
    "thick",
    "empty",
    "full",
    "old",
    "new",
    "young",
    "ancient",
    "modern",
    "clean",
    "dirty",
    "wet",
    "dry",
    "hot",
    "cold",
    "quiet",
    "loud",
    "fast",
    "slow",
    "strong",
    "weak",
    "rich",
    "poor",
    "famous",
    "strange",
    "beautiful",
    "ugly",
    "striped",
    "spotted",
    "wooden",
    "metallic",
    "transparent",
    "crowded",
    "lonely",
    "broken",
)
VERBS = ("saw", "noticed", "painted", "photographed", "repaired", "described", "carried", "found", "lost",
         "admired", "measured", "covered", "moved", "hid", "washed", "ignored", "touched", "sketched")  # fmt: skip


def _general(rng: random.Random) -> str:
    """One sentence from a random template."""
    colour = rng.choice(tuple(COLOURED_THINGS))
    thing = rng.choice(COLOURED_THINGS[colour])
    shape = rng.choice(tuple(SHAPE_THINGS))
    shaped = rng.choice(SHAPE_THINGS[shape])
    person, place, animal = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(ANIMALS)
    verb, food, size = rng.choice(VERBS_PAST), rng.choice(FOODS), rng.choice(SIZE_WORDS)
    count = rng.choice(NUMBER_WORDS[2:] + ("five", "six", "seven", "ten"))
    noun, noun2, adj, adj2 = (
        rng.choice(NOUNS),
        rng.choice(NOUNS),
        rng.choice(ADJECTIVES),
        rng.choice(ADJECTIVES),
    )
    everyday = (
        f"{person.capitalize()} {rng.choice(VERBS)} {article(adj)} {adj} {noun} near the {noun2}.",
        f"The {noun} was {adj} and {adj2}.",
        f"{article(adj).capitalize()} {adj} {noun} stood beside {article(noun2)} {noun2}.",
        f"We {rng.choice(VERBS)} the {noun} {rng.choice(TIMES)}.",
        f"The {noun} in the picture looks {adj}.",
        f"A {noun2} is usually {rng.choice(ADJECTIVES)}, but this {noun2} was {adj}.",
    )
    templates = everyday + (
        f"The {thing} was {colour}.",
        f"{person.capitalize()} {verb} {article(colour)} {colour} {shape} on the wall.",
        f"A {shaped} looks like a {shape}.",
        f"The {shaped} is shaped like a {shape}.",
        f"She drew a {size} {colour} {shape} in the {rng.choice(DIRECTIONS)} of the page.",
        f"In {place} we saw a {size} {animal}.",
        f"The {animal} slept next to the {thing}.",
        f"It was {rng.choice(WEATHER)} {rng.choice(TIMES)}, so we stayed in {place}.",
        f"{person.capitalize()} ate {food} {rng.choice(TIMES)}.",
        f"There were {count} {animal}s in {place}.",
        f"I counted {count} {shape}s on the flag.",
        f"{person.capitalize()} felt {rng.choice(FEELINGS)} after the trip to {place}.",
        f"The {colour} {thing} stood out against the {rng.choice(tuple(COLOURED_THINGS))} background.",
        f"Put the {size} box on the {rng.choice(DIRECTIONS)} side of the table.",
        f"{person.capitalize()} likes {rng.choice(TOPICS)} more than {rng.choice(TOPICS)}.",
        f"The picture shows {article(colour)} {colour} {thing} and a {size} {animal}.",
        f"Is the {thing} {colour}? Yes, it is {colour}.",
        f"Is there {article(animal)} {animal} in the photo? No, there is only a {shaped}.",
        f"The sign at {place} has {article(colour)} {colour} {shape} on it.",
        f"We {verb} a {size} {shaped} at {place}.",
        f"Her favourite colour is {colour}, like a {thing}.",
        f"The {animal} ran to the {rng.choice(DIRECTIONS)} of the field.",
        f"A {shape} has {'no corners' if shape == 'circle' else 'sharp corners'}.",
        f"{person.capitalize()} wrote a book about {rng.choice(TOPICS)}.",
    )
    # everyday sentences (broad vocabulary) a third of the time, the rest scene-related templates
    return rng.choice(everyday) if rng.random() < 0.35 else rng.choice(templates)


@lru_cache(maxsize=1)
def default_corpus() -> Corpus:
    """The shipped corpus: captions and QA of N_SCENES scenes, then N_GENERAL distinct general
    sentences (seeded; about 2,900 sentences, 9 tokens each on average)."""
    rng = random.Random(20260131)
    sentences: list[str] = []
    sources: list[str] = []
    seen: set[str] = set()
    for _ in range(N_SCENES):
        for text in _scene_texts(rng):
            if text not in seen:
                seen.add(text)
                sentences.append(text)
                sources.append(SOURCE_CAPTION)
    n_general = 0
    while n_general < N_GENERAL:
        text = _general(rng)
        if text not in seen:
            seen.add(text)
            sentences.append(text)
            sources.append(SOURCE_GENERAL)
            n_general += 1
    return Corpus(tuple(sentences), tuple(sources))
