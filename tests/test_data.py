"""``--data``: built-in names through the imagefolder path, user folders, preprocessing, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import write_shapes_folder
from PIL import Image
from typer.testing import CliRunner

from d2f.errors import UserError
from d2f.training.data import load_data, preprocess
from d2f.world.data import builtin_data, builtin_folder


def test_builtin_data_goes_through_the_imagefolder_path(tmp_path, monkeypatch):
    monkeypatch.setenv("D2F_CACHE", str(tmp_path / "cache"))
    folder = builtin_folder("shapes-target", 32, num_images=12)
    assert (folder / "metadata.jsonl").is_file() and len(list(folder.glob("*.png"))) == 12
    assert builtin_folder("shapes-target", 32, num_images=12) == folder  # cached: written once
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    monkeypatch.setattr("d2f.world.data.NUM_IMAGES", 12)
    data = load_data("shapes-target", resolution=32, builtin=builtin_data)
    assert len(data) == 12 and data.builtin.domain == "target" and data.location == str(folder)
    assert all(c.startswith("a ") for c in data.captions)
    pixels = data.pixels([0, 1])
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    # target domain: outlines on a dark background, so the corners are near -1
    assert pixels[:, :, 0, 0].mean() < -0.6


def test_local_imagefolder_columns_and_max_samples(shapes_folder):
    data = load_data(str(shapes_folder), resolution=32, max_samples=5)
    assert len(data) == 5 and data.builtin is None
    meta = [json.loads(l) for l in (shapes_folder / "metadata.jsonl").read_text().splitlines()]
    assert data.captions == [m["text"] for m in meta[:5]]
    image = Image.open(shapes_folder / meta[0]["file_name"]).convert("RGB")
    expected = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    torch.testing.assert_close(data.pixels([0])[0], expected)


def test_preprocess_resizes_the_short_side_and_crops():
    image = Image.new("RGB", (64, 32))
    image.paste((255, 0, 0), (0, 0, 16, 32))  # red left quarter, cut off by a centre crop
    out = preprocess(image, 16, center_crop=True)
    assert out.size == (16, 16) and out.getpixel((0, 8))[0] < 50
    crops = {preprocess(image, 16, center_crop=False, crop_seed=s).getpixel((0, 8)) for s in range(20)}
    assert len(crops) > 1  # random crops differ from image to image
    assert preprocess(image, 16, False, crop_seed=3).tobytes() == preprocess(image, 16, False, crop_seed=3).tobytes()


def _folder(tmp_path, names, captions=True, bad=()):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in names:
        if name in bad:
            (folder / name).write_bytes(b"this is not an image")
        else:
            Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / name)
    if captions:
        with open(folder / "metadata.jsonl", "w") as f:
            for name in names:
                f.write(json.dumps({"file_name": name, "text": f"caption of {name}"}) + "\n")
    return folder


def test_unreadable_image_is_named_or_skipped(tmp_path):
    folder = _folder(tmp_path, ["a.png", "b.png", "c.png"], bad=("b.png",))
    with pytest.raises(UserError, match=r"cannot read image .*b\.png.*--skip-bad-images"):
        load_data(str(folder), resolution=32)
    data = load_data(str(folder), resolution=32, skip_bad_images=True)
    assert len(data) == 2 and data.num_skipped == 1 and data.skipped[0].endswith("b.png")
    assert data.captions == ["caption of a.png", "caption of c.png"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", r"data folder .* does not exist; give a built-in name \(shapes-base, shapes-target, shapes-novel"),
        ("empty", r"no images in .*metadata\.jsonl"),
        ("no-captions", r"no caption column 'text' in .*; its columns are image: pass --caption-column NAME"),
        ("wrong-column", r"no caption column 'prompt' in .*; its columns are image, text: pass --caption-column"),
        ("all-bad", r"no readable images in .*\(2 unreadable"),
        ("max-samples", r"--max-samples must be at least 1, got 0"),
    ],
)
def test_bad_data_errors(tmp_path, case, message):
    kwargs = {}
    if case == "missing":
        data = str(tmp_path / "nowhere")
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif case == "no-captions":
        data = str(_folder(tmp_path, ["a.png"], captions=False))
    elif case == "wrong-column":
        data, kwargs = str(_folder(tmp_path, ["a.png"])), {"caption_column": "prompt"}
    elif case == "all-bad":
        data, kwargs = str(_folder(tmp_path, ["a.png", "b.png"], bad=("a.png", "b.png"))), {"skip_bad_images": True}
    else:
        data, kwargs = str(_folder(tmp_path, ["a.png"])), {"max_samples": 0}
    with pytest.raises(UserError, match=message):
        load_data(data, resolution=32, builtin=builtin_data, **kwargs)


def test_cli_bad_data_is_one_line_and_exit_2(tmp_path, tiny_sd_eps):
    from d2f.cli import app

    folder = _folder(tmp_path, ["a.png", "b.png"], bad=("b.png",))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--model",
            str(tiny_sd_eps),
            "--data",
            str(folder),
            "--steps",
            "1",
            "--output",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "b.png" in lines[0] and "--skip-bad-images" in lines[0]
    assert "Traceback" not in result.output


def test_shapes_folder_helper_roundtrip(tmp_path):
    folder = write_shapes_folder(tmp_path / "s", num_images=3)
    assert len(load_data(str(folder), resolution=16)) == 3
    assert load_data(str(folder), resolution=16).pixels([2]).shape == (1, 3, 16, 16)
