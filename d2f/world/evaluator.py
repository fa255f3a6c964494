"""The built-in world's evaluator: a small CNN that reads shape, colour and domain from an image.

It is the "Inception network" of the shapes world (see ``shapes.py``): ``metrics.py`` uses its three
heads for ``prompt_accuracy`` / ``domain_accuracy`` and its penultimate layer for ``fd``.

    images (B, 3, H, W) in [0, 1] --resize to 32 px--> 6 x (conv3x3, BatchNorm, SiLU) --> (B, 64, 4, 4)
        --[mean, max] over space--> (B, 128) --Linear+SiLU--> features (B, 64)
        --> logits: shape (B, 4), colour (B, 6), domain (B, 2)

Label order is the generator's (``SHAPES``, ``sorted(COLOURS)``, ``DOMAINS``) and is stored in
``config.json`` beside the weights, so a checkpoint always decodes with the order it was trained with.

It is trained on *fresh* generator images of both domains (a new batch is drawn every step, so it
never sees an image twice), with mild blur, noise and colour jitter so that it also reads generated
samples, which are blurrier than the generator's drawings. The shipped weights live in
``d2f/assets/evaluator/``; rebuild them with ``python -m d2f.world.build.evaluator_training --output DIR``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from d2f.world.shapes import COLOURS, DOMAINS, SHAPES

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "evaluator"
RESOLUTION = 32

COLOUR_NAMES = tuple(sorted(COLOURS))


def as_batch(images) -> torch.Tensor:
    """A float32 tensor (B, 3, H, W) in [0, 1] from such a tensor or from a list of PIL images."""
    if isinstance(images, (list, tuple)):
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise ValueError("images must be a non-empty list of PIL images or a (B, 3, H, W) tensor")
        arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError("all PIL images must have the same size; resize them first")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a (B, 3, H, W) tensor or a list of PIL images, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image tensor must have shape (B, 3, H, W), got {tuple(images.shape)}")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values (did sampling diverge?)")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"image values must lie in [0, 1], found [{lo:.3f}, {hi:.3f}]; images in [-1, 1] convert with (x + 1) / 2"
        )
    return images.clamp(0, 1)


def conv_body(channels) -> tuple[nn.Sequential, int]:
    """Per stage a 3x3 conv at full size, then a stride-2 one (32 -> 16 -> 8 -> 4 px for three stages), each
    with BatchNorm and SiLU; returns the stack and its output channels. BatchNorm matters, and so does the max
    pooling of ``features``: without them the shape heads learn far less in the same steps (the measurement is in
    ``benchmarks/results/world_build.md``)."""
    layers, c_in = [], 3
    for c in channels:
        for stride in (1, 2):
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c), nn.SiLU()]
            c_in = c
    return nn.Sequential(*layers), c_in


class Evaluator(nn.Module):
    """Three-headed classifier. ``channels`` are the widths of the three stride-2 stages."""

    def __init__(
        self,
        channels: tuple[int, ...] = (16, 32, 64),
        feature_dim: int = 64,
        shapes=SHAPES,
        colours=COLOUR_NAMES,
        domains=DOMAINS,
    ):
        super().__init__()
        self.config = {
            "resolution": RESOLUTION,
            "channels": list(channels),
            "feature_dim": feature_dim,
            "shapes": list(shapes),
            "colours": list(colours),
            "domains": list(domains),
        }
        self.body, c_in = conv_body(channels)
        self.neck = nn.Sequential(nn.Linear(2 * c_in, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict(
            {
                "shape": nn.Linear(feature_dim, len(shapes)),
                "colour": nn.Linear(feature_dim, len(colours)),
                "domain": nn.Linear(feature_dim, len(domains)),
            }
        )

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (RESOLUTION, RESOLUTION):
            images = F.interpolate(
                images, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False
            )
        return images * 2 - 1  # centre the inputs: [0, 1] -> [-1, 1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim) penultimate activations (for the FD)."""
        h = self.body(self._prepare(images))
        # pool over space (where the shape sits does not change what it is): the mean sees area and
        # background, the max sees whether a part (a corner, an arm) is present anywhere
        return self.neck(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> logits {"shape": (B, 4), "colour": (B, 6), "domain": (B, 2)}."""
        f = self.features(images)
        return {name: head(f) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict[str, list[str]]:
        """Predicted names per head, e.g. {"shape": ["circle", ...], "colour": [...], "domain": [...]}.
        ``images``: a (B, 3, H, W) tensor in [0, 1] or a list of PIL images."""
        x = as_batch(images)
        idx = {k: [] for k in self.heads}
        for chunk in x.split(batch_size):
            for k, logits in self(chunk).items():
                idx[k].append(logits.argmax(-1))
        names = {"shape": "shapes", "colour": "colours", "domain": "domains"}
        return {k: [self.config[names[k]][i] for i in torch.cat(v).tolist()] for k, v in idx.items()}

    @torch.no_grad()
    def embed(self, images, batch_size: int = 256) -> torch.Tensor:
        """``features`` over a tensor or list of PIL images, in batches: (B, feature_dim) float32."""
        return torch.cat([self.features(c) for c in as_batch(images).split(batch_size)])


def load_evaluator(path: str | Path | None = None) -> Evaluator:
    """Load an evaluator folder (``model.safetensors`` + ``config.json``); by default the shipped one.
    Cached per folder and returned in eval mode with gradients off: treat it as read-only."""
    return _load(str(Path(path or ASSET_DIR).resolve()))


@functools.lru_cache(maxsize=4)
def _load(folder: str) -> Evaluator:
    folder = Path(folder)
    missing = [n for n in ("model.safetensors", "config.json") if not (folder / n).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not an evaluator folder: missing {', '.join(missing)}; "
            f"build one with `python -m d2f.world.build.evaluator_training --output {folder}`"
        )
    cfg = json.loads((folder / "config.json").read_text())
    model = Evaluator(tuple(cfg["channels"]), cfg["feature_dim"], cfg["shapes"], cfg["colours"], cfg["domains"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval().requires_grad_(False)


def clear_cache() -> None:
    """Forget the loaded evaluators (after a folder's weights were rewritten)."""
    _load.cache_clear()
