"""User-style datasets of a few classes, each with the classifier that reads a sample's class back.

"Your own images", as a learner would bring them: a folder of images of a few kinds, captioned by kind, that no
part of the built-in world was trained on. ``ClassSet`` names one such set: its classes, how a class is captioned
(``"a digit 3"``) and drawn. ``ClassSet.write(folder)`` writes an imagefolder (PNGs + ``metadata.jsonl``, the
layout of a user's folder), so ``d2f train --data FOLDER`` reads it like any user's data. ``train_reader`` fits a
small CNN on fresh images of the same generator (never the finetune's seed-0 data), and ``class_accuracy`` is the
fraction of samples for a caption that it reads as that caption's class: the number that says whether a finetune
learnt the *content*.

The sets (``CLASS_SETS``): ``digits`` (``d2f.world.digits``), ``letters`` (ten capital letters, dark on light,
in the same unseen fonts) and ``patterns`` (eight periodic textures drawn with numpy). ``benchmarks/own_images_auto.py``
measures ``d2f train``'s plain command on them.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from d2f.world.augment import augment
from d2f.world.evaluator import conv_body

SUPERSAMPLE = 4  # draw at 4x the resolution, then downsample: anti-aliased edges like a real photo's


@dataclass(frozen=True)
class ClassSet:
    """A dataset of ``classes``; ``caption(k)`` the caption of class ``k``; ``draw(k, rng, resolution)`` one PIL
    image of it (deterministic in ``rng``)."""

    name: str
    classes: tuple[str, ...]
    caption: Callable[[str], str]
    draw: Callable[[str, random.Random, int], object]

    def make(self, num_images: int, seed: int, resolution: int = 32) -> tuple[list, list[str]]:
        """``num_images`` (PIL image, class) pairs, the classes cycling; deterministic in all arguments."""
        rng = random.Random(f"{self.name}-{seed}")
        labels = [self.classes[k % len(self.classes)] for k in range(num_images)]
        return [self.draw(k, rng, resolution) for k in labels], labels

    def write(self, folder: str | Path, num_images: int = 1000, seed: int = 0, resolution: int = 32) -> Path:
        """The set as an imagefolder: ``00000.png`` ... and ``metadata.jsonl`` with ``file_name`` and ``text``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = self.make(num_images, seed, resolution)
        with open(folder / "metadata.jsonl", "w") as meta:
            for k, (image, label) in enumerate(zip(images, labels)):
                image.save(folder / f"{k:05d}.png")
                meta.write(json.dumps({"file_name": f"{k:05d}.png", "text": self.caption(label)}) + "\n")
        return folder

    def label_of(self, prompt: str) -> str:
        """The class a caption asks for (the inverse of ``caption``)."""
        by_caption = {self.caption(k): k for k in self.classes}
        return by_caption[prompt.strip()]


def as_tensor(images) -> torch.Tensor:
    """PIL images -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2) / 255.0


class ClassReader(nn.Module):
    """(B, 3, 32, 32) in [0, 1] -> logits (B, len(classes)): three stages of (conv, BatchNorm, SiLU, stride-2
    conv), then mean and max pooling (as the shapes evaluator, ``d2f.world.evaluator``)."""

    def __init__(self, classes: tuple[str, ...], channels=(16, 32, 64)):
        super().__init__()
        self.classes = tuple(classes)
        self.body, c_in = conv_body(channels)
        self.head = nn.Linear(2 * c_in, len(self.classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images * 2 - 1)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        return [self.classes[i] for i in self.eval()(images).argmax(-1).tolist()]


def train_reader(
    classes, draw, tag: str, steps: int = 600, batch_size: int = 64, seed: int = 1000, log=None, make=None
) -> ClassReader:
    """A reader (``make()``, default ``ClassReader(classes)``, built after seeding: its initial weights are part of
    the seed) fitted on fresh images of ``draw`` (random classes; the rng seeded by ``tag`` and ``seed``), with the
    shapes evaluator's blur / colour / noise augmentation so that it also reads blurrier generated samples."""
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), random.Random(f"{tag}-classifier-{seed}")
    reader = make() if make else ClassReader(classes)
    opt = torch.optim.AdamW(reader.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    reader.train()
    for step in range(steps):
        labels = [rng.choice(classes) for _ in range(batch_size)]
        x = augment(as_tensor([draw(k, rng, 32) for k in labels]), gen)
        loss = F.cross_entropy(reader(x), torch.tensor([classes.index(k) for k in labels]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and step % 100 == 0:
            log(f"{tag} classifier step {step} loss {loss.item():.3f}")
    return reader.eval()


def class_accuracy(reader: ClassReader, images: torch.Tensor, truth: list[str]) -> tuple[int, int]:
    """(correct, n): how many of ``images`` the reader reads as their ``truth`` class."""
    predicted = reader.predict(images)
    return sum(p == t for p, t in zip(predicted, truth)), len(truth)


# --- letters: ten capitals that differ in shape, dark ink on light paper (digits are light on dark) --------------
LETTERS = tuple("ABEGHKMRSW")


def draw_letter(letter: str, rng: random.Random, resolution: int = 32):
    from PIL import Image

    from d2f.world.digits import FONTS
    from d2f.world.glyphs import draw_glyph

    side = resolution * SUPERSAMPLE
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    paper = tuple(rng.randint(205, 255) for _ in range(3))
    image = draw_glyph(letter, rng.choice(FONTS), rng.uniform(0.65, 0.95), ink, paper, rng, side, rng.uniform(-10, 10))
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


def _digit_set() -> ClassSet:
    from d2f.world.digits import digit_set

    return digit_set()


CLASS_SETS: dict[str, Callable[[], ClassSet]] = {
    "digits": _digit_set,
    "letters": lambda: ClassSet("letters", LETTERS, lambda k: f"a letter {k}", draw_letter),
    "patterns": lambda: ClassSet("patterns", PATTERNS, lambda k: f"a pattern of {k}", draw_pattern),
}


def class_set(name: str) -> ClassSet:
    return CLASS_SETS[name]()


def reader_for(cset: ClassSet, steps: int = 600, seed: int = 1000, log=None) -> ClassReader:
    """The classifier of ``cset`` (for digits: ``d2f.world.digits.train_classifier``, the same rng streams)."""
    tag = "digit" if cset.name == "digits" else cset.name
    make = None
    if cset.name == "digits":
        from d2f.world.digits import DigitClassifier as make
    return train_reader(cset.classes, cset.draw, tag, steps=steps, seed=seed, log=log, make=make)
