"""Every command run to the end as a user runs it: ``d2f ...`` in its own process (not CliRunner, not the
library), on a pseudo-terminal where the progress display matters, and with ``--json``; then its outputs are
opened the way a user's tools open them (the LoRA in a plain diffusers pipeline, the grids as PNGs, the JSON
parsed). Tiny settings (2 steps, 4 pairs) on the tiny random SD model, so the module stays fast.

``d2f reflow`` shipped crashing on every CLI run because no test ever ran it to the end: this module is the
guard against that class of bug.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

import d2f

ROOT = Path(d2f.__file__).resolve().parent.parent
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "COLUMNS": "100",
    "TERM": "xterm",
}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves of a terminal
TINY_TRAIN = ["--steps", "2", "--batch-size", "2", "--lora-rank", "4", "--sample-steps", "2"]
TINY_TRAIN += ["--validate-every", "0", "--checkpoint-every", "2", "--eval-samples", "0", "--warmup-steps", "0"]


def d2f_cli(*args: str, cwd: Path, terminal: bool = False, timeout: float = 240) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m d2f ARGS``; with ``terminal`` both streams are one
    pseudo-terminal (returned as stdout), so rich draws its progress bars as a user sees them."""
    cmd = [sys.executable, "-m", "d2f", *args]
    if not terminal:
        done = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
        return done.returncode, done.stdout, done.stderr
    import pty

    main, child = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, env=ENV, cwd=cwd)
    os.close(child)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed its side
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        proc.kill()
        reader.join(5)
        os.close(main)
    return code, ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r\n", "\n"), ""


def assert_ok(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    assert "Traceback" not in out + err, out + err
    return out


def lora_loads_in_diffusers(model: Path, lora_dir: Path) -> None:
    """The run's LoRA as a user loads it: a plain diffusers pipeline's ``load_lora_weights``."""
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lora_dir))
    after = pipe.unet.state_dict()
    assert any("lora" in k for k in after) and all(torch.equal(before[k], after[k]) for k in before if k in after)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("happy")


@pytest.fixture(scope="module")
def trained(work, tiny_sd_eps, shapes_folder) -> Path:
    out = work / "run"
    text = assert_ok(
        d2f_cli(
            "train", "--model", str(tiny_sd_eps), "--data", str(shapes_folder), "--output", str(out), *TINY_TRAIN,
            cwd=work, terminal=True,
        )
    )  # fmt: skip
    assert "train diff2flow" in text and "━" in text  # the progress bar, drawn on the terminal
    assert "done in" in text and f"run folder: {out}" in text and "sample it: d2f sample --lora" in text
    return out


def test_train_on_a_terminal_then_its_lora_loads_in_diffusers(trained, tiny_sd_eps):
    record = json.loads((trained / "d2f_run.json").read_text())
    assert record["status"] == "finished" and record["summary"]["steps"] == 2
    assert (trained / "checkpoints" / "step_00002").is_dir()
    assert Image.open(trained / "samples" / "step_00002.png").size[0] > 0
    lora_loads_in_diffusers(tiny_sd_eps, trained)


def test_train_json(work, tiny_sd_eps, shapes_folder):
    out = work / "run-json"
    stdout = assert_ok(
        d2f_cli(
            "train", "--model", str(tiny_sd_eps), "--data", str(shapes_folder), "--output", str(out), *TINY_TRAIN,
            "--steps", "1", "--json", cwd=work,
        )
    )  # fmt: skip
    summary = json.loads(stdout)  # stdout is the JSON object and nothing else
    assert summary["output_dir"] == str(out) and summary["steps"] == 1 and summary["final_loss"] > 0
    assert Path(summary["lora_path"]).is_file() and Path(summary["grid"]).is_file()


def test_sample_on_a_terminal_and_as_json(work, trained):
    grid = work / "grid.png"
    text = assert_ok(
        d2f_cli("sample", "--lora", str(trained), "--prompt", "a red circle", "--steps", "2", "--num-images", "2",
                "--output", str(grid), cwd=work, terminal=True)
    )  # fmt: skip
    assert str(grid) in text and max(Image.open(grid).size) >= 2 * 32  # two 32 px images in one grid
    folder = work / "images"
    result = json.loads(
        assert_ok(
            d2f_cli("sample", "--lora", str(trained), "--prompt", "a red circle", "--steps", "2", "--num-images",
                    "2", "--output-dir", str(folder), "--json", cwd=work)
        )
    )  # fmt: skip
    assert len(result["images"]) == 2 and all(Image.open(p).size == (32, 32) for p in result["images"])
    assert result["settings"]["steps"] == 2 and result["settings"]["objective"] == "diff2flow"


def test_reflow_to_the_end_then_its_student_samples_in_one_step(work, trained, shapes_folder):
    student = work / "student"
    tiny = ["--lora", str(trained), "--data", str(shapes_folder), "--num-pairs", "4", "--pair-steps", "2"]
    tiny += ["--steps", "2", "--batch-size", "2", "--warmup-steps", "0", "--validate-every", "0"]
    text = assert_ok(d2f_cli("reflow", *tiny, "--output", str(student), cwd=work, terminal=True))
    assert "done in" in text and "sample it: d2f sample --lora" in text
    record = json.loads((student / "d2f_run.json").read_text())
    assert record["status"] == "finished" and record["objective"] == "reflow"

    again = work / "student-json"  # reuses the first student's pairs: the JSON says none were made
    tiny += ["--pairs", str(student / "pairs")]
    rfpp = ["--loss", "pseudo-huber", "--t-sampling", "u-shaped"]  # 2-rectified flow++'s loss and time density
    summary = json.loads(assert_ok(d2f_cli("reflow", *tiny, *rfpp, "--output", str(again), "--json", cwd=work)))
    assert summary["pairs"]["shards_written"] == 0 and summary["steps"] == 2
    settings = json.loads((again / "d2f_run.json").read_text())["settings"]
    assert (settings["loss"], settings["t_sampling"]) == ("pseudo-huber", "u-shaped")
    assert record["settings"]["loss"] == "mse"  # the default

    one = work / "one-step.png"
    assert_ok(d2f_cli("sample", "--lora", str(again), "--steps", "1", "--prompt", "a red circle", "--output",
                      str(one), cwd=work))  # fmt: skip
    assert Image.open(one).size[0] > 0


def test_a_windowed_reflow_from_the_cli_samples_one_step_per_window_by_default(work, trained, shapes_folder):
    """PeRFlow (``--windows 2``): the summary names ``--steps 2``, and ``d2f sample`` without --steps takes 2."""
    student = work / "student-windows"
    tiny = ["--lora", str(trained), "--data", str(shapes_folder), "--num-pairs", "2", "--pair-steps", "2"]
    tiny += ["--steps", "1", "--batch-size", "2", "--warmup-steps", "0", "--validate-every", "0", "--windows", "2"]
    summary = json.loads(assert_ok(d2f_cli("reflow", *tiny, "--output", str(student), "--json", cwd=work)))
    assert summary["sample_command"].endswith("--steps 2") and summary["pairs"]["shards_written"] == 1
    result = json.loads(assert_ok(d2f_cli("sample", "--lora", str(student), "--prompt", "a red circle", "--output",
                                          str(work / "windows.png"), "--json", cwd=work)))  # fmt: skip
    assert result["settings"]["steps"] == 2 and result["settings"]["guidance"] == 1.0
    side = json.loads((student / "d2f_run.json").read_text())["resolution"]
    assert Image.open(result["images"][0]).size[0] >= side  # one image, or the grid of them --output writes


def test_export_then_the_kohya_file_loads_in_diffusers(work, trained, tiny_sd_eps):
    from diffusers import StableDiffusionPipeline

    kohya = work / "exported" / "style.safetensors"
    kohya.parent.mkdir()
    text = assert_ok(d2f_cli("export", str(trained), "--output", str(kohya), cwd=work, terminal=True))
    assert str(kohya) in text and kohya.is_file()
    again = json.loads(assert_ok(d2f_cli("export", str(trained), "--output", str(work / "k2.safetensors"),
                                          "--json", cwd=work)))  # fmt: skip
    assert Path(again["output"]).is_file()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(kohya.parent), weight_name=kohya.name)
    assert any("lora" in k for k in pipe.unet.state_dict())


def test_inspect_schedule_and_models(work):
    text = assert_ok(d2f_cli("inspect-schedule", "--t", "0.5", cwd=work, terminal=True))
    assert "0.0640" in text and "0.9717" in text  # SD's covered range
    report = json.loads(assert_ok(d2f_cli("inspect-schedule", "--rows", "3", "--json", cwd=work)))
    assert len(report["rows"]) == 3 and abs(report["t_min"] - 0.0640) < 1e-4
    text = assert_ok(d2f_cli("models", cwd=work, terminal=True))
    rows = json.loads(assert_ok(d2f_cli("models", "--json", cwd=work)))
    assert {"tiny-shapes-eps", "tiny-shapes-v"} <= {r["name"] for r in rows}
    assert all(r["name"] in text for r in rows)  # whole names, never cut
