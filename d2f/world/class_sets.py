"""The class datasets that d2f makes as stand-ins for a user's own images, none of which the built-in world saw.

- ``digits`` (``d2f.world.digits``): digits 0-9, light on dark, captioned "a digit 3";
- ``letters``: ten capital letters that differ in shape, dark ink on light paper, in the same unseen fonts,
  captioned "a letter B";
- ``patterns``: eight periodic textures in two random colours (stripes, bars, checks, dots, rings, waves,
  zigzags, grid), captioned "a pattern of dots".

Each is a ``d2f.world.class_reader.ClassSet`` (``write`` makes the user-style folder) with its classifier
(``reader_for``). ``benchmarks/own_images_auto.py`` measures ``d2f train``'s plain command on them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import numpy as np

from d2f.world.class_reader import SUPERSAMPLE, ClassReader, ClassSet, train_reader
from d2f.world.digits import digit_set, train_classifier
from d2f.world.glyphs import UNSEEN_FONTS, draw_glyph

# --- letters: ten capitals that differ in shape, dark ink on light paper (digits are light on dark) --------------
LETTERS = tuple("ABEGHKMRSW")


def draw_letter(letter: str, rng: random.Random, resolution: int = 32):
    from PIL import Image

    side = resolution * SUPERSAMPLE
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    paper = tuple(rng.randint(205, 255) for _ in range(3))
    image = draw_glyph(
        letter, rng.choice(UNSEEN_FONTS), rng.uniform(0.65, 0.95), ink, paper, rng, side, rng.uniform(-10, 10)
    )
    return image.resize((resolution, resolution), Image.LANCZOS)


# --- patterns: eight periodic textures in two random colours, random period, phase and small rotation -------------
PATTERNS = ("stripes", "bars", "checks", "dots", "rings", "waves", "zigzags", "grid")


def _pattern_field(kind: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Ink where the field is True, on coordinates in periods (u across, v down, r from the centre)."""
    frac = lambda a: a - np.floor(a)  # noqa: E731
    if kind == "stripes":  # horizontal bands
        return frac(v) < 0.5
    if kind == "bars":  # vertical bands
        return frac(u) < 0.5
    if kind == "checks":
        return (np.floor(u) + np.floor(v)) % 2 == 0
    if kind == "dots":  # a disc in every cell
        return (frac(u) - 0.5) ** 2 + (frac(v) - 0.5) ** 2 < 0.3**2
    if kind == "rings":
        return frac(r) < 0.5
    if kind == "waves":  # sine-shaped thin bands
        return np.abs(frac(v + 0.35 * np.sin(2 * math.pi * u / 1.5)) - 0.5) < 0.18
    if kind == "zigzags":  # triangle-wave thin bands
        return np.abs(frac(v + np.abs(frac(u) - 0.5)) - 0.5) < 0.18
    if kind == "grid":  # thin lines both ways
        return (np.abs(frac(u) - 0.5) > 0.35) | (np.abs(frac(v) - 0.5) > 0.35)
    raise ValueError(f"unknown pattern {kind!r}")


def draw_pattern(kind: str, rng: random.Random, resolution: int = 32):
    from PIL import Image

    side = resolution * SUPERSAMPLE
    period = rng.uniform(0.18, 0.3) * side  # 3-5 repeats across the image
    angle = math.radians(rng.uniform(-12, 12))
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) - side / 2
    u = (x * math.cos(angle) + y * math.sin(angle)) / period + rng.random()
    v = (-x * math.sin(angle) + y * math.cos(angle)) / period + rng.random()
    r = np.hypot(x + rng.uniform(-0.15, 0.15) * side, y + rng.uniform(-0.15, 0.15) * side) / period
    ink = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float64)
    paper = 255 - ink if rng.random() < 0.5 else np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float64)
    if np.abs(ink - paper).sum() < 200:  # keep the two colours apart: the class is in the geometry, not lost in it
        paper = 255 - ink
    mask = _pattern_field(kind, u, v, r)[..., None]
    pixels = np.where(mask, ink, paper).astype(np.uint8)
    return Image.fromarray(pixels).resize((resolution, resolution), Image.LANCZOS)


CLASS_SETS: dict[str, Callable[[], ClassSet]] = {
    "digits": digit_set,
    "letters": lambda: ClassSet("letters", LETTERS, lambda k: f"a letter {k}", draw_letter),
    "patterns": lambda: ClassSet("patterns", PATTERNS, lambda k: f"a pattern of {k}", draw_pattern),
}


def class_set(name: str) -> ClassSet:
    return CLASS_SETS[name]()


def reader_for(cset: ClassSet, steps: int = 600, seed: int = 1000, log=None) -> ClassReader:
    """The classifier of ``cset``; the digits' is ``d2f.world.digits.train_classifier``'s (the same one as ever)."""
    if cset.name == "digits":
        return train_classifier(steps=steps, seed=seed, log=log)
    return train_reader(cset.classes, cset.draw, cset.name, steps=steps, seed=seed, log=log)
