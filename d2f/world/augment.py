"""The augmentation the world's classifiers train with (the shapes evaluator, the digit classifier), so that
they also read generated samples, which are blurrier and less clean than the generator's drawings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild per-image corruptions of a (B, 3, H, W) batch in [0, 1]: Gaussian blur (sigma up to 1 px,
    like a small VAE's decode), colour jitter (gain, offset, contrast) and pixel noise."""
    b, _, h, w = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    # blur: separable Gaussian, sigma ~ U(0, 1) px for half of the batch, 0 for the rest
    sigma = u(b) * (u(b) < 0.5)
    r = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(r**2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(3, 0)  # (B*3, 5): one kernel per channel
    y = F.pad(x.reshape(1, b * 3, h, w), (2, 2, 2, 2), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=b * 3)
    y = F.conv2d(y, k[:, None, :, None], groups=b * 3).reshape(b, 3, h, w)
    # contrast around the image mean, a shared gain and a per-channel offset
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = mean + (y - mean) * (0.85 + 0.3 * u(b, 1, 1, 1))
    y = y * (0.92 + 0.16 * u(b, 1, 1, 1)) + 0.08 * (u(b, 3, 1, 1) - 0.5)
    # pixel noise with std ~ U(0, 0.04)
    y = y + 0.04 * u(b, 1, 1, 1) * torch.randn(y.shape, generator=gen)
    return y.clamp(0, 1)
