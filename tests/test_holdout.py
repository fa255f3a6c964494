"""A user's held-out images and the samples' distance to them (``d2f.training.holdout``): the split is fixed and
small, the features are the VAE's, the distances behave as distances, and ``d2f train`` reports them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from helpers import builtin_prior

from d2f.training import TrainConfig, train
from d2f.training.data import load_data
from d2f.training.holdout import score_samples, split_holdout, vae_features
from d2f.world.digits import write_digits

FAST = dict(steps=2, batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4, checkpoint_every=0)


def test_the_split_is_fixed_small_and_disjoint(tmp_path):
    data = load_data(str(write_digits(tmp_path / "d", num_images=50)), resolution=32)
    train_part, held = split_holdout(data, 64)
    assert len(held.data) == 5 and len(train_part) == 45  # at most a tenth
    assert not set(held.data.rows) & set(train_part.rows) and sorted(held.data.rows + train_part.rows) == data.rows
    assert held.captions == [data.captions[data.rows.index(r)] for r in held.data.rows]
    again = load_data(str(tmp_path / "d"), resolution=32, seed=7)  # another --seed: the same images held out
    assert split_holdout(again, 64)[1].data.rows == held.data.rows
    assert split_holdout(data, 3)[1].data.rows != held.data.rows or len(split_holdout(data, 3)[1].data) == 3
    assert split_holdout(data, 1)[1] is None and split_holdout(data, 0)[1] is None  # no FD from < 2 images


def test_the_distances_are_zero_to_themselves_and_grow_with_a_change(tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(builtin_prior("tiny-shapes-eps") / "vae")
    data = load_data(str(write_digits(tmp_path / "d", num_images=400)), resolution=32)
    _, held = split_holdout(data, 40)
    real = (held.data.pixels(range(len(held.data))) + 1) / 2
    features = vae_features(vae, real * 2 - 1)
    assert features.shape == (40, 4 * 4 * 4) and torch.isfinite(features).all()
    same = score_samples(vae, held, real)
    assert same["fd_heldout"] < 1e-6 * features.var(0).sum().item() + 1e-9  # FD(x, x) = 0
    inverted = score_samples(vae, held, 1 - real)  # light on dark -> dark on light
    grey = score_samples(vae, held, torch.full_like(real, 0.5) + 0.01 * torch.randn_like(real))
    assert inverted["fd_heldout"] > 10 * max(same["fd_heldout"], 1e-3) and inverted["kid_heldout"] > same["kid_heldout"]
    assert grey["fd_heldout"] > same["fd_heldout"] and grey["kid_heldout"] > same["kid_heldout"]


def test_d2f_train_holds_out_and_reports_the_distance(tmp_path):
    prior = builtin_prior("tiny-shapes-eps")
    data = write_digits(tmp_path / "digits", num_images=40)
    summary = train(
        TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "run"), eval_samples=4, **FAST),
        callback=lambda e: None,
    )
    record = json.loads((tmp_path / "run" / "d2f_run.json").read_text())
    assert record["data"]["num_images"] == 36 and record["data"]["held_out"] == 4
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [l for l in lines if l.get("kind") == "validation"]
    assert [l["step"] for l in scored] == [0, 2] and all(l["fd_heldout"] >= 0 and "kid_heldout" in l for l in scored)
    assert summary["metrics_before"]["fd_heldout"] == scored[0]["fd_heldout"]
    # --holdout 0: every image trains, nothing is scored
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "all"), holdout=0, **FAST),
          callback=lambda e: None)  # fmt: skip
    assert json.loads((tmp_path / "all" / "d2f_run.json").read_text())["data"]["num_images"] == 40


def test_the_command_prints_the_held_out_distance(tmp_path):
    data = write_digits(tmp_path / "digits", num_images=40)
    flags = ["--steps", "1", "--batch-size", "2", "--sample-steps", "2", "--validate-every", "0", "--eval-samples", "4"]
    flags += ["--warmup-steps", "0", "--lora-rank", "4", "--checkpoint-every", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "d2f", "train", "--data", str(data), "--output", str(tmp_path / "run"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "step 0: grid samples/step_00000.png (fd_heldout " in out and "before: fd heldout " in out
