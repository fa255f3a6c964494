"""Diff2Flow in one file: a diffusion model finetuned as a flow-matching (FM) model, to read top to bottom.

Run ``python examples/diff2flow_in_one_file.py`` (the demo's budget, 1000 LoRA steps of batch 32; ``--steps`` for
fewer). It finetunes d2f's built-in tiny SD-format prior ``tiny-shapes-eps`` with a LoRA on the built-in data
``shapes-target``, samples every caption with FM Euler and classifier-free guidance, and saves a grid PNG and the
LoRA in diffusers' format (``pipe.load_lora_weights(output)``; sample it with ``d2f.Diff2FlowEulerScheduler``).
Symbols of docs/math.md: FM time t (0 noise, 1 data), diffusion time tau in [0, N-1], log-SNR lam, alpha, sigma,
data x1, noise x0. torch, diffusers and peft do the work; d2f only finds its built-in prior and data.
tests/test_one_file.py checks this file's schedule, loss and sampler against d2f's, so they cannot drift apart.

Left out here, and where d2f does it:
- checkpoints and resuming a killed run: d2f/training/checkpoint.py, d2f/training/resume.py (``d2f train --resume``)
- several GPUs or processes: accelerate, in d2f/training/setup.py and d2f/training/loop.py
- mixed precision (fp16/bf16 UNet, the bridge and loss kept in float32): d2f/training/setup.py, docs/math.md §13
- validation during training (grids and evaluator metrics): d2f/training/validation.py
- sample prediction, zero terminal SNR, other t densities, EMA, text-encoder LoRA, your data: d2f/core/, d2f/training/
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.utils import convert_state_dict_to_diffusers, make_image_grid
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from d2f.pipeline.models import resolve_model  # where a built-in prior's diffusers folder is
from d2f.world.data import DATASETS, builtin_folder  # the built-in datasets, each written once as an imagefolder


# ----------------------------------------------------------------------- 1. the schedule (docs/math.md §1, §3)
def log_snr_table(config: dict) -> torch.Tensor:
    """lam_i for i = 0..N-1 (float64, strictly decreasing) from a diffusers scheduler config."""
    n, b0, b1 = config.get("num_train_timesteps", 1000), config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    if config.get("trained_betas") is not None:
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif config.get("beta_schedule", "linear") == "scaled_linear":
        # sqrt(beta_i) linear from sqrt(beta_start) to sqrt(beta_end) (SD's)
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    elif config.get("beta_schedule", "linear") == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule {config['beta_schedule']!r} is left out here (d2f/core/schedule.py has it)")
    # abar_i = prod_{k <= i} (1 - beta_k)
    abar = torch.cumprod(1 - betas, dim=0)
    # lam_i = log(abar_i / (1 - abar_i))
    return abar.log() - torch.log1p(-abar)


def log_snr(lam: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """lam(tau), piecewise linear between the table's integers; tau (float64) clamped to [0, N-1]."""
    n = len(lam)
    tau = tau.clamp(0, n - 1)
    i = tau.floor().clamp(max=n - 2).long()
    w = tau - i
    # lam(tau) = (1 - w) lam_i + w lam_{i+1},  i = floor(tau),  w = tau - i
    return lam[i] + w * (lam[i + 1] - lam[i])


def alpha_sigma(lam: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lam_tau = log_snr(lam, tau)
    # alpha = sqrt(sigmoid(lam)),  sigma = sqrt(sigmoid(-lam)),  so alpha^2 + sigma^2 = 1
    return torch.sigmoid(lam_tau).sqrt(), torch.sigmoid(-lam_tau).sqrt()


# ------------------------------------------------------------ 2. the time map and the scale (§4, §5, §6)
def t_of_tau(lam: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    # t = alpha / (alpha + sigma) = sigmoid(lam / 2)   (z / (alpha + sigma) = t x1 + (1 - t) x0)
    return torch.sigmoid(log_snr(lam, tau) / 2)


def tau_of_t(lam: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact inverse of t_of_tau; t is first clamped to the covered range [t_min, t_max] = [t(N-1), t(0)]."""
    n = len(lam)
    t_min, t_max = (float(t_of_tau(lam, torch.tensor(x, dtype=torch.float64))) for x in (n - 1.0, 0.0))
    t = t.clamp(t_min, t_max)
    # lam = 2 logit(t)
    lam_t = 2 * (t.log() - torch.log1p(-t))
    # the segment [i, i+1] with lam_{i+1} <= lam <= lam_i (lam decreases as tau grows)
    i = (torch.searchsorted(-lam, -lam_t.contiguous()) - 1).clamp(0, n - 2)
    # tau = i + (lam - lam_i) / (lam_{i+1} - lam_i)
    return (i + (lam_t - lam[i]) / (lam[i + 1] - lam[i])).clamp(0, n - 1)


def bridge(lam: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(tau, alpha, sigma, c) at FM times t (B,), float64, all at the clamped time (§5)."""
    tau = tau_of_t(lam, torch.as_tensor(t, dtype=torch.float64))
    alpha, sigma = alpha_sigma(lam, tau)
    # c = alpha + sigma:  z = c x_t is the diffusion sample at tau(t)
    return tau, alpha, sigma, alpha + sigma


def per_sample(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1), x's dtype and device
    return coef.to(x.device, x.dtype).reshape(-1, *[1] * (x.dim() - 1))


# ------------------------------------------------------------------ 3. the velocity from eps or v (§7)
def velocity(o: torch.Tensor, z: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """u_hat = x1_hat - eps_hat, read off the network output o at the diffusion sample z."""
    if prediction_type == "epsilon":
        # x1_hat = (z - sigma o) / alpha,  eps_hat = o
        x1_hat, eps_hat = (z - sigma * o) / alpha, o
    elif prediction_type == "v_prediction":
        # x1_hat = alpha z - sigma o,  eps_hat = sigma z + alpha o   (v = alpha eps - sigma x1)
        x1_hat, eps_hat = alpha * z - sigma * o, sigma * z + alpha * o
    else:
        raise ValueError(f"{prediction_type!r} prediction is left out here (d2f/core/velocity.py has it)")
    return x1_hat - eps_hat


def fm_velocity(net, lam, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
    """u_hat(x_t, t): one call of net(z, tau, cond), computed in x_t's dtype (float32 or better)."""
    tau, alpha, sigma, c = bridge(lam, t)
    # z = c(t) x_t, seen at the fractional timestep tau(t) (never rounded)
    z = per_sample(c, x_t) * x_t
    o = net(z, tau.to(x_t.device, x_t.dtype), cond).to(x_t.dtype)
    return velocity(o, z, per_sample(alpha, x_t), per_sample(sigma, x_t), prediction_type)


def unet_net(unet):  # net(z, tau, cond) for a diffusers UNet; cond: the text encoder's states
    return lambda z, tau, cond: unet(z, tau, encoder_hidden_states=cond, return_dict=False)[0]


# -------------------------------------------------------------------------------- 4. the loss (§8)
def diff2flow_loss(net, lam, prediction_type: str, x1, x0, t, cond) -> torch.Tensor:
    """The batch mean of each sample's mean squared error; x1 data, x0 noise (B, C, H, W), t FM time (B,)."""
    tt = per_sample(t, x1)
    # x_t = t x1 + (1 - t) x0: the straight path from noise (t = 0) to data (t = 1)
    x_t = tt * x1 + (1 - tt) * x0
    u_hat = fm_velocity(net, lam, prediction_type, x_t, t, cond)
    # L = E || u_hat(x_t, t) - (x1 - x0) ||^2
    return (u_hat - (x1 - x0)).pow(2).flatten(1).mean(1).mean()


# ----------------------------------------------------------- 5. FM Euler with guidance (§7, §10)
@torch.no_grad()
def sample(net, lam, prediction_type: str, x0, cond, uncond, steps: int = 25, guidance: float = 2.0):
    """x at t = 1 from the noise x0 at t = 0, in ``steps`` Euler steps on a uniform grid; cond, uncond (B, L, D)."""

    def guided(z, tau, c):
        if uncond is None or guidance == 1:
            return net(z, tau, c)
        o_u, o_c = net(torch.cat([z, z]), torch.cat([tau, tau]), torch.cat([uncond, c])).chunk(2)
        # o = o_u + w (o_c - o_u); u_hat is affine in o, so this is guidance on the velocity too
        return o_u + guidance * (o_c - o_u)

    x, ts = x0, torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    for t, t_next in zip(ts[:-1], ts[1:]):
        u_hat = fm_velocity(guided, lam, prediction_type, x, t.expand(len(x)), cond)
        # x_{k+1} = x_k + (t_{k+1} - t_k) u_hat(x_k, t_k)
        x = x + float(t_next - t) * u_hat
    return x


# -------------------------------------------------------------------- 6. data, LoRA finetune, output
def load_data(name: str = "shapes-target", resolution: int = 32) -> tuple[torch.Tensor, list[str]]:
    """A built-in dataset's images (B, 3, R, R) in [-1, 1] (the VAE's range) and their captions."""
    folder = builtin_folder(name, resolution)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    pixels = np.stack([np.asarray(Image.open(folder / row["file_name"]).convert("RGB")) for row in rows])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1, [row["text"] for row in rows]


def text_states(pipe, captions: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True)
    return pipe.text_encoder(torch.tensor(ids.input_ids))[0]


def finetune(pipe, images, captions, steps=1000, batch_size=32, lr=1e-3, rank=64, seed=0, log_every=50):
    """A LoRA finetune of pipe.unet with the Diff2Flow loss (AdamW, 50 warmup steps, cosine decay)."""
    torch.manual_seed(seed)
    unet, vae = pipe.unet, pipe.vae
    lam, prediction_type = log_snr_table(dict(pipe.scheduler.config)), pipe.scheduler.config.prediction_type
    unet.requires_grad_(False)  # the VAE and the text encoder only ever run under no_grad
    targets = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "conv"]  # attention + convs
    # LoRA: W' = W + B A with rank r and B = 0 at the start, so training starts at the prior itself
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=50, num_training_steps=steps)
    with torch.no_grad():  # the frozen VAE and text encoder run once, before training
        posteriors = [vae.encode(chunk).latent_dist for chunk in images.split(256)]
        mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])
        vocab = sorted(set(captions)) + [""]
        states = text_states(pipe, vocab)
    caption_index, gen = torch.tensor([vocab.index(c) for c in captions]), torch.Generator().manual_seed(seed)
    for step in range(steps):
        pick = torch.randint(0, len(images), (batch_size,), generator=gen)
        # x1 = (mu + s n) * scaling_factor: a VAE posterior sample, at unit variance
        x1 = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * vae.config.scaling_factor
        # caption dropout, 10 %: the empty caption keeps the unconditional branch that guidance needs
        which = torch.where(torch.rand(batch_size, generator=gen) < 0.1, len(vocab) - 1, caption_index[pick])
        x0 = torch.randn(x1.shape, generator=gen)
        # t ~ U[0, 1]: all of FM time; outside [t_min, t_max] the bridge clamps (§5)
        t = torch.rand(batch_size, generator=gen)
        loss = diff2flow_loss(unet_net(unet), lam, prediction_type, x1, x0, t, states[which])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0 or (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}  lr {lr_schedule.get_last_lr()[0]:.2e}", flush=True)
        lr_schedule.step()


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int = 25, guidance: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1]; image i starts from the noise of torch.Generator().manual_seed(seed + i)."""
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    x0 = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(len(prompts))])
    lam, prediction_type = log_snr_table(dict(pipe.scheduler.config)), pipe.scheduler.config.prediction_type
    cond, uncond = text_states(pipe, prompts), text_states(pipe, [""] * len(prompts))
    x1 = sample(unet_net(pipe.unet), lam, prediction_type, x0, cond, uncond, steps, guidance)
    return ((pipe.vae.decode(x1 / pipe.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Diff2Flow LoRA finetune of a built-in prior, in one file")
    parser.add_argument("--data", default="shapes-target", choices=sorted(DATASETS), help="a built-in dataset")
    defaults = dict(prior="tiny-shapes-eps", output="runs/one-file", steps=1000, batch_size=32, lr=1e-3, rank=64)
    defaults |= dict(guidance=2.0, sample_steps=25, seed=0)  # d2f train's demo run
    for name, default in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    args = parser.parse_args(argv)
    try:  # a bad --prior: one line (d2f's message says what is wrong) and exit 2
        pipe = StableDiffusionPipeline.from_pretrained(resolve_model(args.prior).source)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    images, captions = load_data(args.data, pipe.unet.config.sample_size * pipe.vae_scale_factor)
    print(f"{args.prior} ({pipe.scheduler.config.prediction_type}) on {len(images)} images of {args.data}")
    finetune(pipe, images, captions, args.steps, args.batch_size, args.lr, args.rank, args.seed)
    (out := Path(args.output)).mkdir(parents=True, exist_ok=True)
    samples = generate(pipe, sorted(set(captions)), args.sample_steps, args.guidance, args.seed)
    tiles = pipe.image_processor.numpy_to_pil(samples.permute(0, 2, 3, 1).numpy())
    make_image_grid(tiles, rows=-(-len(tiles) // 6), cols=6).save(out / "samples.png")
    StableDiffusionPipeline.save_lora_weights(
        out,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),  # keeps lora_alpha and the targets
    )
    print(f"saved {out / 'samples.png'} and the LoRA {out / 'pytorch_lora_weights.safetensors'}")


if __name__ == "__main__":
    main()
