"""One resolver for ``--model``: a built-in name, a local diffusers folder, a single file, or a hub id.

Built-in models live in ``d2f/assets/<name>/`` (shipped inside the package). A local folder must be a
diffusers pipeline folder; a missing file is named. A local ``.safetensors`` (or pickled ``.ckpt``) file is a
single-file checkpoint as AUTOMATIC1111 and ComfyUI users have them, loaded with diffusers' ``from_single_file``
(``d2f.pipeline.loading``). Anything else that looks like ``owner/name`` is a hub id, handed to diffusers'
``from_pretrained`` (users who are online get it downloaded and cached; offline, an uncached id is a clear
error that says how to pass a local folder instead).
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
    "tiny-shapes-eps-words": "tiny-shapes-eps's recipe under a text encoder pretrained on 19,673 English words "
    "and kept frozen, as SD keeps CLIP",
}
PIPELINE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")  # all but .safetensors are pickles


@dataclass(frozen=True)
class ModelRef:
    """A resolved ``--model``: ``source`` is what to pass to ``from_pretrained`` (a folder path or a hub
    id, or for ``single_file`` the checkpoint file's path); ``name`` is how to call it in logs and run files."""

    name: str
    source: str
    builtin: bool = False
    local: bool = True
    single_file: bool = False

    @property
    def pickle(self) -> bool:
        """A single file that only ``torch.load`` (unpickling) can read."""
        return self.single_file and Path(self.source).suffix.lower() != ".safetensors"


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


def _configs(model) -> tuple[dict, dict]:
    """The UNet's and the VAE's config of ``model``: a diffusers folder, or a loaded pipeline (a single file)."""
    if hasattr(model, "unet"):
        return dict(model.unet.config), dict(model.vae.config)
    folder = Path(model)
    return tuple(json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae"))


def native_resolution(model) -> int:
    """The image side the model was trained at: UNet sample_size times the VAE's downsampling factor.
    ``model``: a diffusers folder or a loaded pipeline."""
    unet, vae = _configs(model)
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
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES and not path.is_dir():
        if not path.is_file():
            raise UserError(f"model file {model} does not exist")
        return ModelRef(path.name, str(path.resolve()), single_file=True)
    if path.is_file():
        raise UserError(
            f"{model} is a file but not a single-file checkpoint; give a {' or '.join(SINGLE_FILE_SUFFIXES[:2])} "
            "file, a diffusers folder or a hub id"
        )
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        if not path.is_dir():
            raise UserError(
                f"model folder {model} does not exist; give a built-in name "
                f"({', '.join(BUILTIN_DESCRIPTIONS)}), a diffusers folder, a .safetensors file or a hub id "
                "like owner/name"
            )
        missing = [f for f in PIPELINE_FILES if not (path / f).is_file()]
        if missing:
            raise UserError(f"{model} is not a complete diffusers model folder: missing {', '.join(missing)}")
        return ModelRef(path.name, str(path.resolve()))
    return ModelRef(model, model, local=False)


def hub_file(model: ModelRef, filename: str) -> Path:
    """One file of a model: from its folder, or (hub id) through the hub cache."""
    if model.single_file:
        raise UserError(
            f"{model.name} is a single-file checkpoint: it holds no {filename}; give the diffusers folder of "
            "its architecture (what --model-config takes) instead"
        )
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


def resolution_multiple(model) -> int:
    """Image sides must be a multiple of this: the VAE's downsampling times the UNet's (``model``: a diffusers
    folder or a loaded pipeline)."""
    unet, vae = _configs(model)
    return 2 ** (len(vae.get("block_out_channels", [0])) - 1) * 2 ** (len(unet.get("block_out_channels", [0])) - 1)


def check_resolution(model, height: int, width: int | None = None) -> None:
    """Raise ``UserError`` for an image size the model cannot take (not a positive multiple of
    ``resolution_multiple``); ``model``: a diffusers folder or a loaded pipeline."""
    multiple = resolution_multiple(model)
    for side in (height, width if width is not None else height):
        if side <= 0 or side % multiple:
            lower = max(multiple, side // multiple * multiple)
            raise UserError(
                f"size {side} px does not fit this model: the VAE and UNet need a multiple of "
                f"{multiple} px (e.g. {lower} or {lower + multiple})"
            )
