"""A user-style dataset the built-in world never saw, and the classifier that reads it.

"Your own images", as a learner would bring them: digits 0-9, light on dark, in fonts that no part of the
built-in world was trained on (STIX and Computer Modern, which matplotlib ships; the VAE's glyphs are DejaVu
and the priors never drew a glyph), at random sizes, positions and small angles, captioned ``"a digit 3"``.

``write_digits(folder)`` writes it as an imagefolder (PNGs + ``metadata.jsonl``), the layout a user's own
data has, so ``d2f train --data FOLDER`` reads it like any user's folder. ``DigitClassifier`` (a small CNN
trained on fresh images of the same generator, ``train_classifier``) reads the digit back from a sample:
``digit_accuracy`` is the fraction of samples for ``"a digit k"`` that it reads as ``k``, the number that
says whether a finetune learnt the *content*. ``benchmarks/own_images.py`` runs the whole demonstration.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from d2f.world.class_reader import SUPERSAMPLE, ClassReader, ClassSet, class_accuracy, train_reader
from d2f.world.class_reader import as_tensor as as_tensor  # digits.as_tensor, as before
from d2f.world.glyphs import UNSEEN_FONTS, draw_glyph

FONTS = UNSEEN_FONTS
DIGITS = "0123456789"


def caption(digit: str) -> str:
    return f"a digit {digit}"


def draw_digit(digit: str, rng: random.Random, resolution: int = 32):
    """One digit, light (near-white, slightly tinted) on dark, about half to three quarters of the image tall
    (font size 70-100% of the side), tilted up to 12 degrees."""
    from PIL import Image

    side = resolution * SUPERSAMPLE
    ink = tuple(rng.randint(200, 255) for _ in range(3))
    paper = tuple(rng.randint(0, 45) for _ in range(3))
    image = draw_glyph(digit, rng.choice(FONTS), rng.uniform(0.7, 1.0), ink, paper, rng, side, rng.uniform(-12, 12))
    return image.resize((resolution, resolution), Image.LANCZOS)


def digit_set():
    """The digits as a ``d2f.world.class_reader.ClassSet`` (its ``make`` and ``write`` draw the same images)."""
    return ClassSet("digits", tuple(DIGITS), caption, draw_digit)


def make_digits(num_images: int, seed: int, resolution: int = 32) -> tuple[list, list[str]]:
    """``num_images`` (PIL image, digit) pairs, the digits cycling 0-9; deterministic in all arguments."""
    return digit_set().make(num_images, seed, resolution)


def write_digits(folder: str | Path, num_images: int = 1000, seed: int = 0, resolution: int = 32) -> Path:
    """The dataset as an imagefolder: ``00000.png`` ... and ``metadata.jsonl`` with ``file_name`` and ``text``."""
    return digit_set().write(folder, num_images, seed, resolution)


class DigitClassifier(ClassReader):
    """The digit reader: ``d2f.world.class_reader.ClassReader`` over the ten digits."""

    def __init__(self, channels=(16, 32, 64)):
        super().__init__(tuple(DIGITS), channels)


def train_classifier(steps: int = 600, batch_size: int = 64, seed: int = 1000, log=None) -> DigitClassifier:
    """Train on fresh generator images (never the finetune's ``seed``-0 data), with the shapes evaluator's
    blur / colour / noise augmentation so it also reads blurrier generated samples."""
    return train_reader(tuple(DIGITS), draw_digit, "digit", steps, batch_size, seed, log, make=DigitClassifier)


def digit_accuracy(model: DigitClassifier, images: torch.Tensor, prompts: list[str]) -> tuple[int, int]:
    """(correct, n): how many samples for ``"a digit k"`` the classifier reads as ``k``."""
    return class_accuracy(model, images, [p.strip().split()[-1] for p in prompts])
