"""SD 1.5 and SD 2.1 at their real size (random weights, ``d2f.world.build.sd_sized``) through the commands users run:
``d2f train`` (LoRA, EMA, gradient checkpointing, checkpoints), a killed run ``--resume``d, ``d2f sample``, and the
LoRA in plain diffusers, before and after ``d2f export --format kohya``.

Slow tier: each version builds a 4.3 / 5.2 GB model folder in a temporary folder (deleted afterwards) and peaks
at 5.7 GiB of memory (one process at a time); measured on the 2-core CPU: 81 s (sd15) and 87 s (sd21), of which
the build is 23-30 s. The tiny models of ``conftest.py`` cover the same paths in the fast tier; these catch what
only SD's shapes can break (the 8x VAE, the 4-level UNet, 77-token prompts, SD 2.1's 1024-wide text encoder and
linear-projection attention).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl, write_shapes_folder
from safetensors.torch import load_file
from typer.testing import CliRunner

import d2f

ROOT = Path(d2f.__file__).resolve().parent.parent  # the d2f these tests import: the subprocesses use it too
# SD's published sizes in millions of parameters (UNet, text encoder, VAE), to 0.1 %
SD_PARAMETERS = {"sd15": (859.52, 123.06, 83.65), "sd21": (865.91, 340.39, 83.65)}
TEXT_WIDTH = {"sd15": 768, "sd21": 1024}
MEMORY_GIB, DISK_GIB = 7, 8  # what one version needs (peak RSS 5.7 GiB; the folder 4.3 / 5.2 GB, the runs)


def available_gib(path: Path) -> tuple[float, float]:
    """(available memory, free disk at ``path``) in GiB."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    memory = int(meminfo["MemAvailable"].split()[0]) / 2**20
    return memory, shutil.disk_usage(path).free / 2**30


def d2f_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` (``d2f train ...``, ``d2f.world.build.sd_sized ...``) in a fresh process, whose memory is
    given back when it ends; fails the test with its stderr if it fails."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(args[:2])} failed:\n{result.stderr[-4000:]}"
    return result


def unet_output(unet, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    z, cond = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, width, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([500.0]), encoder_hidden_states=cond).sample


@pytest.fixture
def sd_model(request, tmp_path):
    """A full-size random SD folder of ``request.param`` (built by ``python -m d2f.world.build.sd_sized``), deleted
    after the test: pytest keeps the temporary folders of the last runs, and these are 4-5 GB each."""
    version = request.param
    memory, disk = available_gib(tmp_path)
    if memory < MEMORY_GIB or disk < DISK_GIB:
        pytest.skip(f"{version} needs {MEMORY_GIB} GiB memory and {DISK_GIB} GiB disk; {memory:.1f} / {disk:.1f} free")
    folder = tmp_path / version
    try:
        result = d2f_cli("d2f.world.build.sd_sized", str(folder), "--version", version)
        print(result.stdout)
        yield version, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sd_model", ["sd15", "sd21"], indirect=True)
def test_sd_sized_train_resume_sample_and_export(sd_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    from d2f.cli import app

    version, model = sd_model
    built = json.loads((model / "d2f_build.json").read_text())["parameters"]
    for name, expected in zip(("unet", "text_encoder", "vae"), SD_PARAMETERS[version]):
        assert built[name] / 1e6 == pytest.approx(expected, rel=1e-3), name

    data = write_shapes_folder(tmp_path / "data", num_images=4, resolution=64)
    run = tmp_path / "run"
    train = ["d2f", "train", "--model", str(model), "--data", str(data), "--output", str(run)]
    settings = [
        *("--resolution", "64", "--steps", "2", "--batch-size", "1", "--lora-rank", "4", "--warmup-steps", "0"),
        *("--ema", "--gradient-checkpointing", "--checkpoint-every", "1", "--validate-every", "0"),
        *("--sample-steps", "2", "--validation-prompt", "a red circle"),
    ]
    summary = json.loads(d2f_cli(*train, *settings, "--json").stdout)
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    record = json.loads((run / "d2f_run.json").read_text())
    assert record["status"] == "finished" and record["resolution"] == 64
    assert record["prediction_type"] == ("epsilon" if version == "sd15" else "v_prediction")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00001", "step_00002"]
    logged = [(l["step"], l["kind"]) for l in read_jsonl(run / "metrics.jsonl")]
    assert logged == [(0, "validation"), (2, "train"), (2, "validation")]  # the CLI logs every 10 steps and the last

    # a run killed after step 1 (its later checkpoint and weights gone) resumes and ends where the whole run did
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    shutil.rmtree(killed / "checkpoints" / "step_00002")
    (killed / "pytorch_lora_weights.safetensors").unlink()
    d2f_cli(*train[:-1], str(killed), *settings, "--resume")
    assert json.loads((killed / "d2f_run.json").read_text())["status"] == "finished"
    whole, resumed = (load_file(folder / "pytorch_lora_weights.safetensors") for folder in (run, killed))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    grid = tmp_path / "grid.png"
    sample = ["d2f", "sample", "--lora", str(run), "--steps", "2", "--height", "64", "--width", "64"]
    out = json.loads(d2f_cli(*sample, "--prompt", "a red circle", "--output", str(grid), "--json").stdout)
    assert grid.is_file() and out["images"] == [str(grid)]

    kohya = tmp_path / "kohya.safetensors"
    result = CliRunner().invoke(app, ["export", str(run), "--format", "kohya", "--output", str(kohya)])
    assert result.exit_code == 0, result.output

    # plain diffusers reads both files' key names, and both give the same UNet
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    base = unet_output(pipe.unet, TEXT_WIDTH[version])
    pipe.load_lora_weights(run)
    native = unet_output(pipe.unet, TEXT_WIDTH[version])
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(kohya))
    converted = unet_output(pipe.unet, TEXT_WIDTH[version])
    change, mismatch = ((x - y).abs().max() / base.abs().max() for x, y in ((native, base), (converted, native)))
    print(f"{version}: the LoRA moves the UNet output by {change:.1e}, the kohya file by {mismatch:.1e} more")
    assert torch.isfinite(native).all() and change > 1e-3  # measured: 5-7e-2
    torch.testing.assert_close(converted, native, rtol=1e-5, atol=1e-5 * float(base.abs().max()))
    for folder in (run, killed):  # 100 MB each, kept by pytest otherwise (a failed test keeps them to look at)
        shutil.rmtree(folder)
