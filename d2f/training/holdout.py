"""A part of a user's images held out from training, and how far the samples are from it at each validation.

Built-in data has its evaluator (prompt and domain accuracy, FD); a user's folder has none. So that a user can
still read whether a finetune is learning their images, ``d2f train`` holds out ``--holdout`` of them (at most a
tenth; 0 = none) and, at each validation, samples ``min(--eval-samples, held)`` images for the held-out captions
and scores them against the held-out images: the Frechet distance (``fd_heldout``) and KID (``kid_heldout``) of
their features (``d2f.distances``), in the progress output and ``metrics.jsonl``. Lower is closer; step 0 is the
untouched model, so the first line is the number to beat.

The features are the model's own VAE encoder's: the posterior mean latents, times the VAE's scaling factor,
average-pooled to a 4 x 4 grid (64 numbers for SD's 4-channel latents, at any resolution). Why the VAE and not the
built-in evaluator: every SD-format model has one, it reads the images at the training resolution, and it needs
nothing downloaded; the evaluator knows only the shapes world at 32 px. What it sees: colour, layout and texture
at a coarse scale (it is a compressor, not a classifier), so it tells whether the samples look like the images,
and only roughly whether they show the same things; a FD measured at another n, or with another model's VAE, is
not comparable.

The held-out images are chosen once by a fixed seed (``HOLDOUT_SEED``), independent of ``--seed``: every run on
the same data holds out the same images, so runs can be compared, and ``--resume`` sees the same split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from d2f.distances import frechet_distance, kid

HOLDOUT_SEED = "d2f-holdout"
MAX_FRACTION = 10  # hold out at most a tenth of the images
FEATURE_GRID = 4  # latents pooled to FEATURE_GRID x FEATURE_GRID


@dataclass
class HeldOut:
    """The held-out images of a run (``data``: an ``ImageCaptionData`` over them) and their features, computed at
    the first validation (``features``, (N, D))."""

    data: object
    features: torch.Tensor | None = None

    @property
    def captions(self) -> list[str]:
        return self.data.captions


def split_holdout(data, holdout: int):
    """(training data, ``HeldOut`` or None): ``min(holdout, len(data) // 10)`` images of ``data`` (an
    ``ImageCaptionData``) held out, chosen by ``HOLDOUT_SEED``; None when fewer than 2 would be (no FD)."""
    k = min(holdout, len(data) // MAX_FRACTION)
    if k < 2:
        return data, None
    held = set(random.Random(HOLDOUT_SEED).sample(range(len(data)), k))
    keep = [j for j in range(len(data)) if j not in held]
    part = lambda idx: replace(data, rows=[data.rows[j] for j in idx], captions=[data.captions[j] for j in idx])  # noqa: E731
    return part(keep), HeldOut(part(sorted(held)))


@torch.no_grad()
def vae_features(vae, images: torch.Tensor) -> torch.Tensor:
    """(B, D) features of images (B, 3, H, W) in [-1, 1]: the VAE posterior mean, scaled, pooled to a 4 x 4 grid."""
    param = next(vae.parameters())
    features = []
    for chunk in images.split(16):
        latents = vae.encode(chunk.to(param.device, param.dtype)).latent_dist.mean
        latents = latents * vae.config.scaling_factor
        features.append(F.adaptive_avg_pool2d(latents.float(), FEATURE_GRID).flatten(1).cpu())
    return torch.cat(features)


def score_samples(vae, held: HeldOut, samples: torch.Tensor) -> dict[str, float]:
    """{"fd_heldout", "kid_heldout"} of ``samples`` (B, 3, H, W) in [0, 1] against the held-out images."""
    if held.features is None:
        held.features = vae_features(vae, held.data.pixels(range(len(held.data))))
    mine = vae_features(vae, samples * 2 - 1)
    return {"fd_heldout": frechet_distance(mine, held.features), "kid_heldout": kid(mine, held.features)}
