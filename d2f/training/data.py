"""Training data for ``d2f train --data``: image-caption pairs, as a finetune of SD expects them.

``--data`` is one of

- a built-in name that the ``builtin`` resolver knows (``d2f.world.builtin_data``: ``shapes-base``,
  ``shapes-target``). The world writes it once as an imagefolder to a cache folder, and it is then loaded
  exactly like a user's folder, so the built-in demo runs through the same code path as real data;
- a local folder or file in one of the layouts of ``d2f.training.layouts``: an imagefolder with
  ``metadata.jsonl`` / ``metadata.csv``, images with same-named ``.txt`` captions (kohya's ``N_name/``
  repeat folders too), a ``save_to_disk`` folder, or a ``.parquet`` / ``.csv`` / ``.jsonl`` file;
- a hub dataset name (``owner/name``), loaded with ``datasets.load_dataset(name, split="train")``.

Preprocessing, as diffusers' ``train_text_to_image`` does it: resize the shorter side to ``resolution``
(Lanczos), crop a ``resolution`` square (centre, or a random crop that is drawn once per image from the
seed), map pixels to [-1, 1] (the VAE's range); transparent pixels are composited on white.
``--random-flip`` mirrors an image with probability 1/2 at each step; the trainer draws the flips.

Every image is decoded once when the data is loaded, so an unreadable file is found before training
starts and named in a one-line ``UserError`` (or, with ``skip_bad_images``, skipped and counted). That pass
also computes the data's ``fingerprint``: a short hash of what the trainer sees (every kept image's bytes
and caption, in order, and the preprocessing settings), recorded in the run record so that ``--resume``
can tell when the data changed under a run.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from d2f.errors import UserError
from d2f.training.layouts import load_local


@dataclass
class BuiltinData:
    """A named dataset that a world of built-in data provides (``d2f.world.builtin_data``): an imagefolder
    written for the asked resolution, its domain, the prompts to validate with, and how to score samples
    (``evaluate(images (B, 3, H, W) in [0, 1], prompts) -> {metric: value}``)."""

    folder: Path
    domain: str
    prompts: list[str]
    evaluate: Callable[[torch.Tensor, list[str]], dict]


BuiltinResolver = Callable[[str, int], "BuiltinData | None"]


@dataclass
class ImageCaptionData:
    """Loaded, checked image-caption data. ``rows`` are the indices of readable images in ``dataset``
    (a ``datasets.Dataset`` whose image column is not decoded: dicts with ``path`` and ``bytes``)."""

    dataset: object
    rows: list[int]
    captions: list[str]
    name: str  # what the user passed as --data
    location: str  # the folder or hub id it was loaded from
    image_column: str
    caption_column: str
    resolution: int
    center_crop: bool = True
    seed: int = 0
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    builtin: BuiltinData | None = None  # what the built-in world says about this data, else None
    fingerprint: str = ""  # a short hash of the kept images' bytes, the captions and the preprocessing

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, indices) -> torch.Tensor:
        """Preprocessed images (B, 3, R, R) in [-1, 1], float32, for sample indices ``indices``."""
        return torch.stack([self._pixels(int(k)) for k in indices])

    def _pixels(self, k: int) -> torch.Tensor:
        row = self.rows[k]
        image = _open(self.dataset[row][self.image_column])
        image = preprocess(image, self.resolution, self.center_crop, crop_seed=(self.seed, row))
        array = np.asarray(image, dtype=np.float32) / 127.5 - 1  # [0, 255] -> [-1, 1]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def preprocess(image: Image.Image, resolution: int, center_crop: bool = True, crop_seed=None) -> Image.Image:
    """Resize the shorter side to ``resolution`` and crop a square of that side (centre, or random
    from ``crop_seed``)."""
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.LANCZOS)
    if center_crop:
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
        rng = random.Random(str(crop_seed))
        left, top = rng.randint(0, new_w - resolution), rng.randint(0, new_h - resolution)
    return image.crop((left, top, left + resolution, top + resolution))


def _open(value) -> Image.Image:
    """An undecoded ``datasets.Image`` value (dict with ``path``/``bytes``) or a PIL image, as RGB."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, str):  # a column of file paths
        value = {"path": value}
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    with Image.open(source) as image:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # transparent pixels become white, as image viewers show them (not the black of a dropped alpha)
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return image.convert("RGB")


def _identity(value) -> bytes:
    """The bytes that identify an image value: its file's (or stored) bytes, or a decoded image's pixels."""
    if isinstance(value, Image.Image):
        return f"{value.mode} {value.size}".encode() + value.tobytes()
    if isinstance(value, str):
        value = {"path": value}
    return value["bytes"] if value.get("bytes") else Path(value["path"]).read_bytes()


def _describe(value, row: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {row}"


def _load_datasets_object(data: str, resolution: int, builtin: BuiltinResolver | None, image_column: str):
    """(dataset, location, BuiltinData or None) for ``--data``; UserError for what cannot be loaded."""
    import datasets

    known = builtin(data, resolution) if builtin is not None else None
    if known is not None:
        dataset = datasets.load_dataset("imagefolder", data_dir=str(known.folder), split="train")
        return dataset, str(known.folder), known
    path = Path(data).expanduser()
    if path.exists() or data.startswith((".", "/", "~")) or data.count("/") != 1:
        if not path.exists():
            names = ", ".join(getattr(builtin, "names", ()))
            raise UserError(
                f"data folder {data} does not exist; give "
                + (f"a built-in name ({names}), " if names else "")
                + "an imagefolder (images + metadata.jsonl), images with .txt captions, a data file or a hub "
                "dataset like owner/name"
            )
        dataset, _ = load_local(path, image_column)
        return dataset, str(path.resolve()), None
    try:
        return datasets.load_dataset(data, split="train"), data, None
    except Exception as exc:  # offline, unknown, gated, no train split: all the same to the user
        raise UserError(
            f"could not load hub dataset {data!r} ({type(exc).__name__}); check the name and the "
            "network, or pass a local imagefolder with --data PATH"
        ) from None


def load_data(
    data: str = "shapes-target",
    *,
    image_column: str = "image",
    caption_column: str = "text",
    resolution: int = 32,
    center_crop: bool = True,
    max_samples: int | None = None,
    skip_bad_images: bool = False,
    seed: int = 0,
    builtin: BuiltinResolver | None = None,
) -> ImageCaptionData:
    """Load and check ``--data`` (see the module doc). Raises ``UserError`` for missing or empty data, a
    missing image or caption column (listing the columns there are), an unreadable image (naming the
    file; ``skip_bad_images`` skips and counts them instead) and a bad ``max_samples``."""
    import datasets

    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    if resolution < 1:
        raise UserError(f"--resolution must be positive, got {resolution}")
    dataset, location, known = _load_datasets_object(data, resolution, builtin, image_column)
    if isinstance(dataset, datasets.DatasetDict):  # a hub dataset without a train split is caught above
        dataset = dataset["train"]
    columns = list(dataset.column_names)
    for kind, column, flag in (
        ("image", image_column, "--image-column"),
        ("caption", caption_column, "--caption-column"),
    ):
        if column not in columns:
            hint = " (an imagefolder needs a metadata.jsonl with a caption per file)" if kind == "caption" else ""
            raise UserError(
                f"no {kind} column {column!r} in {data}; its columns are {', '.join(columns)}: pass {flag} NAME{hint}"
            )
    if len(dataset) == 0:
        raise UserError(f"{data} has no rows")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    rows, captions, skipped = [], [], []
    # what the trainer sees: the preprocessing, then each kept image and its caption, in order
    digest = hashlib.sha256(f"resolution={resolution} center_crop={center_crop} seed={seed}".encode())
    for row, example in enumerate(dataset):
        value = example[image_column]
        try:
            identity = hashlib.sha256(_identity(value)).digest()
            _open(value).load()
        except Exception as exc:
            where = _describe(value, row)
            if not skip_bad_images:
                raise UserError(
                    f"cannot read image {where} ({type(exc).__name__}); fix or remove it, or pass "
                    "--skip-bad-images to skip unreadable images"
                ) from None
            skipped.append(where)
            continue
        text = example[caption_column]
        if isinstance(text, (list, tuple)):  # several captions per image: the first
            text = text[0] if text else ""
        rows.append(row)
        captions.append("" if text is None else str(text))
        digest.update(identity + captions[-1].encode() + b"\0")
    if not rows:
        raise UserError(f"no readable images in {data} ({len(skipped)} unreadable, e.g. {skipped[0]})")
    return ImageCaptionData(
        dataset,
        rows,
        captions,
        data,
        location,
        image_column,
        caption_column,
        resolution,
        center_crop,
        seed,
        len(skipped),
        skipped,
        known,
        digest.hexdigest()[:16],
    )


def load_run_data(cfg, resolution: int, builtin: BuiltinResolver | None = None) -> ImageCaptionData:
    """``load_data`` with a run's settings (a ``TrainConfig``): what ``d2f train`` and ``d2f reflow`` read."""
    return load_data(
        cfg.data,
        image_column=cfg.image_column,
        caption_column=cfg.caption_column,
        resolution=resolution,
        center_crop=cfg.center_crop,
        max_samples=cfg.max_samples,
        skip_bad_images=cfg.skip_bad_images,
        seed=cfg.seed,
        builtin=builtin,
    )
