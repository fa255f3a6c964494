"""Crash safety of ``d2f train``: a real ``python -m d2f train`` killed by SIGKILL at a chosen point
(``D2F_KILL_AT``, ``d2f.training.faults``) and then resumed ends with the weights (bit-identical on a CPU)
and the ``metrics.jsonl`` (timing fields aside) of the uninterrupted run.

The run: 6 steps, a checkpoint every 2 (2 kept), validation every 3, a train line every 4 (so checkpoints
fall between two lines and must carry the log window), EMA on. The fast test kills inside a checkpoint
write; the slow one at every kind of point, and once twice in a row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import read_jsonl
from safetensors.torch import load_file

from d2f.pipeline.run_folder import LOCK_FILE, LORA_FILE
from d2f.training import TrainConfig, train
from d2f.training.metrics import TIMING

SETTINGS = dict(
    steps=6,
    batch_size=2,
    lora_rank=4,
    sample_steps=2,
    validate_every=3,
    checkpoint_every=2,
    log_every=4,
    warmup_steps=0,
    lr=1e-3,
    ema=True,
    ema_decay=0.9,
    cpu=True,  # compared bit for bit: on a CPU only, CUDA's kernels are not deterministic
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_sd_eps, shapes_folder):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("crash") / "reference"
    train(TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(out), **SETTINGS))
    return out


def killed(model, data, out, point: str, resume: bool = False) -> None:
    """Run ``python -m d2f train`` until it SIGKILLs itself at ``point``."""
    args = [sys.executable, "-m", "d2f", "train", "--model", str(model), "--data", str(data), "--output", str(out)]
    for key, value in SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    env = {
        **os.environ,
        "D2F_KILL_AT": point,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the same float sums as this process: bit-identical
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    result = subprocess.run(
        args + (["--resume"] if resume else []), env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, (
        f"not killed at {point}: rc {result.returncode}\n{result.stderr[-3000:]}"
    )


def resumed(model, data, out) -> list[dict]:
    """``--resume`` in this process; returns the notices (events with a message) it gave."""
    events = []
    train(TrainConfig(model=str(model), data=str(data), output=str(out), resume=True, **SETTINGS), events.append)
    return [e for e in events if "message" in e]


def assert_same_run(reference, out) -> None:
    wa, wb = load_file(reference / LORA_FILE), load_file(out / LORA_FILE)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ from the uninterrupted run"
    untimed = lambda folder: [
        {k: v for k, v in l.items() if k not in TIMING} for l in read_jsonl(folder / "metrics.jsonl")
    ]
    assert untimed(out) == untimed(reference)
    assert json.loads((out / "d2f_run.json").read_text())["status"] == "finished"
    assert not (out / LOCK_FILE).exists()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no leftovers


def test_killed_inside_a_checkpoint_write_resumes_to_the_same_run(tmp_path, tiny_sd_eps, shapes_folder, reference):
    """SIGKILL between two files of the step-4 checkpoint: a half-written temporary folder, a stale lock and
    a log window (steps 3-4 of the line at step 4) to carry over from the step-2 checkpoint."""
    out = tmp_path / "run"
    killed(tiny_sd_eps, shapes_folder, out, "checkpoint:step_00004:after=trainable.safetensors")
    (half,) = [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-step_00004")]
    assert [p.name for p in half.iterdir()] == ["trainable.safetensors"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")) == ["step_00002"]
    holder = json.loads((out / LOCK_FILE).read_text())
    assert holder["pid"] != os.getpid()

    notices = resumed(tiny_sd_eps, shapes_folder, out)
    kinds = [e["event"] for e in notices if e["event"] != "vae_poor"]  # the tiny random VAE is poor: said at start
    assert kinds == ["lock_taken_over", "leftovers_removed", "resumed"], notices
    assert f"pid {holder['pid']}" in notices[0]["message"] and notices[2]["step"] == 2
    assert_same_run(reference, out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "points",
    [
        ["validation:0"],  # before the first step: starts again from 0
        ["step:1"],  # before the first checkpoint
        ["checkpoint:step_00002:after=optimizer.safetensors"],  # inside the first checkpoint: from 0
        ["validation:3"],  # the grid saved, its metrics line not
        ["step:3"],  # between a checkpoint and a train line
        ["checkpoint:step_00004:after=ema.safetensors"],
        ["step:5"],
        ["checkpoint:step_00006:done"],  # renamed into place, the oldest not yet pruned
        ["finish:weights"],  # weights saved, the record not yet "finished": the last validation again
        ["step:3", "checkpoint:step_00004:after=rng.safetensors"],  # killed again while resuming
    ],
    ids=lambda points: "+".join(points),
)
def test_killed_anywhere_resumes_to_the_same_run(tmp_path, tiny_sd_eps, shapes_folder, reference, points):
    out = tmp_path / "run"
    for k, point in enumerate(points):
        killed(tiny_sd_eps, shapes_folder, out, point, resume=k > 0)
    resumed(tiny_sd_eps, shapes_folder, out)
    assert_same_run(reference, out)
