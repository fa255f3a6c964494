"""Training the built-in world's general VAE on the broad corpus of ``corpus.py``.

The VAE plays SD's general-purpose autoencoder: a later finetune on a user's images can only draw what it
can decode, so it is trained on every kind of the corpus (strokes, polygons, gradients, textures, glyphs,
photo crops and the shapes world), the same number of images of each. Loss per batch:

    L = mean((x_hat - x)^2) + kl_weight * KL(q(z|x) || N(0, I)) / (3 H W)

(the KL, summed over the latent, is put on the per-pixel scale of the MSE; no GAN and no perceptual loss:
32 px images do not need them). Then ``scaling_factor = 1 / std(latents)``, so scaled latents have unit
variance (SD's 0.18215 is the same rule for SD's VAE, not a constant).

Quality is reported as reconstruction PSNR per kind on held-out images (``psnr_by_kind``), the number the
VAE check of ``d2f train`` (``d2f.training.vae_check``) measures on a user's data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from d2f.training.vae_check import vae_psnr
from d2f.world.build.components import RESOLUTION, make_vae
from d2f.world.build.corpus import KINDS, corpus_images
from d2f.world.build.lr_schedule import warmup_cosine
from d2f.world.shapes import shape_images, to_unit_range

Log = Callable[[int, float], None]  # (step, loss) -> None, for progress bars
HELD_OUT_SEED = 12345  # the training corpus uses --seed (0 by default): never this one


def corpus(num_per_kind: int, seed: int, kinds=KINDS) -> torch.Tensor:
    """The training corpus: ``num_per_kind`` images of each kind, uint8 (B, 3, 32, 32)."""
    return torch.cat([corpus_images(kind, num_per_kind, seed, RESOLUTION) for kind in kinds])


def train_vae(
    steps: int,
    num_per_kind: int = 4096,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    log: Log | None = None,
    vae=None,
):
    """Train the VAE (from scratch unless ``vae`` is given) and set its ``scaling_factor``. Returns
    ``(vae, final_loss)``."""
    torch.manual_seed(seed)
    vae = vae if vae is not None else make_vae()
    images = corpus(num_per_kind, seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    vae.train()
    for step in range(steps):
        x = to_unit_range(images[torch.randint(len(images), (batch_size,), generator=gen)])
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(x_hat, x) + kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if log:
            log(step, loss_value)
    vae.eval()
    sample = to_unit_range(images[torch.randperm(len(images), generator=gen)[:4096]])
    latents = encode(vae, sample, sample=True, generator=gen)
    # scaled latents should have unit variance: the diffusion schedule assumes data of scale ~1
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae, loss_value


@torch.no_grad()
def encode(vae, images: torch.Tensor, sample: bool = False, generator=None, batch: int = 256) -> torch.Tensor:
    """Unscaled latents (B, 4, 8, 8) of images (B, 3, 32, 32) in [-1, 1]: the posterior mean, or a sample."""
    out = []
    for chunk in images.split(batch):
        dist = vae.encode(chunk).latent_dist
        out.append(dist.sample(generator=generator) if sample else dist.mean)
    return torch.cat(out)


@torch.no_grad()
def psnr_by_kind(vae, num_images: int = 256, kinds=KINDS) -> dict[str, float]:
    """Reconstruction PSNR (dB, pixels in [0, 1]) on held-out images of each kind; the shapes kind is
    reported per domain too (``shapes-base``, ``shapes-target``), the priors' data and the demo's target."""
    held_out = {kind: to_unit_range(corpus_images(kind, num_images, HELD_OUT_SEED, held_out=True)) for kind in kinds}
    for domain in ("base", "target"):
        held_out[f"shapes-{domain}"] = shape_images(num_images, domain, HELD_OUT_SEED)[0]
    return {name: round(vae_psnr(vae, pixels), 2) for name, pixels in held_out.items()}
