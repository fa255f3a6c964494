"""``--data`` layouts (``d2f.training.layouts``): each read into the same checked image-caption data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from d2f.errors import UserError
from d2f.training.data import load_data


def png(path, colour=(200, 30, 30), size=40, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), colour).save(path)
    return path


def test_imagefolder_with_metadata_csv(tmp_path):
    png(tmp_path / "a.png"), png(tmp_path / "b.png", (0, 0, 200))
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,a red square\nb.png,a blue square\n")
    data = load_data(str(tmp_path), resolution=32)
    assert sorted(data.captions) == ["a blue square", "a red square"]


def test_sidecar_captions_and_kohya_repeat_folders(tmp_path):
    png(tmp_path / "one.png")
    (tmp_path / "one.txt").write_text("a red square\n")
    png(tmp_path / "3_sks dog" / "x.png")
    (tmp_path / "3_sks dog" / "x.txt").write_text("a photo of sks dog")
    png(tmp_path / "3_sks dog" / "y.png")  # no caption: the folder's class name
    data = load_data(str(tmp_path), resolution=32)
    assert len(data) == 1 + 3 + 3
    assert sorted(data.captions) == ["a photo of sks dog"] * 3 + ["a red square"] + ["sks dog"] * 3


@pytest.mark.parametrize("as_dict", [False, True])
def test_save_to_disk_folders(tmp_path, as_dict):
    import datasets

    dataset = datasets.Dataset.from_dict(
        {"image": [str(png(tmp_path / "img" / f"{k}.png")) for k in range(3)], "caption": ["x", "y", "z"]}
    ).cast_column("image", datasets.Image())
    folder = tmp_path / "saved"
    (datasets.DatasetDict({"train": dataset}) if as_dict else dataset).save_to_disk(str(folder))
    data = load_data(str(folder), caption_column="caption", resolution=32)
    assert data.captions == ["x", "y", "z"] and data.pixels([0]).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_data_files_with_relative_image_paths(tmp_path, suffix):
    import pandas as pd

    png(tmp_path / "imgs" / "a.png"), png(tmp_path / "imgs" / "b.png")
    rows = pd.DataFrame({"file": ["imgs/a.png", "imgs/b.png"], "prompt": ["first", "second"]})
    path = tmp_path / f"data{suffix}"
    {
        ".parquet": lambda: rows.to_parquet(path),
        ".csv": lambda: rows.to_csv(path, index=False),
        ".jsonl": lambda: path.write_text("".join(json.dumps(r) + "\n" for r in rows.to_dict("records"))),
    }[suffix]()
    data = load_data(str(path), image_column="file", caption_column="prompt", resolution=32)
    assert data.captions == ["first", "second"] and data.pixels([1]).shape == (1, 3, 32, 32)


def test_parquet_with_image_bytes(tmp_path):
    import datasets

    image = png(tmp_path / "a.png")
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": image.read_bytes(), "path": "a.png"}], "text": ["bytes inside"]}
    ).cast_column("image", datasets.Image())
    dataset.to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "a.png").unlink()  # the parquet file carries the bytes
    data = load_data(str(tmp_path / "d.parquet"), resolution=32)
    assert data.captions == ["bytes inside"] and data.pixels([0]).shape == (1, 3, 32, 32)


def test_transparent_pixels_become_white_not_black(tmp_path):
    png(tmp_path / "t.png", (0, 0, 0, 0), mode="RGBA")  # fully transparent
    (tmp_path / "t.txt").write_text("nothing")
    pixels = load_data(str(tmp_path), resolution=32).pixels([0])
    assert np.allclose(pixels.numpy(), 1.0)  # white is +1 in [-1, 1]


@pytest.mark.parametrize(
    "case, message",
    [("pdf", "d2f reads .parquet, .csv and .jsonl files"), ("bad-json", "line 1 is not a JSON object")],
)
def test_unreadable_layouts_are_one_line(tmp_path, case, message):
    if case == "pdf":
        data = tmp_path / "scan.pdf"
        data.write_bytes(b"%PDF")
    else:
        png(tmp_path / "a.png")
        (tmp_path / "metadata.jsonl").write_text("{not json\n")
        data = tmp_path
    with pytest.raises(UserError, match=message) as info:
        load_data(str(data), resolution=32)
    assert "\n" not in str(info.value)
