"""The built-in priors: shipped folders load with plain diffusers, sample what they are asked for,
and the recipe that made them runs end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextModel

import d2f
from d2f.training.caption_check import text_encoder_words
from d2f.world.build import priors, stages, vae_training
from d2f.world.build.text_pretraining import english_words
from d2f.world.build.tokenizer import MODEL_MAX_LENGTH
from d2f.world.shapes import all_prompts, to_unit_range

ASSETS = Path(d2f.__file__).resolve().parent / "assets"
EXPECTED_FILES = [
    "model_index.json",
    "d2f_build.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
]


def sd_betas() -> torch.Tensor:
    """SD's scaled_linear schedule, written out: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2."""
    return torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2


def load(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- shipped priors


@pytest.mark.parametrize(
    "name,prediction_type,scheduler",
    [
        ("tiny-shapes-eps", "epsilon", "PNDMScheduler"),
        ("tiny-shapes-v", "v_prediction", "DDIMScheduler"),
        ("tiny-shapes-eps-words", "epsilon", "PNDMScheduler"),
    ],
)
def test_shipped_prior_loads_with_plain_diffusers(name, prediction_type, scheduler):
    folder = ASSETS / name
    missing = [f for f in EXPECTED_FILES if not (folder / f).is_file()]
    assert not missing, f"{name} lacks {missing}"
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 16 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    assert not [f for f in folder.rglob("*") if f.suffix in (".bin", ".pkl", ".pt", ".ckpt")]

    pipe = load(folder)
    assert type(pipe.scheduler).__name__ == scheduler
    assert pipe.scheduler.config.prediction_type == prediction_type
    assert pipe.scheduler.config.num_train_timesteps == 1000
    torch.testing.assert_close(pipe.scheduler.betas.double(), sd_betas(), rtol=1e-5, atol=1e-9)
    assert pipe.tokenizer.model_max_length == MODEL_MAX_LENGTH
    assert pipe.text_encoder.config.max_position_embeddings >= pipe.tokenizer.model_max_length
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    assert pipe.vae.config.scaling_factor != 0.18215  # set from its own latents

    record = json.loads((folder / "d2f_build.json").read_text())
    assert record["prediction_type"] == prediction_type
    assert record["recipe"]["steps"] > 0 and record["final_loss"] > 0 and "torch" in record["versions"]
    assert record["captions"] == priors.training_captions()  # what d2f train's caption check compares against


@pytest.mark.parametrize("name", ["tiny-shapes-eps", "tiny-shapes-v", "tiny-shapes-eps-words"])
def test_shipped_prior_draws_the_prompted_shape_and_colour(name):
    """24 samples, one per prompt, 25 DDIM steps with guidance 5, scored by the shipped evaluator.
    The shipped bar (64 samples) is >= 0.90; 24 fixed-seed samples must clear 0.8 (one sample is
    about 0.04, so this leaves room for small numeric differences across machines)."""
    from d2f.world.metrics import domain_accuracy, prompt_accuracy

    prompts = all_prompts()
    images = priors.sample_prior(ASSETS / name, prompts, steps=25, guidance=5.0, seed=1)
    assert images.shape == (24, 3, 32, 32)
    assert prompt_accuracy(images, prompts) >= 0.8
    assert domain_accuracy(images, "base") >= 0.9  # it learned the base domain only


def test_shared_vae_reconstructs_every_kind_of_the_corpus():
    """The VAE plays SD's general-purpose one: held-out images of every corpus kind, the shapes world's
    target domain included, survive encode-decode; the shipped numbers are in its build record."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(ASSETS / "tiny-shapes-eps" / "vae")
    psnr = vae_training.psnr_by_kind(vae, num_images=32)
    # a blank (mean-colour) reconstruction scores about 8-12 dB; the old shapes-only VAE read strokes at 12.6
    assert min(psnr.values()) > 18, psnr
    shipped = json.loads((ASSETS / "tiny-shapes-eps" / "d2f_build.json").read_text())["vae"]["held_out_psnr_db"]
    assert shipped.keys() == psnr.keys()


# ----------------------------------------------------------------------------- the recipe


def test_rebuild_recipe_for_a_few_steps(tmp_path):
    threads = torch.get_num_threads()
    try:
        stages.main(
            [
                "--output",
                str(tmp_path),
                "--only",
                "text_encoder",
                "--only",
                "vae",
                "--only",
                "priors",  # the tokenizer stage is left out: the shipped merges are used
                "--text-steps",
                "2",
                "--vae-steps",
                "2",
                "--prior-steps",
                "2",
                "--num-images",
                "32",
                "--batch-size",
                "8",
            ]
        )
    finally:
        torch.set_num_threads(threads)  # build runs on one thread; leave the session's setting alone
    vae = None
    for name, prediction_type in priors.PRIORS.items():
        pipe = load(tmp_path / name)
        assert pipe.scheduler.config.prediction_type == prediction_type
        record = json.loads((tmp_path / name / "d2f_build.json").read_text())
        assert record["recipe"]["steps"] == 2 and record["vae"]["steps"] == 2
        assert record["captions"] == priors.training_captions()
        if name.endswith(priors.WORDS_SUFFIX):  # its text encoder is the pretrained one, untouched, and says so
            pretrained = CLIPTextModel.from_pretrained(tmp_path / "_build" / "text_encoder")
            for a, b in zip(pretrained.parameters(), pipe.text_encoder.parameters()):
                assert torch.equal(a, b)
            assert record["text_encoder_pretraining"]["steps"] == 2
            assert text_encoder_words(tmp_path / name) == english_words()
        else:
            assert record["text_encoder_pretraining"] is None
        out = pipe(
            "a red circle",
            num_inference_steps=2,
            guidance_scale=5.0,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images
        assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
        vae = pipe.vae
    # scaling_factor = 1/std(latents): scaled posterior samples of the training images have unit std
    images = to_unit_range(vae_training.corpus(8, 0))
    latents = vae_training.encode(vae, images, sample=True, generator=torch.Generator().manual_seed(0))
    assert abs((latents * vae.config.scaling_factor).std().item() - 1) < 0.2


FACTORY_COMMANDS = ["d2f.world.build", "d2f.world.build.evaluator_training", "d2f.world.build.sd_sized"]


@pytest.mark.parametrize("module", FACTORY_COMMANDS)
def test_factory_commands_run_as_modules(module):
    """The factory's commands (README, the build records) start as ``python -m``; ``--help`` lists their options."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--help" in result.stdout
    if module == "d2f.world.build":
        assert "python -m d2f.world.build" in result.stdout and "--only" in result.stdout


def test_grid_stage_draws_one_labelled_row_per_prior(tmp_path):
    """``python -m d2f.world.build --only grid``: one row of ``per_row`` 32 px samples per prior, upscaled."""
    from PIL import Image

    from d2f.pipeline.models import ASSETS

    folders = [ASSETS / "tiny-shapes-eps", ASSETS / "tiny-shapes-v"]
    path = priors.save_grid(folders, tmp_path / "sub" / "grid.png", guidance=5.0, seed=0, per_row=2, cell=40)
    grid = Image.open(path)
    assert grid.size == (110 + 2 * 40, 2 * 40)
    tile = grid.crop((110, 0, 150, 40))
    assert len(tile.getcolors(40 * 40)) > 2  # a sample, not the blank canvas
