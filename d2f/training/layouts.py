"""The local data layouts ``--data`` accepts, each read into a ``datasets.Dataset`` with the library made for it.

- a folder with ``metadata.jsonl`` or ``metadata.csv``: ``load_dataset("imagefolder")``;
- a folder of images with same-named ``.txt`` captions (the DreamBooth / kohya layout; kohya's ``10_name/``
  folders repeat their images 10 times): ``Dataset.from_dict`` with columns ``image`` (paths) and ``text``;
- a ``save_to_disk`` folder (a Dataset, or a DatasetDict: its ``train`` split): ``load_from_disk``;
- a ``.parquet``, ``.csv`` or ``.jsonl`` file with an image column (paths or bytes) and a caption column:
  ``load_dataset("parquet" / "csv" / "json")``; relative image paths are taken from the file's folder.

Hub dataset ids are loaded by ``d2f.training.data``. Every layout then goes through the same checks and the
same preprocessing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from d2f.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")  # "10_sks dog": repeat 10 times, class "sks dog"


def load_local(path: Path, image_column: str = "image"):
    """(dataset, layout name) for a local file or folder; ``UserError`` for what is none of the layouts."""
    import datasets

    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UserError(
                f"--data {path} is a {path.suffix or 'suffix-less'} file; d2f reads .parquet, .csv and .jsonl files "
                "(an image column and a caption column) or folders"
            )
        dataset = _read(lambda: datasets.load_dataset(builder, data_files=str(path), split="train"), path)
        return _absolute_paths(dataset, image_column, path.parent), builder
    if any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json")):
        dataset = _read(lambda: datasets.load_from_disk(str(path)), path)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset["train"] if "train" in dataset else next(iter(dataset.values()))
        return dataset, "save_to_disk"
    if any((path / name).is_file() for name in ("metadata.jsonl", "metadata.csv")) or not _has_sidecars(path):
        _check_metadata(path)
        try:
            dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
        except FileNotFoundError:
            raise UserError(
                f"no images in {path}: give an imagefolder (image files and a metadata.jsonl with "
                '{"file_name": ..., "text": ...} per line), images with same-named .txt captions, or a data file'
            ) from None
        except Exception as exc:  # a metadata file that is not JSON / CSV, images it does not list, ...
            raise UserError(f"cannot read the imagefolder {path} ({type(exc).__name__}: {_first_line(exc)})") from None
        return dataset, "imagefolder"
    return _sidecar_dataset(path), "captions"


def _check_metadata(folder: Path) -> None:
    """A ``metadata.jsonl`` that is not JSON lines is named with its line (datasets' own error does not)."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return
    for number, line in enumerate(meta.read_text(errors="replace").splitlines(), 1):
        try:
            if line.strip() and not isinstance(json.loads(line), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise UserError(
                f"{meta} line {number} is not a JSON object ({str(exc).splitlines()[0]}); each line must be like "
                '{"file_name": "a.png", "text": "a caption"}'
            ) from None


def _read(load, path: Path):
    try:
        return load()
    except Exception as exc:
        raise UserError(f"cannot read {path} as a dataset ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _images(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _has_sidecars(path: Path) -> bool:
    return any(p.with_suffix(".txt").is_file() for p in _images(path))


def _sidecar_dataset(path: Path):
    """Images with same-named .txt captions. An image without one gets its kohya folder's class name (the part
    after ``N_``) or "". A kohya folder ``N_name`` contributes each of its images N times."""
    import datasets

    images, texts = [], []
    for image in _images(path):
        folder = next((p for p in image.relative_to(path).parents if KOHYA_FOLDER.match(p.name)), None)
        match = KOHYA_FOLDER.match(folder.name) if folder is not None else None
        repeats, name = (int(match.group(1)), match.group(2)) if match else (1, "")
        caption = image.with_suffix(".txt")
        text = caption.read_text(errors="replace").strip() if caption.is_file() else name
        images += [str(image)] * repeats
        texts += [text] * repeats
    return datasets.Dataset.from_dict({"image": images, "text": texts})


def _absolute_paths(dataset, image_column: str, folder: Path):
    """Relative image paths in a data file are relative to the file's folder."""
    if image_column not in dataset.column_names or getattr(dataset.features[image_column], "dtype", "") not in (
        "string",
        "large_string",
    ):
        return dataset
    return dataset.map(
        lambda row: {image_column: str(folder / row[image_column]) if row[image_column] else row[image_column]}
    )
