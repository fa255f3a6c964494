"""The components of the built-in priors: exactly SD's architectures (and SD's schedule), at a tiny size.

| component | what | shapes |
| --- | --- | --- |
| ``AutoencoderKL`` | (32, 64, 64), downsamples by 4 | image (B,3,32,32) in [-1,1] <-> latent (B,4,8,8) |
| ``CLIPTextModel`` | hidden 64, 2 layers, d2f's own BPE (``tokenizer.py``) | ids (B,77) -> states (B,77,64) |
| ``UNet2DConditionModel`` | (32,64,64), cross-attention 64 | (B,4,8,8), t, (B,77,64) -> (B,4,8,8) |
| scheduler | SD's betas: scaled_linear 0.00085-0.012, 1000 steps | |

``save_prior`` writes them as a complete ``StableDiffusionPipeline`` folder.
"""

from __future__ import annotations

from pathlib import Path

RESOLUTION = 32
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def make_scheduler(prediction_type: str):
    """SD's noise schedule with the public config of the SD version that used this prediction type:
    SD 1.5 (PNDM, epsilon) or SD 2.x (DDIM, v_prediction)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    if prediction_type == "epsilon":
        pndm = PNDMScheduler(
            **SD_BETAS, prediction_type="epsilon", steps_offset=1, skip_prk_steps=True, set_alpha_to_one=False
        )
        # SD 1.5's config carries clip_sample=false although PNDM ignores it: DDIMScheduler.from_config
        # reads it, and DDIM's default (clip x1_hat to [-1, 1]) would wreck unit-variance latents
        pndm.register_to_config(clip_sample=False)
        return pndm
    if prediction_type == "v_prediction":
        return DDIMScheduler(
            **SD_BETAS, prediction_type="v_prediction", steps_offset=1, clip_sample=False, set_alpha_to_one=False
        )
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected epsilon or v_prediction")


def make_vae():
    """AutoencoderKL: 3 blocks (2 downsamplings) -> 32 px images become 8x8x4 latents. Widths (32, 64, 64): at
    equal training time a wider VAE reconstructed worse than a narrow one that took more steps
    (``benchmarks/results/world_build.md``), so the budget goes into steps."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=RESOLUTION,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
    )


def make_text_encoder(tokenizer):
    """CLIPTextModel: hidden 64, 2 layers; vocabulary, positions (77) and special ids come from the tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def make_unet():
    """UNet2DConditionModel on 8x8x4 latents: 8 -> 4 -> 2, cross-attention in the two finer blocks
    (SD puts it everywhere but the coarsest block too)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )


# ----------------------------------------------------------------------------- data


def save_prior(folder: str | Path, vae, text_encoder, tokenizer, unet, prediction_type: str, merges=None) -> Path:
    """Save a complete SD folder (safetensors) that plain ``StableDiffusionPipeline.from_pretrained``
    loads; the tokenizer's vocab.json and merges.txt (``merges``, default the shipped ones) go into
    tokenizer/ as well (transformers 5 saves only tokenizer.json)."""
    from diffusers import StableDiffusionPipeline

    from d2f.world.build.tokenizer import read_merges, write_vocab_files

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_vocab_files(folder / "tokenizer", read_merges() if merges is None else merges)
    return folder
