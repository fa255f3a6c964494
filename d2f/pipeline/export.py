"""Export a d2f LoRA for other tools: the kohya / AUTOMATIC1111 key format.

d2f saves LoRAs in diffusers' format (``unet.<module>.lora.down.weight``), which ``pipe.load_lora_weights``
reads. kohya's sd-scripts, AUTOMATIC1111, ComfyUI and InvokeAI read the kohya format instead:
``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight`` plus one ``.alpha`` scalar per layer. The
conversion is diffusers' own ``convert_state_dict_to_kohya`` (from PEFT's ``lora_A`` / ``lora_B`` names); d2f
adds the run's real alpha (diffusers' converter writes alpha = rank, i.e. scale 1, which is wrong for a LoRA
trained with another ``--lora-alpha``): a kohya loader scales each layer by alpha / rank. A text-encoder LoRA
becomes kohya's ``lora_te_<module>`` layers, the SD 1.x/2.x name (one text encoder). The kohya format has no
token-embedding layers, so a ``--train-text-encoder`` run (which changes the token embedding too) is refused:
dropping that part would export another model than the one trained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from d2f.errors import UserError
from d2f.files import atomic_file, check_writable_dir, make_folder, shareable
from d2f.pipeline.lora_checks import check_lora_state, check_pairs
from d2f.pipeline.run_folder import (
    CHECKPOINTS_DIR,
    CONV_IO_FILE,
    LOCK_FILE,
    LORA_FILE,
    METRICS_FILE,
    RUN_FILE,
    SAMPLES_DIR,
    UNET_DIR,
    resolve_lora,
)

FORMATS = ("kohya",)
# diffusers' LoRA names -> PEFT's, which diffusers' kohya converter takes (diffusers already writes convolution
# layers with PEFT's names)
TO_PEFT = {
    ".lora.down.weight": ".lora_A.weight",
    ".lora.up.weight": ".lora_B.weight",
    ".lora_A.weight": ".lora_A.weight",
    ".lora_B.weight": ".lora_B.weight",
    ".lora_linear_layer.down.weight": ".lora_A.weight",  # the text encoder's
    ".lora_linear_layer.up.weight": ".lora_B.weight",
}


def lora_alpha(metadata: dict, run: dict | None, rank: int) -> float:
    """The LoRA's alpha: from the adapter metadata diffusers saves beside the weights, else from the run
    record, else the rank (scale alpha / rank = 1, peft's default when alpha is not given)."""
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    if "unet.lora_alpha" in adapter:
        return float(adapter["unet.lora_alpha"])
    if run and isinstance(run.get("lora"), dict) and run["lora"].get("alpha"):
        return float(run["lora"]["alpha"])
    return float(rank)


def to_kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict (UNet, and text encoder if any) in kohya's format, with ``.alpha`` =
    ``alpha`` for every layer (d2f gives both adapters the same rank and alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya

    if any("lora_embedding" in key for key in state):
        raise UserError(
            "this LoRA changes the text encoder's token embedding (d2f train --train-text-encoder, on by itself for "
            "new caption words), which the kohya format cannot hold; use the diffusers file itself "
            "(pipe.load_lora_weights loads it), or train with --no-train-text-encoder"
        )
    peft = {}
    for key, value in state.items():
        suffix = next((s for s in TO_PEFT if key.endswith(s)), None)
        if suffix is None or not key.startswith(("unet.", "text_encoder.")):
            raise UserError(f"unexpected LoRA key {key!r}: d2f exports its own LoRAs, in diffusers' format")
        peft[key[: -len(suffix)] + TO_PEFT[suffix]] = value
    kohya = convert_state_dict_to_kohya(peft)
    # diffusers names the text encoder te1 (SDXL's first of two); SD 1.x/2.x LoRAs call their one encoder te
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in kohya.items()}
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}


def export_lora(
    lora: str | Path,
    output: str | Path | None = None,
    fmt: str = "kohya",
    overwrite: bool = False,
    model: str | None = None,
) -> Path:
    """Write the LoRA of ``lora`` (a run folder or a LoRA file) in format ``fmt``; returns the file written
    (default: ``<run>/pytorch_lora_weights_kohya.safetensors``, or beside the file).

    Nothing is written unless the LoRA is whole and finite and fits its base model (``model``, default the
    run's; a bare file without one is checked for whole layers only), and ``output`` is a new ``.safetensors``
    file (an existing one only with ``overwrite``) that is none of the run's own files. The file is written
    atomically and checked by loading it back (``verify``) before it replaces anything."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    weights, run = resolve_lora(lora)
    if weights.is_dir():
        raise UserError(f"{lora} is a full finetune (a whole UNet), not a LoRA: there is no LoRA to export")
    if weights.with_name(CONV_IO_FILE).is_file():
        raise UserError(
            f"{lora} also trained conv_in and conv_out fully (--train-conv-io, {CONV_IO_FILE}), which the kohya LoRA "
            "format cannot hold: exporting the LoRA alone would be another model; sample it with d2f or diffusers"
        )
    output = Path(output).expanduser() if output else weights.with_name(weights.stem + f"_{fmt}.safetensors")
    check_output(output, weights, run is not None, overwrite)
    try:
        with safe_open(str(weights), "pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception:
        raise UserError(f"cannot read {weights} as safetensors; is it a LoRA file?") from None
    check_state(state, metadata, weights, model or (run or {}).get("base_model"), run)
    ranks = {v.shape[0] for k, v in state.items() if k.endswith((".lora.down.weight", ".lora_A.weight"))}
    if len(ranks) != 1:
        raise UserError(f"{weights} has layers of several ranks {sorted(ranks)}; the kohya export needs one rank")
    rank = ranks.pop()
    alpha = lora_alpha(metadata, run, rank)
    kohya = to_kohya(state, alpha)
    header = {"format": "pt", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}"}
    make_folder(output.parent, fix=f"choose another --output than {output}")
    fix = f"free space on {output.parent}'s disk or choose another --output"
    with atomic_file(output, fix) as tmp:
        save_file(kohya, str(tmp), metadata=header)
        verify(tmp, kohya, header, state, alpha, output)
        shareable(tmp)
    return output


# what ``d2f train`` writes into a run folder: never an export's --output (the folders: anything inside them)
RUN_FILES = (
    LORA_FILE,
    RUN_FILE,
    METRICS_FILE,
    LOCK_FILE,
    CONV_IO_FILE,
    "adapter_model.safetensors",
    "adapter_config.json",
)
RUN_FOLDERS = (CHECKPOINTS_DIR, SAMPLES_DIR, UNET_DIR)


def check_output(output: Path, weights: Path, is_run: bool, overwrite: bool) -> None:
    """``UserError`` unless ``output`` may receive the export: a ``.safetensors`` name; not the LoRA itself nor
    (in a run folder) a file the run owns, by name, through a symlink or as a hard link; new, or replaced only
    with ``overwrite``; in a folder that can be written."""
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file name such as {output / 'lora_kohya.safetensors'}")
    if output.suffix.lower() != ".safetensors":
        raise UserError(f"--output {output} needs the .safetensors suffix, e.g. {output.with_suffix('.safetensors')}")
    resolved = output.resolve()
    run_root = weights.parent.resolve() if is_run else None
    owned = [weights]
    if run_root is not None:
        owned += [run_root / name for name in RUN_FILES]
        owned += [f for name in RUN_FOLDERS if (run_root / name).is_dir() for f in (run_root / name).rglob("*")]
    in_run_folder = run_root is not None and run_root in resolved.parents and resolved.parent != run_root
    if (
        resolved in [p.resolve() for p in owned]  # the path, or a symlink to it
        or (in_run_folder and resolved.relative_to(run_root).parts[0] in RUN_FOLDERS)
        or (output.exists() and any(p.is_file() and os.path.samefile(output, p) for p in owned))  # a hard link
    ):
        raise UserError(
            f"--output {output} is {'the LoRA being exported' if _same(output, weights) else 'a file of the run'} "
            f"({weights.parent if is_run else weights}); write the export to a new file, e.g. the default "
            f"{weights.with_name(weights.stem + '_kohya.safetensors')}"
        )
    if output.exists() and not overwrite:
        raise UserError(f"--output {output} exists; pass --overwrite to replace it, or choose another --output")
    check_writable_dir(output.parent, "--output")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_state(state: dict, metadata: dict, weights: Path, model: str | None, run: dict | None) -> None:
    """Before anything is written: no token embedding (kohya has none), only d2f's LoRA keys, whole layers,
    finite weights, and, where the base model is a local folder, layers that exist in it with its sizes and
    all the layers the LoRA's own config targets (``d2f.pipeline.lora_checks.check_lora_state``)."""
    if any("lora_embedding" in key for key in state):
        to_kohya(state, 1.0)  # its error: the token embedding cannot be exported
    for key in state:
        if not key.startswith(("unet.", "text_encoder.")) or not any(key.endswith(s) for s in TO_PEFT):
            raise UserError(
                f"unexpected LoRA key {key!r} in {weights}: d2f exports its own LoRAs, in diffusers' format"
            )
    check_pairs(state, weights)
    bad = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise UserError(
            f"the LoRA {weights} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]}): it comes from "
            "a diverged run; export an earlier checkpoint (checkpoints/step_XXXXX) or retrain with a lower --lr"
        )
    modules = model_modules(model, run) if model else None
    if modules is not None:
        check_lora_state(modules, state, metadata, weights, model)


def model_modules(model: str, run: dict | None):
    """The base model's UNet and text encoder on the meta device (layer names and sizes, no weights), or None
    when ``model`` is not a local diffusers folder (a single file, a hub id): then the layers are not checked."""
    from types import SimpleNamespace

    from d2f.pipeline.models import resolve_model

    try:
        ref = resolve_model(model)
    except UserError:
        if run is not None and run.get("base_model_source") and Path(run["base_model_source"]).is_dir():
            ref = resolve_model(run["base_model_source"])
        else:
            raise
    if not ref.local or ref.single_file:
        return None
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(ref.source)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    return SimpleNamespace(unet=unet, text_encoder=text_encoder)


def verify(path: Path, kohya: dict, header: dict, state: dict, alpha: float, output: Path) -> None:
    """Load the written file back before it replaces anything: safetensors gives the same tensors and header,
    and diffusers' own kohya reader (``lora_state_dict``, what ``pipe.load_lora_weights`` runs) reads it into
    as many LoRA weights as the exported LoRA has, each layer with the exported alpha."""
    from diffusers import StableDiffusionPipeline

    def fail(why: str) -> UserError:
        return UserError(
            f"the kohya export did not load back ({why}), so {output} was not written; this is a bug of d2f or "
            "diffusers: use the diffusers-format LoRA itself (pipe.load_lora_weights loads it)"
        )

    with safe_open(str(path), "pt") as f:
        back = {key: f.get_tensor(key) for key in f.keys()}
        if f.metadata() != header:
            raise fail("its header differs")
    if back.keys() != kohya.keys() or any(not torch.equal(back[k], kohya[k]) for k in kohya):
        raise fail("safetensors reads other tensors than were written")
    try:
        read, alphas = StableDiffusionPipeline.lora_state_dict(dict(back))
    except Exception as exc:
        raise fail(f"diffusers' reader: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    lora_weights = [k for k in read if not k.endswith(".alpha")]
    if len(lora_weights) != len(state):
        raise fail(f"diffusers reads {len(lora_weights)} LoRA weights, the LoRA has {len(state)}")
    if alphas and {float(a) for a in alphas.values()} != {float(alpha)}:
        raise fail(f"diffusers reads alphas {sorted({float(a) for a in alphas.values()})}, not {alpha:g}")
