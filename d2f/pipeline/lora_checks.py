"""What a LoRA file must be before it is loaded: every layer whole (its down and its up), the shapes of the
model's layers, and at least the modules its own config says it covers; else one ``UserError`` naming the file."""

from __future__ import annotations

from pathlib import Path

from d2f.errors import UserError

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


def check_lora(pipe, weights: Path, model: str) -> None:
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
