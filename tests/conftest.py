"""Shared fixtures: tiny random Stable-Diffusion-format models built here, offline, in well under a second.

``tiny_sd_eps`` / ``tiny_sd_v``: complete diffusers folders (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/) with SD's schedule (scaled_linear 0.00085-0.012, 1000 steps), random weights, a
VAE that downsamples by 4 (32 px -> 8x8x4 latents, like the built-in priors) and the world's tokenizer.
Random weights are enough for everything that is about plumbing and numerics (samplers agree with
diffusers, the scheduler agrees with ``d2f sample``, LoRA loading, CLI errors); what needs a *trained*
model (accuracy, zero-shot end points) uses the built-in priors in ``d2f/assets``.

``tiny_run``: a ``d2f train``-style run folder on ``tiny_sd_eps``. ``shapes_folder``: an imagefolder of 16
shapes-world images. The builders are plain functions in ``helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import build_tiny_sd, write_run, write_shapes_folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_sd_eps(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd-eps"), "epsilon")


@pytest.fixture(scope="session")
def tiny_sd_v(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd-v"), "v_prediction", seed=1)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_sd_eps) -> Path:
    return write_run(tmp_path_factory.mktemp("runs") / "tiny-run", tiny_sd_eps)


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    return write_shapes_folder(tmp_path_factory.mktemp("shapes") / "data")
