"""Shared fixtures of the training tests: a tiny random SD-format model and small imagefolders.

The model has the architecture of the built-in priors (``d2f.world.priors``: VAE 32 px -> 8x8x4,
UNet (32, 64, 64), CLIP text encoder, d2f's tokenizer, SD's schedule), randomly initialised, saved
with ``StableDiffusionPipeline.save_pretrained``: a real diffusers folder that loads like any other,
built in about a second, so the training tests do not depend on the trained priors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def build_tiny_model(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    from d2f.world.priors import make_text_encoder, make_unet, make_vae, save_prior
    from d2f.world.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vae, unet, text_encoder = make_vae(), make_unet(), make_text_encoder(tokenizer)
    vae.register_to_config(scaling_factor=1.0)
    return save_prior(folder, vae, text_encoder, tokenizer, unet, prediction_type)


def write_shapes_folder(folder: Path, num_images: int = 16, domain: str = "target", seed: int = 3,
                        resolution: int = 32) -> Path:
    from d2f.world.shapes import make_dataset, write_imagefolder

    return write_imagefolder(make_dataset(num_images, domain, seed, resolution), folder)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-eps") / "model", "epsilon")


@pytest.fixture(scope="session")
def tiny_model_v(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-v") / "model", "v_prediction", seed=1)


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "data")
