"""The learning-rate schedule of the world's from-scratch training (VAE and priors)."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt, steps: int, warmup_fraction: float = 0.05, floor: float = 0.1):
    """Learning-rate factor: linear warmup over the first 5% of steps, then a cosine from 1 down to
    ``floor`` at the last step:  f(k) = floor + (1 - floor) (1 + cos(pi p)) / 2,  p = progress in [0, 1]."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
