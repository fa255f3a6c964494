"""Load a model (and a LoRA or a run) as a diffusers ``StableDiffusionPipeline``.

    pipe = load_pipeline("tiny-shapes-eps", lora="runs/my-run")

With a run folder, the base model defaults to the run's, the LoRA (or full-finetune UNet) is loaded, and
``pipe.scheduler`` becomes the scheduler the run samples with, so ``pipe(...)`` itself does the right thing.
``pipe.d2f_run`` holds the run record (None without one).
"""

from __future__ import annotations

from pathlib import Path

from d2f.errors import UserError
from d2f.pipeline.lora_checks import check_lora
from d2f.pipeline.models import resolve_model
from d2f.pipeline.run_folder import CONV_IO_FILE, CONV_IO_LAYERS, resolve_lora

DEFAULT_MODEL = "tiny-shapes-eps"


def _same_model(model: str, run: dict) -> bool:
    if model in (run.get("base_model"), run.get("base_model_source")):
        return True
    source = resolve_model(model).source
    base = run.get("base_model_source") or run["base_model"]
    return (
        Path(source).expanduser().resolve() == Path(base).expanduser().resolve()
        if Path(source).exists()
        else source == base
    )


def load_base_pipeline(
    model: str,
    dtype=None,
    variant: str | None = None,
    revision: str | None = None,
    model_config: str | None = None,
    allow_pickle: bool = False,
):
    """``StableDiffusionPipeline.from_pretrained`` of a built-in name, folder or hub id, with d2f's rules:
    weights in ``dtype`` (float32 unless asked: a folder stored in fp16 would otherwise come back in fp16),
    safetensors only (a pickle is never unpickled), ``variant`` / ``revision`` passed through, and every
    failure one ``UserError`` that says what to do. A single file goes to ``load_single_file`` (with
    ``model_config`` and ``allow_pickle``)."""
    import torch
    from diffusers import StableDiffusionPipeline

    ref = resolve_model(model)
    if ref.single_file:
        from d2f.pipeline.single_file import load_single_file

        return load_single_file(ref, dtype or torch.float32, variant, revision, model_config, allow_pickle)
    if model_config is not None:
        raise UserError(
            f"--model-config is for single-file checkpoints (.safetensors, .ckpt); {model} is not one: drop it"
        )
    if ref.local:
        check_variant(Path(ref.source), variant)
    try:
        return StableDiffusionPipeline.from_pretrained(
            ref.source,
            dtype=dtype or torch.float32,
            variant=variant,
            revision=revision,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        reason = (
            "it is not cached and the hub cannot be reached; pass a local diffusers folder"
            if not ref.local
            else str(exc).strip().splitlines()[0]
        )
        raise UserError(f"could not load model {model!r} from {ref.source} ({type(exc).__name__}): {reason}") from None


def check_variant(folder: Path, variant: str | None) -> None:
    """A folder whose weights exist only as a variant (``diffusion_pytorch_model.fp16.safetensors``) needs
    ``--variant``; an asked variant must exist. Names the variants there are."""
    for component in ("unet", "vae", "text_encoder"):
        files = [p.name for p in (folder / component).glob("*.safetensors")]
        plain = [name for name in files if name.count(".") == 1]
        variants = sorted({name.split(".")[-2] for name in files if name.count(".") == 2})
        if variant is None and not plain and variants:
            raise UserError(
                f"{folder / component} has only {', '.join(variants)} weights: pass --variant {variants[0]}"
            )
        if variant is not None and variant not in variants:
            found = ", ".join(variants) if variants else "none"
            raise UserError(f"no {variant} weights in {folder / component} (variants there: {found}); drop --variant")


def load_pipeline(
    model: str | None = None,
    lora: str | Path | None = None,
    device=None,
    dtype=None,
    variant: str | None = None,
    revision: str | None = None,
    model_config: str | None = None,
    allow_pickle: bool = False,
):
    """A ``StableDiffusionPipeline`` for ``model`` (built-in name, folder, single file or hub id), with ``lora``
    loaded.

    With a run folder as ``lora``, ``model`` defaults to the run's base model (another base model is a
    ``UserError`` naming both), and ``pipe.scheduler`` becomes the scheduler the run samples with
    (``Diff2FlowEulerScheduler`` with the run's prediction type and objective; DDIM, trailing spacing, for a
    ``diffusion`` run), so ``pipe(...)`` itself does the right thing. ``pipe.d2f_run`` holds the run's
    json (None without one). ``dtype`` (default float32), ``variant``, ``revision``, ``model_config`` (a
    single file's diffusers config; default: the run's) and ``allow_pickle``: ``load_base_pipeline``."""
    weights, run = resolve_lora(lora) if lora is not None else (None, None)
    if model is None:
        model = run["base_model"] if run else DEFAULT_MODEL
    elif run and not _same_model(model, run):
        raise UserError(
            f"the LoRA {lora} was trained on {run['base_model']!r}, not on --model {model!r}; "
            f"drop --model or pass --model {run['base_model']}"
        )
    if run and model_config is None:
        model_config = run.get("model_config")
    pipe = load_base_pipeline(model, dtype, variant, revision, model_config, allow_pickle)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if weights is not None and weights.is_dir():  # a full finetune: its UNet replaces the base model's
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(weights, dtype=pipe.unet.dtype, use_safetensors=True).to(
            pipe.unet.device
        )
    elif weights is not None:
        _load_lora(pipe, weights, model)
        load_conv_io(pipe, weights.with_name(CONV_IO_FILE))
    pipe.d2f_run = run
    if run:
        pipe.scheduler = run_scheduler(pipe.scheduler.config, run)
    return pipe


def run_scheduler(config, run: dict):
    """The diffusers scheduler a run is sampled with, from the base model's scheduler config."""
    from diffusers import DDIMScheduler

    from d2f.diffusers_scheduler import Diff2FlowEulerScheduler
    from d2f.objectives import sampled_objective

    overrides = dict(prediction_type=run["prediction_type"])
    schedule = run.get("schedule")
    if run.get("zero_terminal_snr") or (isinstance(schedule, dict) and schedule.get("zero_terminal_snr")):
        overrides["rescale_betas_zero_snr"] = True
    objective = sampled_objective(run)  # a reflow run: its student's FM objective
    if objective == "diffusion":
        return DDIMScheduler.from_config(
            config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, **overrides
        )
    return Diff2FlowEulerScheduler.from_config(config, objective=objective, **overrides)


def _load_lora(pipe, weights: Path, model: str) -> None:
    """``pipe.load_lora_weights`` after ``check_lora``."""
    check_lora(pipe, weights, model)
    try:
        pipe.load_lora_weights(str(weights))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(
            f"the LoRA {weights} does not fit model {model!r} ({type(exc).__name__}); pass its base model with --model"
        ) from None


def load_conv_io(pipe, path: Path) -> None:
    """The full ``conv_in`` and ``conv_out`` a ``--train-conv-io`` run saved beside its LoRA (none: nothing to do),
    checked against the UNet's own layers (names and shapes) before they replace them."""
    if not path.is_file():
        return
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception:
        raise UserError(f"cannot read {path} as safetensors; delete it or retrain the run") from None
    own = {f"{name}.{k}": v for name in CONV_IO_LAYERS for k, v in getattr(pipe.unet, name).state_dict().items()}
    wrong = sorted(k for k in state if k not in own or state[k].shape != own[k].shape)
    if wrong or set(state) != set(own):
        raise UserError(f"{path} does not fit this model's conv_in / conv_out ({', '.join(wrong) or 'missing layers'})")
    pipe.unet.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
