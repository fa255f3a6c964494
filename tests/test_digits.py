"""The held-out "own images" dataset (``d2f.world.digits``): a user's folder layout, fonts the world never saw,
and a classifier that reads the digits of real images (the ceiling for reading samples)."""

import json

import pytest
import torch

from d2f.world import digits
from d2f.world.build.corpus import GLYPH_FONTS


def test_digits_are_written_as_an_imagefolder_that_d2f_reads(tmp_path):
    from d2f.training.data import load_data

    folder = digits.write_digits(tmp_path / "digits", num_images=20, seed=0)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows[:10]] == [f"a digit {d}" for d in "0123456789"]
    data = load_data(str(folder), resolution=32)
    assert len(data) == 20 and data.captions[3] == "a digit 3"
    again, _ = digits.make_digits(20, seed=0)  # deterministic: the files are the generator's images
    assert torch.allclose((data.pixels(range(20)) + 1) / 2, digits.as_tensor(again), atol=1e-6)


def test_the_fonts_are_unseen_by_the_world():
    assert not set(digits.FONTS) & set(GLYPH_FONTS)


@pytest.mark.slow
def test_classifier_reads_held_out_real_digits():
    model = digits.train_classifier(steps=300, seed=5)
    images, labels = digits.make_digits(200, seed=2001)
    correct, n = digits.digit_accuracy(model, digits.as_tensor(images), [digits.caption(d) for d in labels])
    assert n == 200 and correct / n >= 0.9
