"""One resolver for ``--model``: a built-in name, a local diffusers folder, or a hub id.

Built-in models live in ``d2f/assets/<name>/`` (shipped inside the package). A local folder must be a
diffusers pipeline folder; a missing file is named. Anything else that looks like ``owner/name`` is a
hub id, handed to diffusers' ``from_pretrained`` (users who are online get it downloaded and cached;
offline, an uncached id is a clear error that says how to pass a local folder instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from d2f.errors import UserError

ASSETS = Path(__file__).parent.parent / "assets"
BUILTIN_DESCRIPTIONS = {
    "tiny-shapes-eps": "tiny SD-1.x-style prior (epsilon prediction) trained on the shapes world's base domain",
    "tiny-shapes-v": "tiny SD-2.x-style prior (v prediction) trained on the shapes world's base domain",
}
PIPELINE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved ``--model``: ``source`` is what to pass to ``from_pretrained`` (a folder path or a hub
    id); ``name`` is how to call it in logs and run files."""

    name: str
    source: str
    builtin: bool = False
    local: bool = True


def builtin_names() -> list[str]:
    return [n for n in BUILTIN_DESCRIPTIONS if (ASSETS / n / "model_index.json").is_file()]


def builtin_models() -> list[dict]:
    """What ``d2f models --json`` lists: name, path, prediction_type, resolution, description."""
    rows = []
    for name in builtin_names():
        folder = ASSETS / name
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        rows.append(
            {
                "name": name,
                "path": str(folder),
                "prediction_type": scheduler.get("prediction_type", "epsilon"),
                "resolution": native_resolution(folder),
                "description": BUILTIN_DESCRIPTIONS[name],
            }
        )
    return rows


def native_resolution(folder: str | Path) -> int:
    """The image side the model was trained at: UNet sample_size times the VAE's downsampling factor."""
    folder = Path(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    size = unet.get("sample_size", 64)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return int(size) * 2 ** (len(vae.get("block_out_channels", [0])) - 1)


def resolve_model(model: str) -> ModelRef:
    """Resolve ``--model``; raises ``UserError`` naming what is wrong."""
    if model in BUILTIN_DESCRIPTIONS:
        folder = ASSETS / model
        if not (folder / "model_index.json").is_file():
            raise UserError(
                f"built-in model {model!r} is not built in this install ({folder} is missing); "
                "rebuild it with `python -m d2f.world.build`"
            )
        return ModelRef(model, str(folder), builtin=True)
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        if not path.is_dir():
            raise UserError(
                f"model folder {model} does not exist; give a built-in name "
                f"({', '.join(BUILTIN_DESCRIPTIONS)}), a diffusers folder or a hub id like owner/name"
            )
        missing = [f for f in PIPELINE_FILES if not (path / f).is_file()]
        if missing:
            raise UserError(f"{model} is not a complete diffusers model folder: missing {', '.join(missing)}")
        return ModelRef(path.name, str(path.resolve()))
    return ModelRef(model, model, local=False)


def hub_file(model: ModelRef, filename: str) -> Path:
    """One file of a model: from its folder, or (hub id) through the hub cache."""
    if model.local:
        return Path(model.source) / filename
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(model.source, filename))
    except Exception as exc:  # offline, unknown repo, gated: all the same to the user
        raise UserError(
            f"could not get {filename} of hub model {model.source!r} ({type(exc).__name__}): "
            "it is not cached and the hub cannot be reached; pass a local diffusers folder "
            "with --model PATH"
        ) from None


def resolution_multiple(folder: str | Path) -> int:
    """Image sides must be a multiple of this: the VAE's downsampling times the UNet's."""
    folder = Path(folder)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return 2 ** (len(vae.get("block_out_channels", [0])) - 1) * 2 ** (len(unet.get("block_out_channels", [0])) - 1)


def check_resolution(folder: str | Path, height: int, width: int | None = None) -> None:
    """Raise ``UserError`` for an image size the model cannot take (not a positive multiple of
    ``resolution_multiple``)."""
    multiple = resolution_multiple(folder)
    for side in (height, width if width is not None else height):
        if side <= 0 or side % multiple:
            lower = max(multiple, side // multiple * multiple)
            raise UserError(
                f"size {side} px does not fit this model: the VAE and UNet need a multiple of "
                f"{multiple} px (e.g. {lower} or {lower + multiple})"
            )
