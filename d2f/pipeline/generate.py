"""Generate images with d2f's samplers from a loaded pipeline (its text encoder, UNet and VAE).

    images = generate(pipe, ["a red circle"], sampler="euler", steps=25, guidance=7.5, seed=0)  # (B,3,H,W) in [0,1]

The loop is d2f's own (``d2f.sampling`` over the velocity of the run's ``Parametrization``), not the
pipeline's. Noise is drawn per image, in float32 on the CPU, image i from
``torch.Generator().manual_seed(seed + i)`` (the same draw as diffusers' pipelines given that list of
generators), so an image does not depend on the batch it is in, on how many images are asked for, or on
the precision the UNet runs in. The ODE state stays float32 whatever the UNet's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from d2f.core.schedule import Schedule
from d2f.core.timemap import scale
from d2f.errors import UserError
from d2f.guidance import guided
from d2f.objectives import check_objective, parametrization, sampled_objective
from d2f.parametrizations import Parametrization, unet_net
from d2f.sampling import get_sampler, sampler_grid


def latent_size(pipe, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(height, width) in pixels (default: the model's native size), checked, and the latent downsampling."""
    factor = pipe.vae_scale_factor
    native = int(pipe.unet.config.sample_size) * factor
    height, width = height or native, width or native
    multiple = factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for side in (height, width):
        if side <= 0 or side % multiple:
            lower = max(multiple, side // multiple * multiple)
            raise UserError(
                f"size {side} px does not fit this model: the VAE and UNet need a multiple of "
                f"{multiple} px (e.g. {lower} or {lower + multiple})"
            )
    return height, width, factor


def initial_noise(pipe, num_images: int, height: int, width: int, seed: int, offset: int = 0) -> torch.Tensor:
    """Per-image Gaussian noise (B, C, h, w), float32 on the CPU: image i from
    ``torch.Generator().manual_seed(seed + offset + i)``, whatever the UNet's dtype and device."""
    _, _, factor = latent_size(pipe, height, width)
    shape = (1, pipe.unet.config.in_channels, height // factor, width // factor)
    return torch.cat(
        [
            torch.randn(shape, generator=torch.Generator().manual_seed(seed + offset + i), dtype=torch.float32)
            for i in range(num_images)
        ]
    )


def check_settings(prompts: Sequence[str], sampler: str, steps: int, guidance: float) -> None:
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    get_sampler(sampler)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if guidance < 0:
        raise UserError(f"--guidance must be 0 or more (1 = no guidance), got {guidance}")


def pipe_parametrization(pipe, objective: str | None = None) -> Parametrization:
    """How to sample ``pipe``: the ``Parametrization`` of ``objective`` as given, else of the loaded run's
    objective, else of ``diffusion``: a model without a d2f run is an untouched diffusion model, sampled
    through the bridge from t_min (docs/math.md §10). The one place this rule lives."""
    objective = check_objective(objective) if objective else sampled_objective(getattr(pipe, "d2f_run", None))
    return parametrization(objective, Schedule.from_config(dict(pipe.scheduler.config)))


def velocity_field(model: Parametrization, net, cond: torch.Tensor):
    """``velocity_fn(x, t)`` for the samplers: the parametrisation's velocity of ``net`` with text ``cond``."""
    return lambda x, t: model.velocity(net, x, t, cond)


@torch.no_grad()
def sample_latents(
    pipe,
    prompts: Sequence[str],
    sampler: str = "euler",
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    objective: str | None = None,
    shift: float = 1.0,
    noise: torch.Tensor | None = None,
    ts=None,
    batch_size: int = 64,
    on_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Final latents (B, C, h, w), float32, of one image per prompt, in the VAE's scaled latent space.

    The grid starts at the parametrisation's ``t_start`` (``pipe_parametrization``): t = 0 for diff2flow and
    fm runs; t_min for a diffusion model, where DDIM starts too. Starting at t0 > 0, the Gaussian noise
    enters as the diffusion sample z at tau(t0) (as in diffusers' DDIM), i.e. the FM state x = z / c(t0).

    A given ``noise`` is used as the FM state at ``ts[0]`` as it is; ``ts`` defaults to the sampler's grid.
    Guidance w = 1 runs only the conditional branch; any other w runs o_u + w (o_c - o_u) (diffusers' pipelines
    skip guidance for every w <= 1 instead). ``on_step`` is called once per sampler step (progress bars).
    Non-finite latents (a diverged model or LoRA) are a ``UserError``, not black images."""
    model = pipe_parametrization(pipe, objective)
    check_settings(prompts, sampler, steps, guidance)
    height, width, _ = latent_size(pipe, height, width)
    ts = sampler_grid(sampler, steps, model.t_start, shift, model.schedule) if ts is None else ts
    if noise is None:
        noise = initial_noise(pipe, len(prompts), height, width, seed)
        t0 = float(ts[0])
        if t0 > 0:
            # z = noise at tau(t0); in FM coordinates x = z / c(t0)
            noise = noise / float(scale(model.schedule, torch.tensor(t0, dtype=torch.float64)))
    sample = get_sampler(sampler)
    net = unet_net(pipe.unet, pipe.unet.dtype)
    device = pipe.unet.device
    callback = (lambda _: on_step()) if on_step else None
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        cond, uncond = pipe.encode_prompt(chunk, device, 1, guidance != 1.0)
        velocity_fn = velocity_field(model, guided(net, uncond if guidance != 1.0 else None, guidance), cond)
        x = noise[start : start + batch_size].to(device, torch.float32)
        out.append(sample(velocity_fn, x, ts, callback).float().cpu())
    latents = torch.cat(out)
    if not torch.isfinite(latents).all():
        raise UserError(
            "sampling gave NaN or infinite latents: the model's weights (or its LoRA) are not finite, "
            "e.g. from a diverged run; use an earlier checkpoint or retrain with a lower --lr"
        )
    return latents


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] from scaled latents:  image = (vae.decode(x / scaling_factor) + 1) / 2."""
    vae = pipe.vae
    out = []
    for chunk in latents.split(batch_size):
        pixels = vae.decode(chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        out.append((pixels.float().cpu() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def generate(
    pipe,
    prompts: Sequence[str],
    sampler: str = "euler",
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    objective: str | None = None,
    shift: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 1], one per prompt (repeat a prompt for several images).

    ``sampler``: ``euler`` or ``heun`` (FM, uniform grid, ``shift`` warps it) or ``ddim`` (trailing spacing,
    see ``d2f.sampling.ddim_grid``). ``objective``: how the network gives a velocity (``d2f.objectives``);
    default: the loaded run's, else ``diffusion`` (``pipe_parametrization``). ``progress`` shows a rich
    progress bar on stderr."""
    kwargs = dict(
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        seed=seed,
        height=height,
        width=width,
        objective=objective,
        shift=shift,
        batch_size=batch_size,
    )
    if not progress:
        return decode(pipe, sample_latents(pipe, prompts, **kwargs), batch_size)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    chunks = -(-len(prompts) // batch_size) if prompts else 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(f"{sampler}, {len(prompts)} images", total=chunks * steps)
        latents = sample_latents(pipe, prompts, on_step=lambda: bar.advance(task), **kwargs)
    return decode(pipe, latents, batch_size)
