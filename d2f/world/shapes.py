"""The built-in world's data: procedurally drawn, captioned shapes.

One shape per RGB image, drawn deterministically from a seed. Factors: shape (4), colour (6), size,
position and **domain**:

- ``base``: a filled shape on a light background. The built-in priors are pretrained on this.
- ``target``: the same shape as a thick outline on a dark background. The priors never see it; the
  default ``d2f train`` run finetunes them into it.

Captions name only shape and colour ("a red circle"), in both domains. The target domain adds **no**
style phrase on purpose: the finetune must change what the model draws *for the same prompt*, which is
what a user finetuning SD on their own style does, and it lets ``domain_accuracy`` read the shift
directly (the same prompts before and after).

Images are drawn at 4x and downsampled (antialiased edges), so any resolution works (32 px by default).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 200, 30),
    "purple": (145, 60, 195),
    "orange": (245, 130, 20),
}
# colours the priors never drew: the "new content" task ``shapes-novel-colours`` (``d2f/world/novel.py``);
# the evaluator's colour head does not know them either (novel.py scores them by pixel colour instead)
NOVEL_COLOURS = {
    "pink": (240, 110, 190),
    "cyan": (30, 200, 215),
    "brown": (130, 80, 35),
}
DOMAINS = ("base", "target")
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one image. ``size`` is the half-extent and ``cx, cy`` the centre,
    all as fractions of the image side."""

    shape: str
    colour: str
    domain: str
    size: float
    cx: float
    cy: float
    background: tuple[int, int, int]


def caption(shape: str, colour: str) -> str:
    """The caption of a shape: ``"a red circle"`` (the same in both domains, see the module doc)."""
    return f"a {colour} {shape}"


def all_prompts() -> list[str]:
    """Every caption of the world (24), in a fixed order: shape-major, then colour."""
    return [caption(s, c) for s in SHAPES for c in COLOURS]


def parse_prompt(text: str) -> tuple[str, str] | None:
    """``"a red circle"`` -> ``("circle", "red")``; ``None`` for text that is not a world caption."""
    words = text.strip().lower().split()
    if len(words) == 3 and words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES:
        return words[2], words[1]
    return None


def random_spec(rng: random.Random, domain: str, shape: str | None = None, colour: str | None = None) -> ShapeSpec:
    """Draw the free factors from ``rng``; shape and colour may be fixed (e.g. from a prompt)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    shape = shape or rng.choice(SHAPES)
    colour = colour or rng.choice(sorted(COLOURS))
    size = rng.uniform(0.22, 0.34)
    margin = size + 0.06
    cx, cy = rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)
    if domain == "base":
        background = tuple(rng.randint(215, 245) for _ in range(3))
    else:
        background = tuple(rng.randint(10, 40) for _ in range(3))
    return ShapeSpec(shape, colour, domain, size, cx, cy, background)


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape of half-extent ``r`` (pixels); ``None`` for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        r *= 0.85  # same visual area as the circle, roughly
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "cross":
        w = r * 0.38
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def draw(spec: ShapeSpec, resolution: int = 32) -> Image.Image:
    """Render one spec as an RGB ``PIL.Image`` of side ``resolution``."""
    side = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (side, side), spec.background)
    pen = ImageDraw.Draw(image)
    colour = COLOURS[spec.colour] if spec.colour in COLOURS else NOVEL_COLOURS[spec.colour]
    cx, cy, r = spec.cx * side, spec.cy * side, spec.size * side
    # target domain: an outline about 1/14 of the image thick (2-3 px at 32 px), no fill
    fill, width = (colour, 0) if spec.domain == "base" else (None, max(1, round(side / 14)))
    outline = colour if width else None
    points = _outline(spec.shape, cx, cy, r)
    if points is None:
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=outline, width=width)
    else:
        pen.polygon(points, fill=fill, outline=outline, width=width)
    return image.resize((resolution, resolution), Image.LANCZOS)


def make_specs(
    num_images: int, domain: str = "base", seed: int = 0, prompts: list[str] | None = None
) -> list[ShapeSpec]:
    """``num_images`` specs from ``seed``. With ``prompts``, image k has prompt ``k % len(prompts)``;
    otherwise shape and colour are drawn uniformly too."""
    rng = random.Random(f"{domain}-{seed}")
    specs = []
    for k in range(num_images):
        fixed = parse_prompt(prompts[k % len(prompts)]) if prompts else None
        if prompts and fixed is None:
            raise ValueError(f"{prompts[k % len(prompts)]!r} is not a caption of the shapes world")
        specs.append(random_spec(rng, domain, *(fixed or (None, None))))
    return specs


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1], the VAE's range:  x = p / 127.5 - 1."""
    return pixels.float() / 127.5 - 1


def shape_images(num_images: int, domain: str, seed: int, resolution: int = 32) -> tuple[torch.Tensor, list[str]]:
    """``num_images`` generator images as a float tensor (B, 3, H, W) in [-1, 1] (the VAE's range),
    with their captions."""
    specs = make_specs(num_images, domain, seed)
    pixels = np.stack([np.asarray(draw(s, resolution)) for s in specs])  # (B, H, W, 3) uint8
    images = to_unit_range(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return images, [caption(s.shape, s.colour) for s in specs]


def make_dataset(num_images: int, domain: str = "base", seed: int = 0, resolution: int = 32):
    """A ``datasets.Dataset`` with columns ``image`` (PIL), ``text`` (caption) and the factor labels
    ``shape``, ``colour``, ``domain``. Deterministic in (num_images, domain, seed, resolution)."""
    import datasets  # heavy; only the dataset builders need it

    specs = make_specs(num_images, domain, seed)
    return datasets.Dataset.from_dict(
        {
            "image": [draw(s, resolution) for s in specs],
            "text": [caption(s.shape, s.colour) for s in specs],
            "shape": [s.shape for s in specs],
            "colour": [s.colour for s in specs],
            "domain": [s.domain for s in specs],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "text": datasets.Value("string"),
                "shape": datasets.Value("string"),
                "colour": datasets.Value("string"),
                "domain": datasets.Value("string"),
            }
        ),
    )


def write_imagefolder(dataset, folder: str | Path) -> Path:
    """Write a dataset with ``image`` and ``text`` columns as an imagefolder: PNG files plus a
    ``metadata.jsonl`` (``{"file_name": ..., "text": ...}`` per line), the layout
    ``datasets.load_dataset("imagefolder", data_dir=folder)`` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as meta:
        for k, row in enumerate(dataset):
            name = f"{k:05d}.png"
            row["image"].save(folder / name)
            extra = {key: row[key] for key in ("shape", "colour", "domain") if key in row}
            meta.write(json.dumps({"file_name": name, "text": row["text"], **extra}) + "\n")
    return folder
