"""Plain helpers of the tests (fixtures live in ``conftest.py``).

- ``build_tiny_sd``: a complete, tiny, random SD-format diffusers folder, built offline in well under a second
- ``write_run``: a run folder as ``d2f train`` writes it, with a random non-zero LoRA
- ``builtin_prior``: a shipped prior's folder (or skip)
- ``write_shapes_folder``, ``read_jsonl``: small imagefolders of the shapes world; metrics files
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parent.parent / "d2f" / "assets"


def build_tiny_sd(folder: Path, prediction_type: str, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from d2f.world.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 32),
        layers_per_block=1,
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    betas = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if prediction_type == "epsilon":  # SD 1.5's scheduler
        scheduler = PNDMScheduler(
            **betas, prediction_type="epsilon", steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False
        )
    else:  # SD 2.x's
        scheduler = DDIMScheduler(
            **betas, prediction_type=prediction_type, steps_offset=1, clip_sample=False, set_alpha_to_one=False
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_run(
    folder: Path, base: Path, objective: str = "diff2flow", prediction_type: str = "epsilon", seed: int = 0, **extra
) -> Path:
    """A run folder as ``d2f train`` writes it (the contract of ``d2f.pipeline.run_folder``): a random LoRA
    on ``base``'s UNet in diffusers format plus ``d2f_run.json``."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(base)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    with torch.no_grad():  # gaussian init leaves lora_B = 0 (a no-op); make it change the output
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    )
    run = dict(
        base_model=str(base),
        base_model_source=str(Path(base).resolve()),
        prediction_type=prediction_type,
        objective=objective,
        sampler="ddim" if objective == "diffusion" else "euler",
        resolution=32,
        **extra,
    )
    (folder / "d2f_run.json").write_text(json.dumps(run, indent=2))
    return folder


def builtin_prior(name: str) -> Path:
    """The built-in prior's folder, or skip (they are built by ``python -m d2f.world.build``)."""
    folder = ASSETS / name
    if not (folder / "model_index.json").is_file():
        pytest.skip(f"built-in prior {name} is not built in this checkout")
    return folder


def write_shapes_folder(
    folder: Path, num_images: int = 16, domain: str = "target", seed: int = 3, resolution: int = 32
) -> Path:
    """An imagefolder (PNGs + metadata.jsonl) of ``num_images`` shapes-world images with their captions."""
    from d2f.world.shapes import make_dataset, write_imagefolder

    return write_imagefolder(make_dataset(num_images, domain, seed, resolution), folder)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
