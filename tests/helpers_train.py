"""Shared helpers of the training tests: small imagefolders of the shapes world.

The tiny random SD models come from ``conftest.py`` (``tiny_sd_eps``, ``tiny_sd_v``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def write_shapes_folder(folder: Path, num_images: int = 16, domain: str = "target", seed: int = 3,
                        resolution: int = 32) -> Path:
    """An imagefolder (PNGs + metadata.jsonl) of ``num_images`` shapes-world images with their captions."""
    from d2f.world.shapes import make_dataset, write_imagefolder

    return write_imagefolder(make_dataset(num_images, domain, seed, resolution), folder)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "data")
