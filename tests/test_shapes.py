"""The shapes-world generator: determinism, captions, drawing, and the imagefolder round trip."""

import numpy as np
import pytest
import torch

from d2f.world.shapes import (
    COLOURS,
    DOMAINS,
    SHAPES,
    ShapeSpec,
    all_prompts,
    caption,
    draw,
    make_dataset,
    make_specs,
    parse_prompt,
    shape_images,
    to_unit_range,
    write_imagefolder,
)


def pixels(image):
    return np.asarray(image.convert("RGB"))


def test_same_seed_same_images_and_different_seeds_differ():
    a, b, c = (make_specs(16, "base", s) for s in (0, 0, 1))
    assert a == b
    assert a != c
    assert all(np.array_equal(pixels(draw(x)), pixels(draw(y))) for x, y in zip(a, b))
    assert not all(np.array_equal(pixels(draw(x)), pixels(draw(y))) for x, y in zip(a, c))
    # the domains use separate streams: the same seed does not give the same layout
    assert [s.cx for s in make_specs(16, "target", 0)] != [s.cx for s in a]


def test_captions_and_parse_prompt():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == len(SHAPES) * len(COLOURS) == 24
    assert caption("circle", "red") == "a red circle"
    for s in SHAPES:
        for c in COLOURS:
            assert parse_prompt(caption(s, c)) == (s, c)
    assert parse_prompt("  A Red Circle ") == ("circle", "red")
    for bad in ("a red", "a pink circle", "a red hexagon", "red circle", "the red circle", ""):
        assert parse_prompt(bad) is None


def test_prompts_fix_shape_and_colour():
    prompts = ["a blue cross", "a yellow triangle", "a green square"]
    specs = make_specs(7, "target", 3, prompts)
    for k, s in enumerate(specs):
        assert caption(s.shape, s.colour) == prompts[k % 3] and s.domain == "target"
    with pytest.raises(ValueError, match="a pink blob"):
        make_specs(2, "base", 0, ["a red circle", "a pink blob"])
    with pytest.raises(ValueError, match="unknown domain"):
        make_specs(2, "sketch", 0)


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("domain", DOMAINS)
def test_every_shape_and_colour_is_drawable(domain, resolution):
    for shape in SHAPES:
        for colour, rgb in COLOURS.items():
            bg = (230, 230, 230) if domain == "base" else (25, 25, 25)
            spec = ShapeSpec(shape, colour, domain, size=0.3, cx=0.5, cy=0.5, background=bg)
            img = draw(spec, resolution)
            assert img.size == (resolution, resolution) and img.mode == "RGB"
            px = pixels(img).reshape(-1, 3).astype(int)
            # the corner is background, and some pixel carries the shape's colour (up to the
            # antialiasing of a 2-3 px outline at 32 px, which leaves the cross's arms a bit mixed)
            assert np.abs(px[0] - bg).max() <= 2
            closest = np.abs(px - rgb).sum(1).min()
            assert closest <= 32, (shape, colour, closest)
            # the base shape is filled (its centre has the colour), the target one is an outline
            # (its centre is background)
            centre = pixels(img)[resolution // 2, resolution // 2].astype(int)
            assert np.abs(centre - (rgb if domain == "base" else bg)).sum() <= 12, (shape, colour)


def test_make_dataset_columns():
    ds = make_dataset(6, "target", seed=2, resolution=32)
    assert set(ds.column_names) == {"image", "text", "shape", "colour", "domain"}
    assert len(ds) == 6
    row = ds[0]
    assert row["image"].size == (32, 32)
    assert row["text"] == caption(row["shape"], row["colour"]) and row["domain"] == "target"
    specs = make_specs(6, "target", 2)
    assert ds["text"] == [caption(s.shape, s.colour) for s in specs]


def test_imagefolder_round_trip(tmp_path):
    import datasets

    ds = make_dataset(8, "base", seed=5)
    write_imagefolder(ds, tmp_path / "data")
    back = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "data"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(back) == 8
    # imagefolder orders by file name, which is the row index
    assert back["text"] == ds["text"]
    assert back["shape"] == ds["shape"]
    for a, b in zip(ds, back):
        assert np.array_equal(pixels(a["image"]), pixels(b["image"]))


def test_shape_images_are_the_drawings_in_the_vae_range():
    """``shape_images``: the drawings of ``make_specs`` as float (B, 3, H, W), x = p / 127.5 - 1, with captions."""
    images, captions = shape_images(5, "target", seed=2, resolution=16)
    specs = make_specs(5, "target", 2)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert captions == [caption(s.shape, s.colour) for s in specs]
    drawn = torch.from_numpy(np.stack([pixels(draw(s, 16)) for s in specs])).permute(0, 3, 1, 2)
    # x = p / 127.5 - 1, computed here in float64
    assert torch.allclose(images.double(), drawn.double() / 127.5 - 1, rtol=0, atol=1e-6)
    assert images.min() >= -1 and images.max() <= 1
    assert to_unit_range(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
