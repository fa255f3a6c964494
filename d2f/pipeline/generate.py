"""Load a model (and a LoRA) as a diffusers pipeline, and generate images with d2f's samplers.

Shared by ``d2f sample``, ``d2f train``'s validation grids, the benchmark and the tutorials:

    pipe = load_pipeline("tiny-shapes-eps", lora="runs/my-run")
    images = generate(pipe, ["a red circle"], sampler="euler", steps=25, guidance=7.5, seed=0)  # (B,3,H,W) in [0,1]
    save_grid(images, "grid.png")

``generate`` runs its own loop (``d2f.sampling`` over a ``d2f.denoiser`` velocity), with the pipeline's
text encoder, UNet and VAE. Noise is drawn per image, image i from ``torch.Generator().manual_seed(seed + i)``
(the same draw as diffusers' pipelines given that list of generators), so an image does not depend on
the batch it is in or on how many images are asked for.

Run folders (the contract with ``d2f train``): ``pytorch_lora_weights.safetensors`` (diffusers LoRA format)
and ``d2f_run.json`` with at least ``base_model``, ``base_model_source``, ``prediction_type``, ``objective``,
``sampler`` and ``resolution``. "The latest run" is the folder under ``runs/`` whose ``d2f_run.json`` was
modified last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from d2f.denoiser import OBJECTIVES, unet_forward, velocity_for
from d2f.errors import UserError
from d2f.models import resolve_model
from d2f.sampling import get_sampler, sampler_grid
from d2f.schedule import Schedule
from d2f.timemap import scale

RUNS_DIR = Path("runs")
RUN_FILE = "d2f_run.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
UNET_DIR = "unet"  # a full finetune (d2f train --lora-rank 0) saves the whole UNet here instead of a LoRA
DEFAULT_MODEL = "tiny-shapes-eps"


# ------------------------------------------------------------------------------------------ runs

def latest_run(runs_dir: str | Path = RUNS_DIR) -> Optional[Path]:
    """The run folder under ``runs_dir`` whose ``d2f_run.json`` was modified last, or None."""
    runs = [p.parent for p in Path(runs_dir).glob(f"*/{RUN_FILE}")
            if (p.parent / LORA_FILE).is_file() or (p.parent / UNET_DIR / "config.json").is_file()]
    return max(runs, key=lambda r: (r / RUN_FILE).stat().st_mtime) if runs else None


def read_run(folder: str | Path) -> dict:
    """``d2f_run.json`` of a run folder, checked for the keys sampling needs."""
    path = Path(folder) / RUN_FILE
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}); is {folder} a run folder of `d2f train`?") from None
    missing = [k for k in ("base_model", "prediction_type", "objective") if k not in run]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it was not written by `d2f train`")
    return run


def resolve_lora(lora: str | Path) -> tuple[Path, Optional[dict]]:
    """(the weights, the run's d2f_run.json or None) for ``--lora`` (a run folder or a file). The weights are the
    LoRA .safetensors file, or the ``unet/`` folder of a full-finetune run."""
    path = Path(lora).expanduser()
    if path.is_dir():
        run = read_run(path) if (path / RUN_FILE).is_file() else None
        if (path / LORA_FILE).is_file():
            return path / LORA_FILE, run
        if run and (path / UNET_DIR / "config.json").is_file():
            return path / UNET_DIR, run
        raise UserError(f"{path} has no {LORA_FILE}; give a run folder of `d2f train` or a LoRA .safetensors file")
    if path.is_file() and path.suffix == ".safetensors":
        return path, None
    raise UserError(f"LoRA {lora} does not exist or is not a .safetensors file; give a run folder of `d2f train` "
                    "or a LoRA .safetensors file")


def _same_model(model: str, run: dict) -> bool:
    if model in (run.get("base_model"), run.get("base_model_source")):
        return True
    source = resolve_model(model).source
    base = run.get("base_model_source") or run["base_model"]
    return Path(source).expanduser().resolve() == Path(base).expanduser().resolve() if Path(source).exists() \
        else source == base


# ---------------------------------------------------------------------------------------- loading

def load_pipeline(model: str | None = None, lora: str | Path | None = None, device=None, dtype=None):
    """A ``StableDiffusionPipeline`` for ``model`` (built-in name, folder or hub id), with ``lora`` loaded.

    With a run folder as ``lora``, ``model`` defaults to the run's base model (another base model is a
    ``UserError`` naming both), and ``pipe.scheduler`` becomes the scheduler the run samples with
    (``Diff2FlowEulerScheduler`` with the run's prediction type and objective; DDIM, trailing spacing, for a
    ``diffusion`` run), so ``pipe(...)`` itself does the right thing. ``pipe.d2f_run`` holds the run's
    json (None without one)."""
    from diffusers import StableDiffusionPipeline

    weights, run = resolve_lora(lora) if lora is not None else (None, None)
    if model is None:
        model = run["base_model"] if run else DEFAULT_MODEL
    elif run and not _same_model(model, run):
        raise UserError(f"the LoRA {lora} was trained on {run['base_model']!r}, not on --model {model!r}; "
                        f"drop --model or pass --model {run['base_model']}")
    ref = resolve_model(model)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(ref.source, dtype=dtype, safety_checker=None,
                                                       requires_safety_checker=False)
    except OSError as exc:
        raise UserError(f"could not load model {model!r} from {ref.source} ({type(exc).__name__}): "
                        + ("it is not cached and the hub cannot be reached; pass a local diffusers folder"
                           if not ref.local else str(exc).splitlines()[0])) from None
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if weights is not None and weights.is_dir():  # a full finetune: its UNet replaces the base model's
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(weights, dtype=dtype).to(pipe.unet.device)
    elif weights is not None:
        _load_lora(pipe, weights, model)
    pipe.d2f_run = run
    if run:
        pipe.scheduler = run_scheduler(pipe.scheduler.config, run)
    return pipe


def run_scheduler(config, run: dict):
    """The diffusers scheduler a run is sampled with, from the base model's scheduler config."""
    from diffusers import DDIMScheduler

    from d2f.scheduler import Diff2FlowEulerScheduler

    overrides = dict(prediction_type=run["prediction_type"])
    schedule = run.get("schedule")
    if run.get("zero_terminal_snr") or (isinstance(schedule, dict) and schedule.get("zero_terminal_snr")):
        overrides["rescale_betas_zero_snr"] = True
    if run["objective"] == "diffusion":
        return DDIMScheduler.from_config(config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False,
                                         **overrides)
    return Diff2FlowEulerScheduler.from_config(config, objective=run["objective"], **overrides)


def _lora_modules(keys) -> dict[str, set[str]]:
    """{"unet": module paths, "text_encoder": ...} named by diffusers- or peft-format LoRA keys."""
    out: dict[str, set[str]] = {}
    for key in keys:
        for suffix in (".lora.down.weight", ".lora.up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha"):
            if key.endswith(suffix):
                prefix, _, path = key[: -len(suffix)].partition(".")
                out.setdefault(prefix, set()).add(path)
    return out


def _load_lora(pipe, weights: Path, model: str) -> None:
    """``pipe.load_lora_weights``, after checking that every LoRA module exists in this model (diffusers
    only warns about LoRA keys it cannot place and loads the rest)."""
    from safetensors import safe_open

    hint = (f"the LoRA {weights} does not fit model {model!r}: it was probably trained on another base model; "
            "pass that model with --model")
    try:
        with safe_open(str(weights), "pt") as f:
            keys = list(f.keys())
    except Exception:
        raise UserError(f"cannot read {weights} as safetensors; is it a LoRA file?") from None
    for component, paths in _lora_modules(keys).items():
        module = getattr(pipe, component, None)
        names = {n for n, _ in module.named_modules()} if module is not None else set()
        if component in ("unet", "text_encoder") and not paths <= names:
            raise UserError(hint)
    try:
        pipe.load_lora_weights(str(weights))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(hint + f" ({type(exc).__name__})") from None


# ------------------------------------------------------------------------------------- generating

def latent_size(pipe, height: int | None, width: int | None) -> tuple[int, int, int]:
    """(height, width) in pixels (default: the model's native size), checked, and the latent downsampling."""
    factor = pipe.vae_scale_factor
    native = int(pipe.unet.config.sample_size) * factor
    height, width = height or native, width or native
    multiple = factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for side in (height, width):
        if side <= 0 or side % multiple:
            lower = max(multiple, side // multiple * multiple)
            raise UserError(f"size {side} px does not fit this model: the VAE and UNet need a multiple of "
                            f"{multiple} px (e.g. {lower} or {lower + multiple})")
    return height, width, factor


def initial_noise(pipe, num_images: int, height: int, width: int, seed: int, offset: int = 0) -> torch.Tensor:
    """Per-image Gaussian noise (B, C, h, w): image i from ``torch.Generator().manual_seed(seed + offset + i)``."""
    _, _, factor = latent_size(pipe, height, width)
    shape = (1, pipe.unet.config.in_channels, height // factor, width // factor)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + offset + i),
                                  dtype=pipe.unet.dtype) for i in range(num_images)])


def check_settings(prompts: Sequence[str], sampler: str, steps: int, guidance: float, objective: str) -> None:
    if not prompts:
        raise UserError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    get_sampler(sampler)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if guidance < 0:
        raise UserError(f"--guidance must be 0 or more (1 = no guidance), got {guidance}")
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")


def pipe_objective(pipe, objective: str | None) -> str:
    """The objective to sample with: as given, else the loaded run's, else ``diffusion`` (a model without a
    d2f run is an untouched diffusion model, sampled through the bridge)."""
    run = getattr(pipe, "d2f_run", None)
    return objective or (run or {}).get("objective", "diffusion")


@torch.no_grad()
def sample_latents(pipe, prompts: Sequence[str], sampler: str = "euler", steps: int = 25, guidance: float = 7.5,
                   seed: int = 0, height: int | None = None, width: int | None = None, objective: str | None = None,
                   shift: float = 1.0, noise: torch.Tensor | None = None, ts=None, batch_size: int = 64,
                   on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """Final latents (B, C, h, w) of one image per prompt, in the VAE's scaled latent space.

    Where sampling starts (``d2f.sampling.sampler_grid``): ``diff2flow`` and ``fm`` models were trained on all
    of t in [0, 1], so FM Euler / Heun start at t = 0 from pure noise. A ``diffusion`` model (an untouched base
    model, or a diffusion-objective finetune) knows only the covered range, so its FM grid starts at t_min,
    where DDIM starts too. Starting at t0 > 0, the Gaussian noise enters as the diffusion sample z at tau(t0)
    (as in diffusers' DDIM), i.e. the FM state x = z / c(t0) (math page, section 8).

    A given ``noise`` is used as the FM state at ``ts[0]`` as it is; ``ts`` defaults to the sampler's grid.
    Guidance w = 1 runs only the conditional branch; any other w runs o_u + w (o_c - o_u) (diffusers' pipelines
    skip guidance for every w <= 1 instead). ``on_step`` is called once per sampler step (progress bars)."""
    objective = pipe_objective(pipe, objective)
    check_settings(prompts, sampler, steps, guidance, objective)
    height, width, _ = latent_size(pipe, height, width)
    schedule = Schedule.from_config(dict(pipe.scheduler.config))
    ts = sampler_grid(sampler, steps, schedule, shift, objective) if ts is None else ts
    if noise is None:
        noise = initial_noise(pipe, len(prompts), height, width, seed)
        t0 = float(ts[0])
        if t0 > 0:
            # z = noise at tau(t0); in FM coordinates x = z / c(t0)
            noise = noise / float(scale(schedule, torch.tensor(t0, dtype=torch.float64)))
    sample = get_sampler(sampler)
    net = unet_forward(pipe.unet)
    device = pipe.unet.device
    callback = (lambda _: on_step()) if on_step else None
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        cond, uncond = pipe.encode_prompt(chunk, device, 1, guidance != 1.0)
        velocity_fn = velocity_for(objective, net, schedule, cond, uncond if guidance != 1.0 else None, guidance)
        x = noise[start:start + batch_size].to(device)
        out.append(sample(velocity_fn, x, ts, callback).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] from scaled latents:  image = (vae.decode(x / scaling_factor) + 1) / 2."""
    vae = pipe.vae
    out = []
    for chunk in latents.split(batch_size):
        pixels = vae.decode(chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        out.append((pixels.float().cpu() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def generate(pipe, prompts: Sequence[str], sampler: str = "euler", steps: int = 25, guidance: float = 7.5,
             seed: int = 0, height: int | None = None, width: int | None = None, objective: str | None = None,
             shift: float = 1.0, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Images (B, 3, H, W) float in [0, 1], one per prompt (repeat a prompt for several images).

    ``sampler``: ``euler`` or ``heun`` (FM, uniform grid, ``shift`` warps it) or ``ddim`` (trailing spacing,
    see ``d2f.sampling.ddim_grid``). ``objective``: how the network gives a velocity (``d2f.denoiser``);
    default: the loaded run's, else ``diff2flow``. ``progress`` shows a rich progress bar on stderr."""
    kwargs = dict(sampler=sampler, steps=steps, guidance=guidance, seed=seed, height=height, width=width,
                  objective=objective, shift=shift, batch_size=batch_size)
    if not progress:
        return decode(pipe, sample_latents(pipe, prompts, **kwargs), batch_size)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    chunks = -(-len(prompts) // batch_size) if prompts else 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{sampler}, {len(prompts)} images", total=chunks * steps)
        latents = sample_latents(pipe, prompts, on_step=lambda: bar.advance(task), **kwargs)
    return decode(pipe, latents, batch_size)


# ------------------------------------------------------------------------------------------ saving

def to_pil(images: torch.Tensor) -> list:
    """PIL images from a float tensor (B, 3, H, W) in [0, 1]."""
    from PIL import Image

    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None, padding: int = 2) -> Path:
    """One PNG of the images in rows of ``ncols`` (default: about square), ``padding`` px of white between."""
    from PIL import Image

    n, _, h, w = images.shape
    ncols = ncols or max(1, int(round(n ** 0.5)))
    nrows = -(-n // ncols)
    grid = Image.new("RGB", (ncols * (w + padding) + padding, nrows * (h + padding) + padding), "white")
    for k, image in enumerate(to_pil(images)):
        grid.paste(image, (padding + (k % ncols) * (w + padding), padding + (k // ncols) * (h + padding)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "") -> list[Path]:
    """One PNG per image: ``folder/{prefix}00000.png``, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(to_pil(images)):
        paths.append(folder / f"{prefix}{k:05d}.png")
        image.save(paths[-1])
    return paths
