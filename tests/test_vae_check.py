"""Before training, d2f measures how well the model's VAE reconstructs the user's images and warns when it is
poor (``d2f.training.vae_check``): the built-in prior's general VAE reads shapes well, hard-edged strokes much
better than its shapes-only predecessor did, and pixel noise, which no 4x-downsampling VAE can keep, badly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import builtin_prior
from PIL import Image, ImageDraw

from d2f.training import TrainConfig, train
from d2f.training.vae_check import POOR_PSNR, vae_psnr

FAST = dict(steps=1, batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4)


def noise_folder(folder, n: int = 8):
    """Independent uniform noise in every pixel: 3072 numbers per image that 256 latents cannot hold."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{k}.png", "text": "noise"}) + "\n"
                                                   for k in range(n)))  # fmt: skip
    return folder


def strokes_folder(folder, n: int = 8):
    """White strokes on black, like handwriting."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        image = Image.new("RGB", (32, 32), "black")
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            draw.line([tuple(rng.integers(0, 32, 2)), tuple(rng.integers(0, 32, 2))], fill="white", width=2)
        image.save(folder / f"{k}.png")
        rows.append(json.dumps({"file_name": f"{k}.png", "text": str(k % 10)}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_psnr_closed_form():
    class Identity:  # a "VAE" that reconstructs perfectly up to a known offset
        device, dtype = torch.device("cpu"), torch.float32

        def encode(self, x):
            return type("E", (), {"latent_dist": type("D", (), {"mean": x})()})()

        def decode(self, z):
            return type("O", (), {"sample": z + 0.2})()  # +0.2 in [-1, 1] is +0.1 in [0, 1]: MSE 0.01, PSNR 20 dB

    assert vae_psnr(Identity(), torch.zeros(2, 3, 4, 4)) == pytest.approx(20.0)


def test_poor_vae_is_reported_with_its_number(tmp_path, shapes_folder):
    prior = builtin_prior("tiny-shapes-eps")
    events = []
    train(TrainConfig(model=str(prior), data=str(noise_folder(tmp_path / "noise")), output=str(tmp_path / "a"),
                      **FAST), callback=events.append)  # fmt: skip
    poor = [e for e in events if e["event"] == "vae_poor"]
    assert len(poor) == 1 and poor[0]["psnr"] < POOR_PSNR and f"{poor[0]['psnr']:.1f} dB PSNR" in poor[0]["message"]
    assert json.loads((tmp_path / "a" / "d2f_run.json").read_text())["data"]["vae_psnr"] == pytest.approx(
        poor[0]["psnr"]
    )
    events.clear()
    train(TrainConfig(model=str(prior), data=str(shapes_folder), output=str(tmp_path / "b"), **FAST),
          callback=events.append)  # fmt: skip
    assert not [e for e in events if e["event"] == "vae_poor"]
    assert json.loads((tmp_path / "b" / "d2f_run.json").read_text())["data"]["vae_psnr"] > POOR_PSNR


def test_general_vae_reads_strokes_far_better_than_the_shapes_only_one(tmp_path):
    """Hard-edged 2 px white lines on black (no antialiasing): the shapes-only VAE read them at 12.6 dB; the
    general one at about 17 dB (antialiased strokes of its corpus: 22.8 dB), still below the warning line."""
    prior = builtin_prior("tiny-shapes-eps")
    train(TrainConfig(model=str(prior), data=str(strokes_folder(tmp_path / "strokes")), output=str(tmp_path / "c"),
                      **FAST), callback=lambda e: None)  # fmt: skip
    assert json.loads((tmp_path / "c" / "d2f_run.json").read_text())["data"]["vae_psnr"] > 15
