"""Training data for ``d2f train --data``: image-caption pairs, as a finetune of SD expects them.

``--data`` is one of

- a built-in name, ``shapes-base`` or ``shapes-target`` (the shapes world, ``world/shapes.py``). It is
  written once as an imagefolder to a cache folder and then loaded exactly like a user's folder, so the
  built-in demo runs through the same code path as real data;
- a local imagefolder: image files plus a ``metadata.jsonl`` with one ``{"file_name": ..., "text": ...}``
  per line (what ``datasets.load_dataset("imagefolder", data_dir=...)`` reads);
- a hub dataset name (``owner/name``), loaded with ``datasets.load_dataset(name, split="train")``.

Preprocessing, as diffusers' ``train_text_to_image`` does it: resize the shorter side to ``resolution``
(Lanczos), crop a ``resolution`` square (centre, or a random crop that is drawn once per image from the
seed), map pixels to [-1, 1] (the VAE's range). ``--random-flip`` mirrors an image with probability 1/2
at each step; the trainer draws the flips.

Every image is decoded once when the data is loaded, so an unreadable file is found before training
starts and named in a one-line ``UserError`` (or, with ``skip_bad_images``, skipped and counted).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from d2f.errors import UserError

BUILTIN_DATA = {"shapes-base": "base", "shapes-target": "target"}
BUILTIN_NUM_IMAGES = 2048
BUILTIN_SEED = 7  # the priors were built from generator seeds 0 and 1: seed 7 draws images they never saw


def cache_root() -> Path:
    """Where d2f caches generated data: ``$D2F_CACHE`` or ``~/.cache/d2f``."""
    return Path(os.environ.get("D2F_CACHE", Path.home() / ".cache" / "d2f"))


@dataclass
class ImageCaptionData:
    """Loaded, checked image-caption data. ``rows`` are the indices of readable images in ``dataset``
    (a ``datasets.Dataset`` whose image column is not decoded: dicts with ``path`` and ``bytes``)."""

    dataset: object
    rows: list[int]
    captions: list[str]
    name: str                    # what the user passed as --data
    location: str                # the folder or hub id it was loaded from
    image_column: str
    caption_column: str
    resolution: int
    center_crop: bool = True
    seed: int = 0
    num_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    builtin_domain: str | None = None  # "base"/"target" for the built-in world, else None

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
        return image.convert("RGB")


def _describe(value, row: int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {row}"


def builtin_folder(name: str, resolution: int, num_images: int | None = None, seed: int | None = None) -> Path:
    """The cache folder of a built-in dataset, written on first use (atomically: into a temporary folder
    that is then renamed, so concurrent processes and killed runs never see a half-written folder)."""
    from d2f.world.shapes import make_dataset, write_imagefolder

    num_images = BUILTIN_NUM_IMAGES if num_images is None else num_images
    seed = BUILTIN_SEED if seed is None else seed
    folder = cache_root() / "data" / f"{name}-n{num_images}-seed{seed}-{resolution}px"
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    write_imagefolder(make_dataset(num_images, BUILTIN_DATA[name], seed, resolution), tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_datasets_object(data: str, resolution: int):
    """(dataset, location, builtin_domain) for ``--data``; UserError for what cannot be loaded."""
    import datasets

    if data in BUILTIN_DATA:
        folder = builtin_folder(data, resolution)
        return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train"), str(folder), BUILTIN_DATA[data]
    path = Path(data).expanduser()
    if path.exists() or data.startswith((".", "/", "~")) or data.count("/") != 1:
        if not path.is_dir():
            raise UserError(f"data folder {data} does not exist; give a built-in name ({', '.join(BUILTIN_DATA)}), "
                            "an imagefolder (images + metadata.jsonl) or a hub dataset like owner/name")
        try:
            dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        except FileNotFoundError:
            raise UserError(f"no images in {data}: an imagefolder holds image files (png, jpg, ...) and a "
                            "metadata.jsonl with {\"file_name\": ..., \"text\": ...} per line") from None
        return dataset, str(path.resolve()), None
    try:
        return datasets.load_dataset(data, split="train"), data, None
    except Exception as exc:  # offline, unknown, gated, no train split: all the same to the user
        raise UserError(f"could not load hub dataset {data!r} ({type(exc).__name__}); check the name and the "
                        "network, or pass a local imagefolder with --data PATH") from None


def load_data(data: str = "shapes-target", *, image_column: str = "image", caption_column: str = "text",
              resolution: int = 32, center_crop: bool = True, max_samples: int | None = None,
              skip_bad_images: bool = False, seed: int = 0) -> ImageCaptionData:
    """Load and check ``--data`` (see the module doc). Raises ``UserError`` for missing or empty data, a
    missing image or caption column (listing the columns there are), an unreadable image (naming the
    file; ``skip_bad_images`` skips and counts them instead) and a bad ``max_samples``."""
    import datasets

    if max_samples is not None and max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {max_samples}")
    if resolution < 1:
        raise UserError(f"--resolution must be positive, got {resolution}")
    dataset, location, domain = _load_datasets_object(data, resolution)
    if isinstance(dataset, datasets.DatasetDict):  # a hub dataset without a train split is caught above
        dataset = dataset["train"]
    columns = list(dataset.column_names)
    for kind, column, flag in (("image", image_column, "--image-column"),
                               ("caption", caption_column, "--caption-column")):
        if column not in columns:
            hint = " (an imagefolder needs a metadata.jsonl with a caption per file)" if kind == "caption" else ""
            raise UserError(f"no {kind} column {column!r} in {data}; its columns are {', '.join(columns)}: "
                            f"pass {flag} NAME{hint}")
    if len(dataset) == 0:
        raise UserError(f"{data} has no rows")
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if isinstance(dataset.features[image_column], datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    rows, captions, skipped = [], [], []
    for row, example in enumerate(dataset):
        value = example[image_column]
        try:
            _open(value).load()
        except Exception as exc:
            where = _describe(value, row)
            if not skip_bad_images:
                raise UserError(f"cannot read image {where} ({type(exc).__name__}); fix or remove it, or pass "
                                "--skip-bad-images to skip unreadable images") from None
            skipped.append(where)
            continue
        text = example[caption_column]
        if isinstance(text, (list, tuple)):  # several captions per image: the first
            text = text[0] if text else ""
        rows.append(row)
        captions.append("" if text is None else str(text))
    if not rows:
        raise UserError(f"no readable images in {data} ({len(skipped)} unreadable, e.g. {skipped[0]})")
    return ImageCaptionData(dataset, rows, captions, data, location, image_column, caption_column, resolution,
                            center_crop, seed, len(skipped), skipped, domain)


def fingerprint(data: ImageCaptionData) -> str:
    """A short hash of what the trainer sees (rows, captions, preprocessing): resume checks it."""
    h = hashlib.sha256(repr((data.location, data.rows, data.captions, data.resolution, data.center_crop,
                             data.seed)).encode())
    return h.hexdigest()[:16]
