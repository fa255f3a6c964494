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

import json
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from d2f.world.augment import augment
from d2f.world.evaluator import conv_body
from d2f.world.glyphs import draw_glyph

FONTS = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmb10.ttf")
DIGITS = "0123456789"
_SUPERSAMPLE = 4


def caption(digit: str) -> str:
    return f"a digit {digit}"


def draw_digit(digit: str, rng: random.Random, resolution: int = 32):
    """One digit, light (near-white, slightly tinted) on dark, about half to three quarters of the image tall
    (font size 70-100% of the side), tilted up to 12 degrees."""
    from PIL import Image

    side = resolution * _SUPERSAMPLE
    ink = tuple(rng.randint(200, 255) for _ in range(3))
    paper = tuple(rng.randint(0, 45) for _ in range(3))
    image = draw_glyph(digit, rng.choice(FONTS), rng.uniform(0.7, 1.0), ink, paper, rng, side, rng.uniform(-12, 12))
    return image.resize((resolution, resolution), Image.LANCZOS)


def make_digits(num_images: int, seed: int, resolution: int = 32) -> tuple[list, list[str]]:
    """``num_images`` (PIL image, digit) pairs, the digits cycling 0-9; deterministic in all arguments."""
    rng = random.Random(f"digits-{seed}")
    labels = [DIGITS[k % 10] for k in range(num_images)]
    return [draw_digit(d, rng, resolution) for d in labels], labels


def write_digits(folder: str | Path, num_images: int = 1000, seed: int = 0, resolution: int = 32) -> Path:
    """The dataset as an imagefolder: ``00000.png`` ... and ``metadata.jsonl`` with ``file_name`` and ``text``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = make_digits(num_images, seed, resolution)
    with open(folder / "metadata.jsonl", "w") as meta:
        for k, (image, digit) in enumerate(zip(images, labels)):
            image.save(folder / f"{k:05d}.png")
            meta.write(json.dumps({"file_name": f"{k:05d}.png", "text": caption(digit)}) + "\n")
    return folder


def as_tensor(images) -> torch.Tensor:
    """PIL images -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2) / 255.0


class DigitClassifier(nn.Module):
    """(B, 3, 32, 32) in [0, 1] -> logits (B, 10): three stages of (conv, BatchNorm, SiLU, stride-2 conv), then
    mean and max pooling (as the shapes evaluator, ``d2f.world.evaluator``)."""

    def __init__(self, channels=(16, 32, 64)):
        super().__init__()
        self.body, c_in = conv_body(channels)
        self.head = nn.Linear(2 * c_in, len(DIGITS))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.body(images * 2 - 1)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[str]:
        return [DIGITS[i] for i in self.eval()(images).argmax(-1).tolist()]


def train_classifier(steps: int = 600, batch_size: int = 64, seed: int = 1000, log=None) -> DigitClassifier:
    """Train on fresh generator images (never the finetune's ``seed``-0 data), with the shapes evaluator's
    blur / colour / noise augmentation so it also reads blurrier generated samples."""
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), random.Random(f"digit-classifier-{seed}")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    model.train()
    for step in range(steps):
        labels = [rng.choice(DIGITS) for _ in range(batch_size)]
        x = augment(as_tensor([draw_digit(d, rng) for d in labels]), gen)
        loss = F.cross_entropy(model(x), torch.tensor([DIGITS.index(d) for d in labels]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and step % 100 == 0:
            log(f"classifier step {step} loss {loss.item():.3f}")
    return model.eval()


def digit_accuracy(model: DigitClassifier, images: torch.Tensor, prompts: list[str]) -> tuple[int, int]:
    """(correct, n): how many samples for ``"a digit k"`` the classifier reads as ``k``."""
    truth = [p.strip().split()[-1] for p in prompts]
    predicted = model.predict(images)
    return sum(p == t for p, t in zip(predicted, truth)), len(truth)
