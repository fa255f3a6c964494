"""Load a model (and a LoRA or a run) as a diffusers ``StableDiffusionPipeline``.

    pipe = load_pipeline("tiny-shapes-eps", lora="runs/my-run")

With a run folder, the base model defaults to the run's, the LoRA (or full-finetune UNet) is loaded, and
``pipe.scheduler`` becomes the scheduler the run samples with, so ``pipe(...)`` itself does the right thing.
``pipe.d2f_run`` holds the run record (None without one).
"""

from __future__ import annotations

from pathlib import Path

from d2f.errors import UserError
from d2f.pipeline.models import resolve_model
from d2f.pipeline.run_folder import resolve_lora

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


# diffusers' UNet names, peft's, and diffusers' text-encoder names (``q_proj.lora_linear_layer.down.weight``)
LORA_SUFFIXES = {
    ".lora.down.weight": "in",
    ".lora_A.weight": "in",
    ".lora_linear_layer.down.weight": "in",
    ".lora.up.weight": "out",
    ".lora_B.weight": "out",
    ".lora_linear_layer.up.weight": "out",
}


# peft's token-embedding LoRA (``--train-text-encoder``): A (r, vocab), B (dim, r); no in/out features to check
EMBEDDING_SUFFIXES = {".lora_embedding_A": "in", ".lora_embedding_B": "out"}


def _lora_layers(keys, suffixes: dict[str, str] = LORA_SUFFIXES) -> dict[str, tuple[str, str, str]]:
    """{key: (component, module path, "in" or "out")} for diffusers- or peft-format LoRA weight keys."""
    out = {}
    for key in keys:
        for suffix, side in suffixes.items():
            if key.endswith(suffix):
                component, _, path = key[: -len(suffix)].partition(".")
                out[key] = (component, path, side)
    return out


def lora_modules(keys) -> dict[tuple[str, str], set[str]]:
    """{(component, module path): the sides ("in": down / lora_A, "out": up / lora_B) the keys hold}."""
    modules: dict[tuple[str, str], set[str]] = {}
    for component, path, side in _lora_layers(keys, LORA_SUFFIXES | EMBEDDING_SUFFIXES).values():
        modules.setdefault((component, path), set()).add(side)
    return modules


def check_pairs(keys, weights: Path) -> dict[tuple[str, str], set[str]]:
    """``UserError`` unless every LoRA layer in ``keys`` has both its down (lora_A) and its up (lora_B) weight:
    half a layer is not a smaller LoRA but a broken one (diffusers would fail on it, or leave it out). Returns
    ``lora_modules(keys)``."""
    modules = lora_modules(keys)
    if not modules:
        raise UserError(f"{weights} holds no LoRA layers (no lora_A / lora_B or lora.down / lora.up weights)")
    broken = sorted(f"{c}.{p}" for (c, p), sides in modules.items() if sides != {"in", "out"})
    if broken:
        raise UserError(
            f"the LoRA {weights} is incomplete: {len(broken)} of its {len(modules)} layers lack their down or up "
            f"weight (e.g. {broken[0]}); the file was cut or edited: use the run's own file or a checkpoint's"
        )
    return modules


def recorded_targets(metadata: dict) -> dict[str, list[str]]:
    """{component: peft ``target_modules``} from the adapter config diffusers saves in the file's metadata
    (``lora_adapter_metadata``: ``unet.target_modules``, ``text_encoder.target_modules``); {} without one."""
    import json

    try:
        adapter = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except ValueError:
        return {}
    targets = {}
    for key, value in adapter.items() if isinstance(adapter, dict) else ():
        component, _, field = key.partition(".")
        if field == "target_modules" and isinstance(value, (list, tuple)) and value:
            targets[component] = [str(v) for v in value]
    return targets


def check_coverage(pipe, modules: dict[tuple[str, str], set[str]], metadata: dict, weights: Path) -> None:
    """``UserError`` if the LoRA covers fewer layers of ``pipe`` than its own recorded config targets (a file
    with layers removed samples as a weaker, different model without a word). peft adapts every Linear, Conv2d
    or Embedding whose name is a target or ends with ``.target``; so does this count."""
    import torch

    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
    for component, targets in recorded_targets(metadata).items():
        model = getattr(pipe, component, None)
        if model is None:
            continue
        expected = {
            name
            for name, layer in model.named_modules()
            if isinstance(layer, kinds) and "lora_" not in name and any(_targets(name, target) for target in targets)
        }
        covered = {path for (c, path) in modules if c == component}
        missing = sorted(expected - covered)
        if missing:
            raise UserError(
                f"the LoRA {weights} covers {len(expected & covered)} of the {len(expected)} {component} layers its "
                f"own config targets ({', '.join(targets)}); {missing[0]} and {len(missing) - 1} more are missing: "
                "the file was cut or edited; use the run's own file or a checkpoint's"
            )


def _targets(name: str, target: str) -> bool:
    """Whether peft's ``target_modules`` entry ``target`` names the module ``name`` (the name or its tail)."""
    return name == target or name.endswith("." + target)


def _check_lora(pipe, weights: Path, model: str) -> None:
    """Before diffusers sees the file (it only warns about LoRA keys it cannot place, and prints pages of size
    mismatches): every LoRA layer is whole (``check_pairs``), names a module of this model with matching
    in/out features, covers what its own config targets (``check_coverage``), and every weight is finite (a
    diverged run's LoRA would sample black images)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception:
        raise UserError(f"cannot read {weights} as safetensors; is it a LoRA file?") from None
    check_lora_state(pipe, tensors, metadata, weights, model)


def check_lora_state(pipe, tensors: dict, metadata: dict, weights: Path, model: str) -> None:
    """``_check_lora`` of a LoRA already read: ``tensors`` and the file's ``metadata``. ``pipe`` needs only its
    ``unet`` and ``text_encoder`` modules (on the meta device is enough: shapes, no weights)."""
    import torch

    def misfit(why: str) -> UserError:
        return UserError(
            f"the LoRA {weights} does not fit model {model!r} ({why}): it was probably trained on another base "
            "model; pass that model with --model"
        )

    modules = check_pairs(tensors, weights)
    for key, (component, path, side) in _lora_layers(tensors).items():
        modules_of = dict(getattr(pipe, component).named_modules()) if hasattr(pipe, component) else {}
        layer = modules_of.get(path)
        if layer is None:
            raise misfit(f"it has no layer {component}.{path}")
        # lora_A / down: (r, in, ...);  lora_B / up: (out, r, ...)
        size = tensors[key].shape[1] if side == "in" else tensors[key].shape[0]
        expected = getattr(layer, "in_features" if side == "in" else "out_features", None) or getattr(
            layer, "in_channels" if side == "in" else "out_channels", None
        )
        if expected is not None and size != expected:
            raise misfit(f"{key} is for {size} features, the layer has {expected}")
    check_coverage(pipe, modules, metadata, weights)
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(
            f"the LoRA {weights} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): it comes from "
            "a diverged run; use an earlier checkpoint or retrain with a lower --lr"
        )


def _load_lora(pipe, weights: Path, model: str) -> None:
    """``pipe.load_lora_weights`` after ``_check_lora``."""
    _check_lora(pipe, weights, model)
    try:
        pipe.load_lora_weights(str(weights))
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(
            f"the LoRA {weights} does not fit model {model!r} ({type(exc).__name__}); pass its base model with --model"
        ) from None
