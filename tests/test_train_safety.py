"""``d2f train`` keeps runs safe: nothing is deleted before the new run can start, one run per folder (a
lock), damaged checkpoints and torn metrics lines are survived, changed data is caught on resume, a
diverged run never checkpoints non-finite weights, a finished run is not resumed twice, and bad output
folders, metadata or schedules are one line and exit 2. Real runs of the tiny model throughout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch
from helpers import read_jsonl
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from d2f.errors import UserError
from d2f.pipeline.run_folder import LOCK_FILE, LORA_FILE
from d2f.training import TrainConfig, train
from d2f.training.data import load_data
from d2f.training.metrics import TIMING

FAST = dict(batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4, log_every=1)


def run(model, data, output, events=None, **overrides) -> dict:
    cfg = TrainConfig(model=str(model), data=str(data), output=str(output), **{**FAST, **overrides})
    return train(cfg, callback=None if events is None else events.append)


def cli(model, data, output, *args):
    from d2f.cli import app

    base = ["train", "--model", model, "--data", data, "--output", output, "--steps", "1", "--batch-size", "2"]
    base += ["--sample-steps", "2", "--lora-rank", "4", "--warmup-steps", "0"]  # FAST's settings
    return CliRunner().invoke(app, [str(a) for a in [*base, *args]])


def assert_one_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt(out, keep_step: int) -> None:
    """What a run killed right after its checkpoint of ``keep_step`` leaves (``test_train_crash.py`` kills
    real processes; this is the cheap stand-in): no weights, no later checkpoints."""
    (out / LORA_FILE).unlink()
    for path in (out / "checkpoints").iterdir():
        if int(path.name.split("_")[1]) > keep_step:
            shutil.rmtree(path)


def untimed(folder) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in TIMING} for line in read_jsonl(folder / "metrics.jsonl")]


@pytest.fixture
def old_run(tmp_path, tiny_sd_eps, shapes_folder):
    out = tmp_path / "keep"
    run(tiny_sd_eps, shapes_folder, out, steps=1, checkpoint_every=1)
    return out


def test_overwrite_deletes_the_old_run_only_once_the_new_one_can_start(tmp_path, tiny_sd_eps, shapes_folder, old_run):
    before = snapshot(old_run)
    (tmp_path / "empty").mkdir()
    assert_one_error(cli(tiny_sd_eps, tmp_path / "empty", old_run, "--overwrite"), "no images in")
    assert_one_error(cli(tmp_path / "nowhere", shapes_folder, old_run, "--overwrite"), "model folder")
    assert_one_error(cli(tiny_sd_eps, shapes_folder, old_run, "--overwrite", "--resolution", "20"), "size 20 px")
    assert snapshot(old_run) == before  # untouched, and no lock left behind
    result = cli(
        tiny_sd_eps,
        shapes_folder,
        old_run,
        "--overwrite",
        "--steps",
        "2",
        "--checkpoint-every",
        "0",
        "--log-every",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert [l["step"] for l in read_jsonl(old_run / "metrics.jsonl") if l["kind"] == "train"] == [1, 2]
    assert not (old_run / "checkpoints").exists() and not (old_run / LOCK_FILE).exists()
    assert not (old_run / ".overwritten").exists()


def interrupted_at_validation(event: dict) -> None:
    if event["event"] == "validation" and event["step"] == 0:
        raise KeyboardInterrupt  # Ctrl-C while the new run draws its step-0 grid


def test_overwrite_keeps_the_old_run_until_the_new_one_made_its_first_step(
    tmp_path, tiny_sd_eps, shapes_folder, old_run, monkeypatch
):
    """Issue #21: an --overwrite run that dies before its first step (here at its step-0 validation: Ctrl-C,
    or the sampler's error) leaves the old run byte for byte as it was, status and all."""
    import d2f.training.validation as validation

    before = snapshot(old_run)
    assert json.loads(before["d2f_run.json"])["status"] == "finished"
    events = []
    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(old_run), overwrite=True, **FAST),
            callback=lambda e: (events.append(e), interrupted_at_validation(e)),
        )
    assert snapshot(old_run) == before  # no .overwritten/ left, no lock, the old record
    assert any(e["event"] == "overwrite_undone" for e in events)

    def nan_sampler(*args, **kwargs):
        raise UserError("sampling gave NaN or infinite latents")

    with monkeypatch.context() as m:
        m.setattr(validation, "generate", nan_sampler)
        with pytest.raises(UserError, match="NaN or infinite latents"):
            run(tiny_sd_eps, shapes_folder, old_run, steps=2, overwrite=True)
    assert snapshot(old_run) == before

    run(tiny_sd_eps, shapes_folder, old_run, steps=2, overwrite=True)  # succeeds: the old run is gone
    assert not (old_run / ".overwritten").exists() and not (old_run / LOCK_FILE).exists()
    assert json.loads((old_run / "d2f_run.json").read_text())["settings"]["steps"] == 2


def test_an_overwrite_killed_before_its_first_step_still_keeps_the_old_run(
    tmp_path, tiny_sd_eps, shapes_folder, old_run
):
    """SIGKILL (no cleanup) at the new run's step-0 validation leaves the old run in .overwritten/, which counts as
    the folder's run: a plain start is refused, and a second --overwrite that fails restores it."""
    before = snapshot(old_run)
    args = [sys.executable, "-m", "d2f", "train", "--model", str(tiny_sd_eps), "--data", str(shapes_folder)]
    args += ["--output", str(old_run), "--overwrite", "--steps", "1", "--batch-size", "2", "--sample-steps", "2"]
    args += ["--lora-rank", "4", "--warmup-steps", "0"]
    killed = subprocess.run(args, env={**os.environ, "D2F_KILL_AT": "validation:0"}, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert (old_run / ".overwritten" / "d2f_run.json").read_bytes() == before["d2f_run.json"]
    assert json.loads((old_run / "d2f_run.json").read_text())["status"] == "running"  # the killed attempt's
    with pytest.raises(UserError, match="already holds a run"):
        run(tiny_sd_eps, shapes_folder, old_run, steps=1)
    with pytest.raises(KeyboardInterrupt):
        train(
            TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(old_run), overwrite=True, **FAST),
            callback=interrupted_at_validation,
        )
    assert snapshot(old_run) == before


def test_a_live_run_holds_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path, tiny_sd_eps, shapes_folder, old_run):
    interrupt(old_run, keep_step=1)  # a run still to finish (one that did is "already finished" to --resume)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "since": time.time(), "token": "x"}
        (old_run / LOCK_FILE).write_text(json.dumps(lock))
        before = snapshot(old_run)
        message = f"is in use by another d2f train (pid {holder.pid} on host {socket.gethostname()}"
        for flags in ([], ["--overwrite"], ["--resume", "--checkpoint-every", "1"]):
            assert_one_error(cli(tiny_sd_eps, shapes_folder, old_run, *flags), message)
        assert snapshot(old_run) == before
        # a fresh folder: the second process gets the error and leaves no folder behind
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(UserError, match="in use by another d2f train"):
            run(tiny_sd_eps, shapes_folder, tmp_path / "new", steps=1)
    finally:
        holder.kill()
        holder.wait()
    events = []  # the holder is gone: its lock is stale, taken over with a notice, released at the end
    run(tiny_sd_eps, shapes_folder, old_run, events, steps=1, overwrite=True)
    assert [e for e in events if e["event"] == "lock_taken_over"][0]["message"].count(str(holder.pid)) == 1
    assert not (old_run / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_second_real_process_is_refused(tmp_path, tiny_sd_eps, shapes_folder):
    """Two real ``d2f train`` on one folder: the second exits 2 with one line; the first is unharmed."""
    out = tmp_path / "shared"
    args = [sys.executable, "-m", "d2f", "train", "--model", str(tiny_sd_eps), "--data", str(shapes_folder)]
    args += ["--output", str(out), "--batch-size", "2", "--lora-rank", "4", "--sample-steps", "2", "--log-every", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.Popen(args + ["--steps", "100000", "--validate-every", "0"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(args + ["--steps", "1", "--overwrite"], env=env, capture_output=True, text=True)
        assert second.returncode == 2
        # (this environment's transformers warns at import about torchvision: not d2f's lines)
        lines = [line for line in second.stderr.splitlines() if line.strip() and not line.startswith("[transformers]")]
        assert len(lines) == 1 and f"in use by another d2f train (pid {first.pid}" in lines[0], second.stderr
        assert first.poll() is None  # still training, in its own folder
        steps = [l["step"] for l in read_jsonl(out / "metrics.jsonl")]
        assert steps == sorted(steps) and len(steps) == len(set(steps))
    finally:
        first.kill()
        first.wait()


def test_damaged_latest_checkpoint_and_torn_metrics_line(tmp_path, tiny_sd_eps, shapes_folder):
    a, b = tmp_path / "a", tmp_path / "b"
    settings = dict(steps=4, checkpoint_every=1, checkpoints_total_limit=0, log_every=3)
    settings.update(cpu=True)  # bit for bit on a CPU only: CUDA's kernels are not deterministic
    run(tiny_sd_eps, shapes_folder, a, **settings)
    shutil.copytree(a, b)
    interrupt(b, keep_step=4)
    damaged = b / "checkpoints" / "step_00004" / "trainable.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    with open(b / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "kind": "tra')  # a line cut off by a kill
    events = []
    run(tiny_sd_eps, shapes_folder, b, events, resume=True, **settings)
    notices = {e["event"]: e for e in events if "message" in e}
    assert "step_00004 is damaged (SafetensorError" in notices["checkpoint_damaged"]["message"]
    assert "dropped 1 line(s) of metrics.jsonl" in notices["metrics_torn"]["message"]
    assert notices["resumed"]["step"] == 3 and (b / "checkpoints" / ".damaged-step_00004").is_dir()
    wa, wb = load_file(a / LORA_FILE), load_file(b / LORA_FILE)
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and untimed(a) == untimed(b)
    # nothing loadable at all: one line, no traceback
    for path in (b / "checkpoints").glob("step_*"):
        (path / "optimizer.safetensors").write_bytes(b"")
    (b / LORA_FILE).unlink()
    assert_one_error(cli(tiny_sd_eps, shapes_folder, b, "--resume", *_flags(settings)), "every checkpoint in")


def _flags(settings: dict) -> list[str]:
    """TrainConfig settings as CLI flags: ``cpu=True`` -> ``--cpu``, ``steps=4`` -> ``--steps 4``."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def test_resume_refuses_changed_data_unless_allowed(tmp_path, tiny_sd_eps, shapes_folder):
    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(shapes_folder, data)
    settings = dict(steps=2, checkpoint_every=1)
    run(tiny_sd_eps, data, out, **settings)
    fingerprint = json.loads((out / "d2f_run.json").read_text())["data"]["fingerprint"]
    assert len(fingerprint) == 16 and fingerprint == load_data(str(data), resolution=32).fingerprint
    interrupt(out, keep_step=1)
    Image.new("RGB", (32, 32), (0, 200, 0)).save(data / "00003.png")  # same name, other pixels
    message = f"is not what the run in {out} trained on (fingerprint {fingerprint}, now"
    assert_one_error(cli(tiny_sd_eps, data, out, "--resume", *_flags(settings)), message)
    events = []
    run(tiny_sd_eps, data, out, events, resume=True, allow_data_change=True, **settings)
    # (vae_poor: the tiny random VAE reconstructs nothing well; d2f says so at every start)
    assert [e["event"] for e in events if "message" in e and e["event"] != "vae_poor"] == ["data_changed", "resumed"]
    assert json.loads((out / "d2f_run.json").read_text())["data"]["fingerprint"] != fingerprint
    # a caption counts too, and so does the preprocessing
    meta = (data / "metadata.jsonl").read_text().replace("a ", "one ", 1)
    (data / "metadata.jsonl").write_text(meta)
    prints = {load_data(str(data), resolution=32).fingerprint, load_data(str(data), resolution=16).fingerprint}
    assert len(prints | {fingerprint}) == 3


def test_non_finite_weights_are_never_checkpointed(tmp_path, tiny_sd_eps, shapes_folder):
    """AdamW's decoupled weight decay at lr 5e37 overflows the weights to inf in step 2, whose loss (computed
    before the update) was finite: the step-2 checkpoint is refused and the error names step 1's."""
    out = tmp_path / "inf"
    settings = dict(lr=1e38, weight_decay=100, warmup_steps=2, lr_scheduler="constant", ema=True)
    settings.update(cpu=True)  # CUDA's AdamW refuses lr x weight decay = 1e40 as a float overflow before it is inf
    with pytest.raises(UserError, match=r"trainable weights .* became NaN or infinite at step 2 .*its checkpoint was "):
        run(tiny_sd_eps, shapes_folder, out, steps=4, checkpoint_every=1, **settings)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00001"]
    assert json.loads((out / "d2f_run.json").read_text())["status"] == "diverged"
    assert not (out / LOCK_FILE).exists()


def test_resuming_a_finished_run_does_nothing(tmp_path, tiny_sd_eps, shapes_folder):
    out = tmp_path / "done"
    settings = dict(steps=2, checkpoint_every=2, validate_every=1)
    summary = run(tiny_sd_eps, shapes_folder, out, **settings)
    before = snapshot(out)
    events = []
    assert run(tiny_sd_eps, shapes_folder, out, events, resume=True, **settings) == summary
    assert events == [{"event": "finished", "message": f"the run in {out} already finished"}]
    result = cli(tiny_sd_eps, shapes_folder, out, "--resume", *_flags(settings))
    assert result.exit_code == 0 and "already finished" in result.stderr, result.output
    assert snapshot(out) == before  # no second validation row at the last step


def _read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, "/sys"):  # root writes through modes: then a read-only file system's folder
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no read-only folder here")


@pytest.mark.parametrize(
    "case, message",
    [
        ("file", "is a file, not a folder; choose another path"),
        ("under-file", "is a file, not a folder; choose another path"),
        ("read-only", "cannot be written"),
        ("metadata", "metadata.jsonl line 3 is not a JSON object"),
        ("beta-schedule", "unknown beta_schedule 'sigmoid'; d2f supports linear"),
        ("ztsnr-eps", "an epsilon-prediction model is undefined at the noise end of a zero-terminal-SNR"),
        ("log-every", "--log-every must be at least 1, got 0"),
    ],
)
def test_bad_output_data_and_schedule_are_one_line(tmp_path, tiny_sd_eps, shapes_folder, case, message):
    model, data, output, extra = tiny_sd_eps, shapes_folder, tmp_path / "run", []
    if case in ("file", "under-file"):
        (tmp_path / "file").write_text("not a folder")
        output = tmp_path / "file" if case == "file" else tmp_path / "file" / "run"
    elif case == "read-only":  # checked before anything is loaded: the missing model is not reached
        model, output = tmp_path / "no-model", f"{_read_only_folder(tmp_path)}/run"
    elif case == "metadata":
        data = tmp_path / "data"
        shutil.copytree(shapes_folder, data)
        lines = (data / "metadata.jsonl").read_text().splitlines()
        (data / "metadata.jsonl").write_text("\n".join(lines[:2] + ["{'file_name': 'x.png'}"] + lines[2:]))
    elif case == "beta-schedule":
        model = tmp_path / "model"
        shutil.copytree(tiny_sd_eps, model)
        config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
        (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_schedule": "sigmoid"}))
    elif case == "ztsnr-eps":
        extra = ["--zero-terminal-snr"]
    else:
        extra = ["--log-every", "0"]
    assert_one_error(cli(model, data, output, *extra), message)
    if case != "read-only":
        assert not (tmp_path / "run").exists()  # a run that cannot start leaves no folder


def test_skipped_images_are_reported(tmp_path, tiny_sd_eps, shapes_folder):
    data = tmp_path / "data"
    shutil.copytree(shapes_folder, data)
    (data / "00002.png").write_bytes(b"not an image")
    result = cli(tiny_sd_eps, data, tmp_path / "run", "--skip-bad-images", "--validate-every", "0")
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert f"note: skipped 1 unreadable image(s) of {data}: " in line and line.endswith("00002.png")
