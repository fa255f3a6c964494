"""A full disk is one line and exit code 2, never a traceback, and leaves nothing half-written behind.

The real thing first: each command runs in a real process with its output on a tiny tmpfs (``mount -t tmpfs
-o size=...``, which needs root, as CI has; elsewhere these tests skip and say why), sized so that the write
under test is the one that does not fit: ``d2f export``, ``d2f sample`` (its PNGs), and ``d2f train`` at its
step-0 grid, at a checkpoint and at the final weights. Then, as a second layer in this process, the writers
of ``d2f.files`` with a failure of each kind they turn into a ``UserError``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from d2f.errors import UserError
from d2f.files import FIXABLE, atomic_file, atomic_folder, save_safetensors, write_failure, write_json_atomic


@pytest.fixture
def tiny_disk(tmp_path):
    """``mount(size)``: a fresh tmpfs of ``size`` (e.g. "64k") under ``tmp_path``; unmounted afterwards."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command: a real full disk cannot be made here")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=10k,mode=1777", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'}); CI runs as root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(disk: Path) -> None:
    """Write a filler file until the disk refuses more."""
    try:
        with open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def d2f(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "d2f", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def assert_one_line(result, *words) -> str:
    """Exit code 2, no traceback, one error line (progress lines aside) that holds ``words``."""
    assert result.returncode == 2, f"rc {result.returncode}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # progress lines aside
    assert len(lines) == 1, result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders of a write, and empty files, anywhere under ``folder``."""
    found = []
    for path in folder.rglob("*"):
        if ".tmp-" in path.name or path.name.startswith(".old-") or (path.is_file() and path.stat().st_size == 0):
            found.append(str(path.relative_to(folder)))
    return found


def test_export_to_a_full_disk(tiny_disk, tiny_run, tmp_path):
    disk = tiny_disk("16k")  # the kohya file of tiny_run is about 50 kB
    result = d2f("export", tiny_run, "--output", disk / "k.safetensors")
    assert_one_line(result, "could not write", str(disk / "k.safetensors"), "no space left", "another --output")
    assert leftovers(disk) == [] and not (disk / "k.safetensors").exists()

    # --overwrite of a file on a full disk: the old file stays as it was
    (disk / "old.safetensors").write_bytes(b"the old export")
    fill(disk)
    result = d2f("export", tiny_run, "--output", disk / "old.safetensors", "--overwrite")
    assert_one_line(result, str(disk), "no space left", "another --output")
    assert (disk / "old.safetensors").read_bytes() == b"the old export"
    assert leftovers(disk) == [] and {p.name for p in disk.iterdir()} <= {"filler", "old.safetensors"}


def test_sample_to_a_full_disk(tiny_disk, tiny_run):
    disk = tiny_disk("64k")
    fill(disk)
    result = d2f(
        "sample", "--lora", tiny_run, "--output-dir", disk / "images", "--steps", "2", "--prompt", "a red circle"
    )
    assert_one_line(result, str(disk / "images"), "no space left")
    assert leftovers(disk) == []  # no zero-byte or half PNG
    assert not any(disk.rglob("*.png"))

    result = d2f(
        "sample", "--lora", tiny_run, "--output", disk / "grid.png", "--steps", "2", "--prompt", "a red circle"
    )
    assert_one_line(result, str(disk), "no space left")
    assert leftovers(disk) == [] and not (disk / "grid.png").exists()


TRAIN = ("--steps", "2", "--batch-size", "2", "--lora-rank", "4", "--sample-steps", "2", "--cpu")


@pytest.mark.parametrize(
    "size, args, where",
    [
        # the step-0 validation grid (about 20 kB) does not fit
        pytest.param("16k", (), "samples/step_00000.png", marks=pytest.mark.slow),
        # the grid fits, a checkpoint (1.2 MB) does not
        ("512k", ("--checkpoint-every", "1"), "checkpoints/step_00001"),
        # no checkpoints: the final LoRA (240 kB) does not fit
        pytest.param("128k", ("--checkpoint-every", "0"), "pytorch_lora_weights.safetensors", marks=pytest.mark.slow),
    ],
    ids=["grid", "checkpoint", "final-weights"],
)
def test_train_on_a_full_disk(tiny_disk, tiny_sd_eps, shapes_folder, size, args, where):
    disk = tiny_disk(size)
    out = disk / "run"
    result = d2f("train", "--model", tiny_sd_eps, "--data", shapes_folder, "--output", out, *TRAIN, *args)
    line = assert_one_line(result, "could not write", str(out / where), "no space left", "free space")
    assert leftovers(disk) == [], leftovers(disk)
    if where.startswith("checkpoints"):
        assert "--resume" in line
        assert list((out / "checkpoints").iterdir()) == []  # no .tmp-step_00001-PID left behind
        assert (out / "samples" / "step_00000.png").stat().st_size > 0


# --- the second layer: the writers themselves, in this process ------------------------------------------------


@pytest.mark.parametrize("code", sorted(FIXABLE))
def test_each_fixable_failure_is_one_user_error(tmp_path, code):
    path = tmp_path / "file.json"
    path.write_text("old")
    with pytest.raises(UserError, match=f"could not write {path} \\({FIXABLE[code]}\\); ") as caught:
        with atomic_file(path) as tmp:
            tmp.write_text("half of the new")
            raise OSError(code, os.strerror(code))
    assert "\n" not in str(caught.value)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_safetensors_error_around_an_os_error_is_read(tmp_path):
    exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    error = write_failure(tmp_path / "x.safetensors", exc, "choose another --output")
    assert (
        str(error)
        == f"could not write {tmp_path / 'x.safetensors'} (no space left on the device); choose another --output"
    )
    assert write_failure(tmp_path / "x", SafetensorError("header too large")) is None


def test_other_failures_pass_unchanged_and_clean_up(tmp_path):
    with pytest.raises(OSError) as caught:
        with atomic_file(tmp_path / "a.json") as tmp:
            tmp.write_text("x")
            raise OSError(errno.EIO, "Input/output error")
    assert caught.value.errno == errno.EIO and list(tmp_path.iterdir()) == []
    with pytest.raises(KeyError):
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "part").write_text("x")
            raise KeyError("a bug")
    assert list(tmp_path.iterdir()) == []


def test_atomic_writers_write_and_replace(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(tmp_path / "a.json", {"x": 2})
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 2\n}'
    save_safetensors({"w": torch.ones(2)}, tmp_path / "w.safetensors", metadata={"k": "v"})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_folder(tmp_path / "f") as tmp:
        (tmp / "one").write_text("1")
    with atomic_folder(tmp_path / "f") as tmp:  # replaces the whole folder
        (tmp / "two").write_text("2")
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "f", "w.safetensors"]
