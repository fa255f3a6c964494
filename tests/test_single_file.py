"""``--model FILE.safetensors``: single-file checkpoints in the original (LDM / CompVis) layout, as AUTOMATIC1111
and ComfyUI users have them, loaded through diffusers' ``from_single_file``.

Nobody ships a tiny single-file SD checkpoint, so ``helpers.pipeline_to_single_file`` writes one from the tiny
diffusers model; the first test checks that converter by round trip through ``from_single_file`` (every weight
equal, and the same outputs), which the CLI tests then rely on. The tiny model trips diffusers' architecture
inference the way every single file does offline: diffusers takes it for SD v1 and fetches that repo's configs,
so the tests pass its own diffusers folder as ``config=`` / ``--model-config``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pipeline_to_single_file
from PIL import Image
from typer.testing import CliRunner

from d2f.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, tiny_sd_eps) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    return pipeline_to_single_file(pipe, tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def d2f(*args):
    return runner.invoke(app, list(map(str, args)))


def one_error_line(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], result.stderr


def test_converter_round_trips_through_from_single_file(single_file, tiny_sd_eps):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    with safe_open(str(single_file), "pt") as f:
        roots = {key.split(".")[0] for key in f.keys()}
    assert roots == {"model", "first_stage_model", "cond_stage_model"}
    original = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    loaded = StableDiffusionPipeline.from_single_file(
        str(single_file), config=str(tiny_sd_eps), safety_checker=None, requires_safety_checker=False
    )
    for name in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert mine.keys() == theirs.keys(), name
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
    g = torch.Generator().manual_seed(0)
    z, cond, image = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g), torch.rand(1, 3, 32, 32)
    ids = torch.tensor([[original.tokenizer.bos_token_id, 5, 7, original.tokenizer.eos_token_id]])
    with torch.no_grad():
        for a, b in (
            (
                original.unet(z, 10, encoder_hidden_states=cond).sample,
                loaded.unet(z, 10, encoder_hidden_states=cond).sample,
            ),
            (original.vae.encode(image).latent_dist.mean, loaded.vae.encode(image).latent_dist.mean),
            (original.vae.decode(z[:1]).sample, loaded.vae.decode(z[:1]).sample),
            (original.text_encoder(ids)[0], loaded.text_encoder(ids)[0]),
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert loaded.scheduler.config.prediction_type == "epsilon" and loaded.unet.dtype == torch.float32


def test_sample_single_file_equals_its_diffusers_folder(single_file, tiny_sd_eps, tmp_path):
    images = []
    for model in ([single_file, "--model-config", tiny_sd_eps], [tiny_sd_eps]):
        out = tmp_path / f"{len(images)}"
        result = d2f(
            "sample", "--model", *model, "--prompt", "a red circle", "--steps", 2, "--seed", 3,
            "--output-dir", out, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        images.append(np.asarray(Image.open(json.loads(result.stdout)["images"][0])))
    np.testing.assert_array_equal(images[0], images[1])


def test_train_on_a_single_file_and_sample_the_run(single_file, tiny_sd_eps, shapes_folder, tmp_path):
    out = tmp_path / "run"
    result = d2f(
        "train", "--model", single_file, "--model-config", tiny_sd_eps, "--data", shapes_folder,
        "--output", out, "--steps", 2, "--batch-size", 4, "--lora-rank", 4, "--validate-every", 0,
        "--checkpoint-every", 0, "--warmup-steps", 0, "--sample-steps", 2, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 2
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["base_model"] == str(single_file) and record["base_model_source"] == str(single_file.resolve())
    assert record["model_config"] == str(Path(tiny_sd_eps).resolve()) and record["resolution"] == 32
    # the run finds its base model and its --model-config again
    result = d2f("sample", "--lora", out, "--prompt", "a red circle", "--steps", 2, "--output", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").is_file()
    result = d2f("sample", "--lora", out, "--model", single_file, "--prompt", "x", "--output", tmp_path / "h.png")
    assert result.exit_code == 0, result.output  # the same file given again is the run's base model


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickle_is_refused_without_allow_pickle(tmp_path, tiny_sd_eps, suffix):
    ckpt = tmp_path / f"model{suffix}"
    ckpt.write_bytes(b"not even a pickle")
    one_error_line(
        d2f("sample", "--model", ckpt, "--model-config", tiny_sd_eps, "--prompt", "a red circle"),
        "is a pickle",
    )
    result = d2f("train", "--model", ckpt, "--model-config", tiny_sd_eps, "--steps", 1, "--output", tmp_path / "r")
    one_error_line(result, "--allow-pickle")


def test_allow_pickle_loads_a_ckpt(single_file, tiny_sd_eps, tmp_path):
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-sd.ckpt"
    torch.save({"state_dict": load_file(single_file)}, ckpt)
    args = ["sample", "--model", ckpt, "--model-config", tiny_sd_eps, "--prompt", "a red circle", "--steps", 2]
    result = d2f(*args, "--allow-pickle", "--output", tmp_path / "g.png")
    assert result.exit_code == 0, result.output


def test_offline_without_model_config_names_the_option(single_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = d2f("sample", "--model", single_file, "--prompt", "a red circle", "--steps", 2)
    one_error_line(result, "pass --model-config with a local diffusers folder of the same architecture")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model-config", "/nonexistent/folder"], "--model-config: model folder /nonexistent/folder does not exist"),
        (["--variant", "fp16"], "--variant is for diffusers folders"),
        (["--model-config", "tiny-shapes-v"], "is --model-config tiny-shapes-v of the same architecture?"),
    ],
)
def test_bad_single_file_options_are_one_line(single_file, tiny_sd_eps, extra, message):
    if "tiny-shapes-v" in extra:
        from helpers import builtin_prior

        builtin_prior("tiny-shapes-v")
    one_error_line(d2f("sample", "--model", single_file, *extra, "--prompt", "a red circle"), message)


def test_missing_file_and_model_config_on_a_folder_are_one_line(tmp_path, tiny_sd_eps):
    one_error_line(d2f("sample", "--model", tmp_path / "gone.safetensors", "--prompt", "x"), "does not exist")
    one_error_line(
        d2f("sample", "--model", tiny_sd_eps, "--model-config", tiny_sd_eps, "--prompt", "x"),
        "--model-config is for single-file checkpoints",
    )


def test_not_a_checkpoint_is_one_line(single_file, tiny_sd_eps, tmp_path):
    """A lone diffusers component, and a checkpoint missing some weights, are named as such."""
    from safetensors.torch import load_file, save_file

    unet_only = tiny_sd_eps / "unet" / "diffusion_pytorch_model.safetensors"
    args = ["--model-config", tiny_sd_eps, "--prompt", "x"]
    one_error_line(d2f("sample", "--model", unet_only, *args), "no UNet, VAE, text encoder weights")
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in load_file(single_file).items() if "middle_block.2" not in k}, partial)
    one_error_line(d2f("sample", "--model", partial, *args), "lacks weights")
