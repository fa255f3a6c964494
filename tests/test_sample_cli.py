"""``d2f sample``: outputs, defaults, the run-folder contract, and one-line errors with exit code 2.

The central check: a plain diffusers ``StableDiffusionPipeline`` + ``load_lora_weights(run)`` +
``Diff2FlowEulerScheduler`` gives the same images as ``d2f sample --lora run`` for the same seed, prompts,
steps and guidance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import builtin_prior, write_run
from PIL import Image
from typer.testing import CliRunner

from d2f.cli import app

runner = CliRunner()


def d2f_sample(*args):
    return runner.invoke(app, ["sample", *map(str, args)])


def test_run_folder_sampled_by_plain_diffusers_equals_d2f_sample(tiny_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from d2f import Diff2FlowEulerScheduler

    prompts = ["a red circle", "a blue cross", "a yellow square"]
    args = [a for p in prompts for a in ("--prompt", p)]
    result = d2f_sample(
        "--lora",
        tiny_run,
        *args,
        "--steps",
        6,
        "--guidance",
        5,
        "--seed",
        11,
        "--output-dir",
        tmp_path / "singles",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["settings"]["model"] == json.loads((tiny_run / "d2f_run.json").read_text())["base_model"]
    mine = np.stack([np.asarray(Image.open(p)) for p in out["images"]])

    run = json.loads((tiny_run / "d2f_run.json").read_text())
    pipe = StableDiffusionPipeline.from_pretrained(
        run["base_model_source"], safety_checker=None, requires_safety_checker=False
    )
    pipe.load_lora_weights(tiny_run)
    pipe.scheduler = Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    theirs = pipe(prompts, num_inference_steps=6, guidance_scale=5.0, generator=gens, output_type="np").images
    theirs = (theirs * 255).round().astype(np.uint8)
    # same float images up to round-off; after quantisation to 8 bits at most one level may differ
    assert mine.shape == theirs.shape
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    # and the LoRA really is applied: the base model alone gives other images
    base = d2f_sample(
        "--model",
        run["base_model"],
        *args,
        "--steps",
        6,
        "--guidance",
        5,
        "--seed",
        11,
        "--output-dir",
        tmp_path / "base",
        "--json",
    )
    base_images = np.stack([np.asarray(Image.open(p)) for p in json.loads(base.stdout)["images"]])
    assert np.abs(base_images.astype(int) - mine.astype(int)).max() > 10


def test_compare_grid_json_and_latest_run_default(tiny_sd_eps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the latest run is looked up under ./runs, the grid written to ./grid.png
    runs = tmp_path / "runs"
    write_run(runs / "old", tiny_sd_eps, seed=1)
    newest = write_run(runs / "new", tiny_sd_eps, seed=2, objective="diffusion")
    os.utime(runs / "old" / "d2f_run.json", (1, 1))  # "latest" is by d2f_run.json's modification time
    result = d2f_sample(
        "--prompt",
        "a red circle",
        "--prompt",
        "a green cross",
        "--steps",
        3,
        "--compare",
        "--output",
        "grid.png",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert "latest run" in out["using"] and Path(out["settings"]["lora"]).name == newest.name
    assert out["settings"]["objective"] == "diffusion"
    assert out["settings"]["samplers"] == ["euler", "heun", "ddim"]
    assert out["settings"]["network_calls"] == {"euler": 3, "heun": 5, "ddim": 3}
    assert {"images", "settings", "seconds"} <= out.keys() and "metrics" not in out
    grid = Image.open(tmp_path / out["images"][0])
    # a row per sampler, a column per image: 3 rows and 2 columns of 32 px tiles with 2 px padding
    assert grid.size == (2 * 34 + 2, 3 * 34 + 2)


def test_run_default_sampler_and_human_output(tiny_sd_eps, tmp_path):
    run = write_run(tmp_path / "runs" / "d", tiny_sd_eps, objective="diffusion")
    result = d2f_sample("--lora", run, "--prompt", "a red circle", "--steps", 2, "--output", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    assert "ddim" in result.stdout and str(tmp_path / "g.png") in result.stdout.replace("\n", "")
    assert (tmp_path / "g.png").is_file()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", 0], "--steps must be at least 1"),
        (["--guidance", -1], "--guidance must be at least 0, got -1"),
        (["--sampler", "dpm"], "'--sampler': 'dpm' is not one of 'euler', 'heun', 'ddim'"),
        (["--height", 30], "size 30 px does not fit"),
        (["--num-images", 0], "--num-images must be at least 1"),
        (["--dtype", "float8"], "'--dtype': 'float8' is not one of 'float32', 'float16', 'bfloat16'"),
        (["--device", "tpu"], "--device 'tpu': use cpu, cuda or cuda:N"),
        (["--device", "cpu", "--dtype", "float16"], "--dtype float16 needs a CUDA GPU"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_sd_eps, tmp_path, args, message):
    result = d2f_sample("--model", tiny_sd_eps, "--prompt", "a red circle", *args, "--output", tmp_path / "g.png")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a GPU that is not there")
def test_cuda_without_a_gpu_is_one_line(tiny_sd_eps, tmp_path):
    result = d2f_sample("--model", tiny_sd_eps, "--prompt", "a red circle", "--device", "cuda")
    assert result.exit_code == 2 and "torch sees no CUDA GPU here; use --device cpu" in result.output


def test_device_and_dtype_are_used_and_recorded(tiny_sd_eps, tmp_path):
    args = ["--model", tiny_sd_eps, "--prompt", "a red circle", "--steps", 2, "--output", tmp_path / "g.png"]
    result = d2f_sample(*args, "--device", "cpu", "--dtype", "bfloat16", "--json")
    assert result.exit_code == 0, result.output
    settings = json.loads(result.stdout)["settings"]
    assert (settings["device"], settings["dtype"]) == ("cpu", "bfloat16") and (tmp_path / "g.png").is_file()
    default = json.loads(d2f_sample(*args, "--json").stdout)["settings"]
    assert default["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and default["dtype"] == "float32"


def test_no_prompts_on_a_non_builtin_model(tiny_sd_eps, tmp_path):
    result = d2f_sample("--model", tiny_sd_eps, "--output", tmp_path / "g.png")
    assert result.exit_code == 2 and "no prompts" in result.output


def test_lora_of_another_base_model_names_both(tiny_run, tiny_sd_v, tmp_path):
    result = d2f_sample(
        "--model", tiny_sd_v, "--lora", tiny_run, "--prompt", "a red circle", "--output", tmp_path / "g.png"
    )
    assert result.exit_code == 2, result.output
    base = json.loads((tiny_run / "d2f_run.json").read_text())["base_model"]
    assert "trained on" in result.output and base in result.output and str(tiny_sd_v) in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bare_lora_file_that_does_not_fit(tmp_path, tiny_run):
    from safetensors.torch import load_file, save_file

    # rename the LoRA's modules to ones this UNet does not have (as a LoRA of another architecture would)
    weights = load_file(tiny_run / "pytorch_lora_weights.safetensors")
    other = {k.replace("up_blocks.1", "up_blocks.3"): v for k, v in weights.items()}
    save_file(other, tmp_path / "other.safetensors")
    base = json.loads((tiny_run / "d2f_run.json").read_text())["base_model"]
    result = d2f_sample(
        "--model",
        base,
        "--lora",
        tmp_path / "other.safetensors",
        "--prompt",
        "a red circle",
        "--output",
        tmp_path / "g.png",
    )
    assert result.exit_code == 2 and "another base model" in result.output, result.output
    # a bare file that fits loads fine
    save_file(weights, tmp_path / "fits.safetensors")
    ok = d2f_sample(
        "--model",
        base,
        "--lora",
        tmp_path / "fits.safetensors",
        "--prompt",
        "a red circle",
        "--steps",
        2,
        "--output",
        tmp_path / "g.png",
    )
    assert ok.exit_code == 0, ok.output


def test_evaluate_needs_world_prompts(tiny_sd_eps, tmp_path):
    result = d2f_sample(
        "--model", tiny_sd_eps, "--prompt", "a photo of a cat", "--evaluate", "--output", tmp_path / "g.png"
    )
    assert result.exit_code == 2 and "--evaluate needs prompts of the built-in world" in result.output


def test_evaluate_reports_metrics(tiny_sd_eps, tmp_path):
    from d2f.world import evaluator

    if not (evaluator.ASSET_DIR / "config.json").is_file():
        pytest.skip("the evaluator's weights are not built in this checkout")
    result = d2f_sample(
        "--model",
        tiny_sd_eps,
        "--prompt",
        "a red circle",
        "--prompt",
        "a blue square",
        "--steps",
        2,
        "--evaluate",
        "--json",
        "--output",
        tmp_path / "g.png",
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert set(metrics) == {"prompt_accuracy", "domain_accuracy", "fd"}
    assert 0 <= metrics["prompt_accuracy"] <= 1 and metrics["fd"] >= 0


def test_full_finetune_run_folder(tiny_sd_eps, tmp_path):
    """A ``--lora-rank 0`` run saves the whole UNet in ``unet/``; ``d2f sample --lora RUN`` samples with it."""
    from diffusers import UNet2DConditionModel

    from d2f.pipeline import generate, load_pipeline

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_eps, subfolder="unet")
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)  # a visibly different "finetuned" UNet
    run = tmp_path / "runs" / "full"
    unet.save_pretrained(run / "unet")
    (run / "d2f_run.json").write_text(
        json.dumps(
            dict(
                base_model=str(tiny_sd_eps),
                base_model_source=str(tiny_sd_eps),
                prediction_type="epsilon",
                objective="diff2flow",
                sampler="euler",
                resolution=32,
            )
        )
    )
    pipe = load_pipeline(lora=str(run))
    assert torch.equal(pipe.unet.conv_out.bias, unet.conv_out.bias)
    finetuned = generate(pipe, ["a red circle"], steps=2, seed=0)
    base = generate(load_pipeline(str(tiny_sd_eps)), ["a red circle"], steps=2, seed=0)
    assert (finetuned - base).abs().max() > 0.01


# ------------------------------------------------------------------------------ how a model is sampled


def _singles(out: dict) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in out["images"]])


def test_an_untouched_model_samples_as_diffusion_from_t_min(tiny_sd_eps, tmp_path):
    """One rule (d2f.pipeline.pipe_parametrization): a model without a run samples as objective diffusion, so
    FM Euler starts at t_min where DDIM starts, through the CLI and the library alike."""
    from d2f.pipeline import generate, load_pipeline, to_pil

    prompts = ["a red circle", "a blue cross"]
    args = [a for p in prompts for a in ("--prompt", p)]
    result = d2f_sample(
        "--model", tiny_sd_eps, *args, "--steps", 3, "--guidance", 3, "--output-dir", tmp_path / "out", "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["settings"]["objective"] == "diffusion"
    pipe = load_pipeline(str(tiny_sd_eps))
    expected = generate(pipe, prompts, steps=3, guidance=3.0, seed=0, objective="diffusion")
    from_zero = generate(pipe, prompts, steps=3, guidance=3.0, seed=0, objective="diff2flow")
    assert np.array_equal(_singles(out), np.stack([np.asarray(im) for im in to_pil(expected)]))
    assert not np.array_equal(_singles(out), np.stack([np.asarray(im) for im in to_pil(from_zero)]))


def test_noise_and_ode_state_are_float32_whatever_the_unet_precision(tiny_sd_eps):
    from d2f.pipeline import initial_noise, load_pipeline, sample_latents

    fp32, bf16 = load_pipeline(str(tiny_sd_eps)), load_pipeline(str(tiny_sd_eps), dtype=torch.bfloat16)
    assert bf16.unet.dtype == torch.bfloat16
    a, b = initial_noise(fp32, 3, 32, 32, seed=4), initial_noise(bf16, 3, 32, 32, seed=4)
    assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    latents = sample_latents(bf16, ["a red circle"], steps=2, guidance=1.0)
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


def test_a_run_is_sampled_the_way_it_records(tiny_sd_eps, tmp_path):
    """A run's recorded guidance and steps (and its sampler) are the defaults; explicit options win; the
    "using" line says what was used."""
    run = write_run(tmp_path / "runs" / "r", tiny_sd_eps, objective="diffusion", guidance=2.0, sample_steps=3)
    result = d2f_sample("--lora", run, "--prompt", "a red circle", "--output", tmp_path / "g.png", "--json")
    assert result.exit_code == 0, result.output
    used = json.loads(result.stdout)["settings"]
    assert (used["guidance"], used["steps"], used["samplers"]) == (2.0, 3, ["ddim"])
    result = d2f_sample("--lora", run, "--prompt", "a red circle", "--guidance", 4, "--sampler", "euler", "--json")
    used = json.loads(result.stdout)["settings"]
    assert (used["guidance"], used["steps"], used["samplers"]) == (4.0, 3, ["euler"])
    human = d2f_sample("--lora", run, "--prompt", "a red circle", "--output", tmp_path / "h.png")
    said = " ".join(human.stderr.split())  # rich wraps long lines (the tmp path's length varies)
    assert human.exit_code == 0 and "objective diffusion" in said and "guidance 2" in said


def test_non_finite_weights_are_a_clear_error_not_black_images(tiny_run, tiny_sd_eps, tmp_path):
    from safetensors.torch import load_file, save_file

    from d2f.errors import UserError
    from d2f.pipeline import load_pipeline, sample_latents

    weights = load_file(tiny_run / "pytorch_lora_weights.safetensors")
    key = next(iter(weights))
    weights[key] = torch.full_like(weights[key], float("nan"))
    run = tmp_path / "nan-run"
    run.mkdir()
    save_file(weights, run / "pytorch_lora_weights.safetensors")
    (run / "d2f_run.json").write_text((tiny_run / "d2f_run.json").read_text())
    result = d2f_sample("--lora", run, "--prompt", "a red circle", "--output", tmp_path / "g.png")
    assert result.exit_code == 2 and "NaN or infinite" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    pipe = load_pipeline(str(tiny_sd_eps))  # non-finite base weights: caught on the latents
    with torch.no_grad():
        next(pipe.unet.parameters()).fill_(float("inf"))
    with pytest.raises(UserError, match="NaN or infinite latents"):
        sample_latents(pipe, ["a red circle"], steps=2)


@pytest.mark.parametrize("case", ["under-a-file", "a-directory", "no-suffix"])
def test_outputs_are_checked_before_loading(tiny_sd_eps, tmp_path, case):
    (tmp_path / "file.txt").write_text("x")
    output = {"under-a-file": tmp_path / "file.txt" / "g.png", "a-directory": tmp_path, "no-suffix": tmp_path / "g"}
    result = d2f_sample("--model", tiny_sd_eps, "--prompt", "a", "--output", output[case])
    assert result.exit_code == 2, result.output
    message = {"under-a-file": "is a file, not a folder", "a-directory": "is a directory", "no-suffix": "suffix"}
    assert message[case] in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_pickle_weights_are_refused_and_a_wrong_shape_lora_is_one_line(tiny_run, tmp_path):
    run = tmp_path / "pickled"
    run.mkdir()
    (run / "d2f_run.json").write_text((tiny_run / "d2f_run.json").read_text())
    (run / "pytorch_lora_weights.bin").write_bytes(b"not unpickled")
    result = d2f_sample("--lora", run, "--prompt", "a", "--output", tmp_path / "g.png")
    assert result.exit_code == 2 and "pickle" in result.stderr and "safetensors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    # the same module names, other sizes (the built-in prior's cross-attention is 64 wide, the tiny model's 32):
    # d2f's one line, not diffusers' pages of size mismatches
    lora = tiny_run / "pytorch_lora_weights.safetensors"
    prior = builtin_prior("tiny-shapes-eps")
    result = d2f_sample("--model", prior, "--lora", lora, "--prompt", "a", "--output", tmp_path / "g.png")
    assert result.exit_code == 2 and "does not fit model" in result.stderr, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_variant_only_folders_need_variant_and_load_in_float32(tiny_sd_eps, tmp_path):
    """A folder saved with fp16 variant weights (as SD's hub repos are) is refused with the variant named,
    loads with --variant fp16, and comes back in float32 (not in the stored half precision)."""
    from diffusers import StableDiffusionPipeline

    from d2f.pipeline import load_pipeline

    folder = tmp_path / "fp16-only"
    StableDiffusionPipeline.from_pretrained(tiny_sd_eps).to(torch.float16).save_pretrained(folder, variant="fp16")
    refused = d2f_sample("--model", folder, "--prompt", "a", "--output", tmp_path / "g.png")
    assert refused.exit_code == 2 and "pass --variant fp16" in refused.stderr, refused.output
    wrong = d2f_sample("--model", folder, "--variant", "bf16", "--prompt", "a", "--output", tmp_path / "g.png")
    assert wrong.exit_code == 2 and "no bf16 weights" in wrong.stderr and "fp16" in wrong.stderr
    ok = d2f_sample(
        "--model", folder, "--variant", "fp16", "--prompt", "a", "--steps", 2, "--output", tmp_path / "g.png"
    )
    assert ok.exit_code == 0, ok.output
    pipe = load_pipeline(str(folder), variant="fp16")
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
