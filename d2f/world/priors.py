"""The built-in priors ``tiny-shapes-eps`` and ``tiny-shapes-v``: tiny Stable Diffusions, made here.

Each prior is a complete diffusers ``StableDiffusionPipeline`` folder with exactly SD's components at a
tiny size (``d2f.world.components``).

The recipe, in the order SD was made:

1. **VAE** on images of *both* domains. It plays SD's general-purpose autoencoder: a later finetune
   on the target domain (outlines on dark) must be able to encode its data. Loss: pixel MSE plus a
   small KL (no GAN, no perceptual loss: 32 px shapes do not need them). Then
   ``scaling_factor = 1/std(latents)`` so that scaled latents have unit variance (SD's 0.18215 is
   the same rule for SD's VAE, not a constant).
2. **UNet + text encoder**, jointly from scratch, on the *base* domain only, with the diffusion
   objective of the prior's prediction type (docs/math.md §8, "Diffusion"):
   ``i ~ U{0..N-1}``, ``z = alpha_i*x1 + sigma_i*eps``, target ``eps`` (epsilon) or
   ``v = alpha_i*eps - sigma_i*x1`` (v_prediction). Captions are dropped to ``""`` 10% of the
   time so classifier-free guidance works. The shipped weights are an EMA of the trained ones.

The eps prior's scheduler config mirrors SD 1.5 (PNDM), the v prior's SD 2.x (DDIM).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from d2f.world.components import RESOLUTION, SD_BETAS, make_text_encoder, make_unet, make_vae
from d2f.world.shapes import all_prompts, caption, draw, make_specs

PRIORS = {"tiny-shapes-eps": "epsilon", "tiny-shapes-v": "v_prediction"}

Log = Callable[[int, float], None]  # (step, loss) -> None, for progress bars


def shape_images(num_images: int, domain: str, seed: int) -> tuple[torch.Tensor, list[str]]:
    """``num_images`` generator images as a float tensor (B,3,32,32) in [-1,1] (the VAE's range),
    with their captions."""
    specs = make_specs(num_images, domain, seed)
    pixels = np.stack([np.asarray(draw(s, RESOLUTION)) for s in specs])  # (B,H,W,3) uint8
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, [caption(s.shape, s.colour) for s in specs]


def warmup_cosine(opt, steps: int, warmup_fraction: float = 0.05, floor: float = 0.1):
    """Learning-rate factor: linear warmup over the first 5% of steps, then a cosine from 1 down to
    ``floor`` at the last step."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class EMA:
    """Exponential moving average of parameters: ``avg <- d*avg + (1-d)*param`` each step, with the
    usual warmup ``d = min(decay, (1+k)/(10+k))`` at step k so that a short run does not average in
    its untrained start. Short from-scratch runs sample much cleaner from the average."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params, self.decay, self.step = params, decay, 0
        self.avg = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self):
        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self):
        for p, a in zip(self.params, self.avg):
            p.copy_(a)


# ----------------------------------------------------------------------------- 1. the VAE


def train_vae(
    steps: int,
    num_images: int = 4096,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    log: Log | None = None,
):
    """Train the VAE on ``num_images`` images per domain; set its ``scaling_factor``.

    Loss per batch: ``mean((x_hat - x)^2) + kl_weight * KL / (3*32*32)``: the KL (summed over the
    latent) is put on the same per-pixel scale as the MSE. Returns ``(vae, final_loss)``."""
    torch.manual_seed(seed)
    vae = make_vae()
    base, _ = shape_images(num_images, "base", seed)
    target, _ = shape_images(num_images, "target", seed)
    images = torch.cat([base, target])
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    vae.train()
    for step in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(x_hat, x) + kl_weight * posterior.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        if log:
            log(step, loss_value)
    vae.eval()
    latents = encode(vae, images, sample=True, generator=gen)
    # scaled latents should have unit variance: the diffusion schedule assumes data of scale ~1
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    return vae, loss_value


@torch.no_grad()
def encode(vae, images: torch.Tensor, sample: bool = False, generator=None, batch: int = 256) -> torch.Tensor:
    """Unscaled latents (B,4,8,8) of images (B,3,32,32) in [-1,1]: the posterior mean, or a sample."""
    out = []
    for chunk in images.split(batch):
        dist = vae.encode(chunk).latent_dist
        out.append(dist.sample(generator=generator) if sample else dist.mean)
    return torch.cat(out)


@torch.no_grad()
def reconstruction_mse(vae, domain: str, num_images: int = 256, seed: int = 12345) -> float:
    """Pixel MSE (images in [-1,1]) of encode-decode on fresh images of ``domain``."""
    images, _ = shape_images(num_images, domain, seed)
    recon = torch.cat([vae.decode(z).sample for z in encode(vae, images).split(256)])
    return F.mse_loss(recon.clamp(-1, 1), images).item()


# ----------------------------------------------------------------------------- 2. a prior


def train_prior(
    vae,
    tokenizer,
    prediction_type: str,
    steps: int,
    num_images: int = 4096,
    batch_size: int = 32,
    lr: float = 1e-3,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    log: Log | None = None,
    init=None,
):
    """Train UNet + text encoder (from scratch unless ``init``) on base-domain latents. Returns
    ``(unet, text_encoder, final_loss)`` with the EMA weights loaded. ``init``: an optional
    ``(unet, text_encoder)`` pair to continue training instead of starting from scratch.

    Latents are precomputed once as posterior mean and std; each step draws a fresh posterior
    sample ``mean + std*n`` (what SD's training does with its cached VAE moments)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    noise_sched = DDPMScheduler(**SD_BETAS, prediction_type=prediction_type)
    images, captions = shape_images(num_images, "base", seed + 1)
    with torch.no_grad():
        moments = [vae.encode(c).latent_dist for c in images.split(256)]
    mean = torch.cat([m.mean for m in moments])
    std = torch.cat([m.std for m in moments])
    scale = vae.config.scaling_factor
    # every caption the model sees is one of 24 prompts or "": tokenize them once
    vocab = all_prompts() + [""]
    ids = tokenizer(
        vocab, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    index = torch.tensor([vocab.index(c) for c in captions])

    unet, text_encoder = init or (make_unet(), make_text_encoder(tokenizer))
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(params, ema_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    unet.train(), text_encoder.train()
    for step in range(steps):
        pick = torch.randint(num_images, (batch_size,), generator=gen)
        # x1: a posterior sample, scaled to unit variance
        data = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * scale
        which = index[pick].clone()
        which[torch.rand(batch_size, generator=gen) < caption_dropout] = len(vocab) - 1  # "" for CFG
        noise = torch.randn(data.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
        # z = alpha_i*x1 + sigma_i*eps
        z = noise_sched.add_noise(data, noise, t)
        # epsilon: target eps;  v_prediction: target v = alpha_i*eps - sigma_i*x1
        target = noise if prediction_type == "epsilon" else noise_sched.get_velocity(data, noise, t)
        states = text_encoder(ids[which]).last_hidden_state
        loss = F.mse_loss(unet(z, t, encoder_hidden_states=states).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update()
        loss_value = loss.item()  # the last batch's loss is what the build records as final_loss
        if log:
            log(step, loss_value)
    ema.copy_to()
    unet.eval(), text_encoder.eval()
    return unet, text_encoder, loss_value


# ----------------------------------------------------------------------------- quality


@torch.no_grad()
def sample_prior(
    folder: str | Path, prompts: list[str], steps: int = 25, guidance: float = 7.5, seed: int = 0, batch: int = 64
) -> torch.Tensor:
    """Samples (B,3,32,32) in [0,1] from a saved prior with plain diffusers: the folder's pipeline,
    its scheduler config turned into DDIM, ``output_type="pt"``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    out = [
        pipe(
            prompts[k : k + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gen,
            output_type="pt",
            height=RESOLUTION,
            width=RESOLUTION,
        ).images
        for k in range(0, len(prompts), batch)
    ]
    return torch.cat(out).float().clamp(0, 1)


def evaluate_prior(
    folder: str | Path,
    num_samples: int = 64,
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    evaluator: str | Path | None = None,
) -> dict:
    """The quality bar of the built-in priors: ``prompt_accuracy`` of ``num_samples`` samples over the 24 base
    prompts (cycled), 25 DDIM steps with guidance, scored by the evaluator at ``evaluator`` (default:
    the shipped one). ``prompt_accuracy`` is ``None`` if no evaluator weights exist yet."""
    prompts = [all_prompts()[k % 24] for k in range(num_samples)]
    start = time.time()
    images = sample_prior(folder, prompts, steps, guidance, seed)
    record = dict(
        num_samples=num_samples,
        ddim_steps=steps,
        guidance=guidance,
        seed=seed,
        sample_seconds=round(time.time() - start, 1),
        prompt_accuracy=None,
    )
    from d2f.world.evaluator import load_evaluator
    from d2f.world.metrics import prompt_accuracy

    try:
        model = load_evaluator(evaluator)
    except ValueError:  # no weights yet (the evaluator is built after the priors)
        return record
    record["prompt_accuracy"] = float(prompt_accuracy(images, prompts, evaluator=model))
    return record
