"""How well the model's VAE reconstructs the user's images, measured before training.

A finetune can only draw what the VAE can decode: a VAE that never saw images like the user's (the old
shapes-only built-in VAE on handwriting, SD's VAE on tiny line art) caps every result, whatever the objective.
So before the first step d2f encodes and decodes a few of the training images (posterior mean, no sampling) and reports

    PSNR = 10 log10(1 / MSE)      MSE over pixels in [0, 1]

in ``d2f_run.json`` (``data.vae_psnr``), with a warning below ``POOR_PSNR`` dB. SD's VAE reconstructs natural
512 px photographs at roughly 25-30 dB; below 20 dB fine detail and often colour are visibly lost.
"""

from __future__ import annotations

import math

import torch

POOR_PSNR = 20.0
SAMPLE = 16  # images: enough for a stable number, cheap even for SD's VAE on a CPU


@torch.no_grad()
def vae_psnr(vae, pixels: torch.Tensor) -> float:
    """PSNR (dB) of ``vae``'s reconstruction of ``pixels`` (B, 3, H, W) in [-1, 1]."""
    x = pixels.to(vae.device, vae.dtype)
    reconstruction = vae.decode(vae.encode(x).latent_dist.mean).sample
    # the VAE works in [-1, 1]; PSNR is stated for [0, 1] pixels: (x + 1) / 2
    mse = ((reconstruction.float().clamp(-1, 1) - x.float()) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def check_vae(run) -> float:
    """Measure the VAE on the first ``SAMPLE`` images of the data; a notice when it is poor."""
    pixels = run.batches.pixels(range(min(SAMPLE, len(run.data))))
    psnr = vae_psnr(run.pipe.vae, pixels)
    if psnr < POOR_PSNR:
        run.notice(
            "vae_poor",
            f"this model's VAE reconstructs your images at {psnr:.1f} dB PSNR (below {POOR_PSNR:.0f}); results will "
            "be limited by it: a finetune can only draw what the VAE decodes",
            psnr=psnr,
        )
    return psnr
