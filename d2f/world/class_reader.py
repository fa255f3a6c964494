"""A dataset of a few classes as a user's folder, and the classifier that reads a sample's class back.

"Your own images", as a learner would bring them: a folder of images of a few kinds, captioned by kind. ``ClassSet``
names one such set: its classes, how a class is captioned (``"a digit 3"``) and drawn. ``ClassSet.write(folder)``
writes an imagefolder (PNGs + ``metadata.jsonl``, the layout of a user's folder), so ``d2f train --data FOLDER``
reads it like any user's data. ``train_reader`` fits a small CNN (``ClassReader``) on fresh images of the same
generator (never the finetune's seed-0 data), and ``class_accuracy`` is the fraction of samples that it reads as the
class their caption asks for: the number that says whether a finetune learnt the *content*. The sets themselves:
``d2f.world.class_sets``.
"""

from __future__ import annotations

import json
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
