"""Single-file checkpoints (``--model model.safetensors``): one file in the original (LDM / CompVis) key layout,
as AUTOMATIC1111 and ComfyUI users have them, loaded with diffusers' ``StableDiffusionPipeline.from_single_file``.

diffusers infers the architecture from the keys and then needs that architecture's diffusers configs (and
tokenizer and scheduler) from the hub; ``--model-config`` (a local diffusers folder or hub id of the same
architecture, passed as ``config=``) supplies them offline. A pickled file (.ckpt) is loaded only with
``allow_pickle``; a .safetensors file is never unpickled.
"""

from __future__ import annotations

from pathlib import Path

from d2f.errors import UserError
from d2f.pipeline.models import resolve_model

LDM_PARTS = {  # what a checkpoint holds, under the key prefixes of the original layout
    "UNet": ("model.diffusion_model.",),
    "VAE": ("first_stage_model.", "vae."),
    "text encoder": ("cond_stage_model.",),
}


def load_single_file(ref, dtype, variant, revision, model_config: str | None, allow_pickle: bool):
    """``StableDiffusionPipeline.from_single_file`` of a checkpoint in the original (LDM) layout. diffusers
    infers the architecture from the keys and takes the component configs (and tokenizer, scheduler) from
    ``model_config`` (a diffusers folder or hub id; ``config=``), else from the hub repo of the inferred
    architecture, which offline is a ``UserError`` asking for ``--model-config``. A pickle (.ckpt) is refused
    unless ``allow_pickle``: unpickling can run code stored in the file."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    if ref.pickle and not allow_pickle:
        raise UserError(
            f"{ref.source} is a pickle ({Path(ref.source).suffix}): loading it can run code stored in the file; "
            "convert it to .safetensors, or pass --allow-pickle if you trust where it comes from"
        )
    if variant is not None:
        raise UserError("--variant is for diffusers folders and hub ids, not for a single-file checkpoint: drop it")
    if not ref.pickle:
        check_layout(ref.source)
    config = None
    if model_config is not None:
        try:
            config = resolve_model(model_config)
        except UserError as exc:
            raise UserError(f"--model-config: {exc}") from None
        if config.single_file:
            raise UserError(f"--model-config takes a diffusers folder or hub id, not the file {model_config}")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            ref.source,
            config=config.source if config else None,
            dtype=dtype,
            revision=revision,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, RuntimeError, KeyError, NotImplementedError, SingleFileComponentError) as exc:
        if isinstance(exc, (NotImplementedError, SingleFileComponentError)):  # weights missing in the file
            reason = "it lacks weights of the architecture; is it a complete Stable Diffusion checkpoint?"
        elif config is None and type(exc).__module__.startswith("huggingface_hub"):
            reason = (
                "diffusers inferred its architecture but could not get that architecture's diffusers config from "
                "the hub; pass --model-config with a local diffusers folder of the same architecture"
            )
        elif not config.local and isinstance(exc, OSError):
            reason = f"{model_config} is not cached and the hub cannot be reached; pass a local diffusers folder"
        else:
            first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:300]
            reason = f"{first}; " + (
                f"is --model-config {model_config} of the same architecture?"
                if config
                else "pass --model-config with a diffusers folder of the same architecture"
            )
        raise UserError(f"could not load single-file model {ref.source} ({type(exc).__name__}): {reason}") from None
    for name in ("unet", "vae", "text_encoder"):  # a weight the file lacks must not stay uninitialised
        missing = [key for key, p in getattr(pipe, name).named_parameters() if p.is_meta]
        if missing:
            raise UserError(f"{ref.source} lacks weights of the {name} ({len(missing)}, e.g. {missing[0]})")
    return pipe


def check_layout(path: str) -> None:
    """A .safetensors ``--model`` must hold an SD checkpoint in the original layout: a UNet, a VAE and a text
    encoder under their LDM prefixes (read from the header only). Names what is missing, which tells a LoRA or a
    lone diffusers component from a checkpoint."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # a truncated or non-safetensors file: all the same to the user
        raise UserError(f"cannot read {path} as safetensors ({type(exc).__name__})") from None
    missing = [name for name, prefixes in LDM_PARTS.items() if not any(k.startswith(prefixes) for k in keys)]
    if missing:
        raise UserError(
            f"{path} is not a Stable Diffusion checkpoint in the single-file (LDM) layout: it has no "
            f"{', '.join(missing)} weights (a LoRA, or one component in diffusers format?)"
        )
