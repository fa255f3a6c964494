"""Plain helpers of the tests (fixtures live in ``conftest.py``).

- ``build_tiny_sd``: a complete, tiny, random SD-format diffusers folder, built offline in well under a second
- ``write_run``: a run folder as ``d2f train`` writes it, with a random non-zero LoRA
- ``builtin_prior``: a shipped prior's folder (or skip)
- ``write_shapes_folder``, ``read_jsonl``: small imagefolders of the shapes world; metrics files
- ``pair_settings``, ``REFLOW_CAPTIONS``, ``REFLOW_FAST``: small ``d2f reflow`` pairs specs and run options
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

    from d2f.world.build.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    tokenizer = load_tokenizer()
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


# --- a diffusers pipeline as one single-file checkpoint in the original (LDM / CompVis) layout ---------------
# The inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
# ``convert_ldm_clip_checkpoint`` for SD 1.x-style pipelines, driven by the component configs (levels, layers per
# block, which up blocks have attention). Every diffusers key must map: an unknown one raises.
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1"}
UNET_RESNET |= {"norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config) -> dict[str, tuple[str, dict]]:
    """{diffusers module prefix: (LDM prefix, renames inside it)} for a ``UNet2DConditionModel`` config."""
    per_level, levels = config.layers_per_block + 1, len(config.block_out_channels)
    out = {
        "time_embedding.linear_1": ("time_embed.0", {}),
        "time_embedding.linear_2": ("time_embed.2", {}),
        "conv_in": ("input_blocks.0.0", {}),
        "conv_norm_out": ("out.0", {}),
        "conv_out": ("out.2", {}),
        "mid_block.resnets.0": ("middle_block.0", UNET_RESNET),
        "mid_block.attentions.0": ("middle_block.1", {}),
        "mid_block.resnets.1": ("middle_block.2", UNET_RESNET),
    }
    for i in range(levels):
        for j in range(config.layers_per_block):
            out[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{1 + i * per_level + j}.0", UNET_RESNET)
            out[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{1 + i * per_level + j}.1", {})
        out[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{(i + 1) * per_level}.0.op", {})
        for j in range(per_level):
            out[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{i * per_level + j}.0", UNET_RESNET)
            out[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{i * per_level + j}.1", {})
        last = f"output_blocks.{i * per_level + per_level - 1}"  # the upsampler follows the attention, if any
        out[f"up_blocks.{i}.upsamplers.0.conv"] = (
            f"{last}.{2 if 'CrossAttn' in config.up_block_types[i] else 1}.conv",
            {},
        )
    return out


def _vae_prefixes(config) -> dict[str, tuple[str, dict]]:
    """The same for an ``AutoencoderKL`` config: decoder levels are numbered in reverse in LDM."""
    levels, out = len(config.block_out_channels), {}
    for part in ("encoder", "decoder"):
        out[f"{part}.conv_in"] = (f"{part}.conv_in", {})
        out[f"{part}.conv_out"] = (f"{part}.conv_out", {})
        out[f"{part}.conv_norm_out"] = (f"{part}.norm_out", {})
        out[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", VAE_RESNET)
        out[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", VAE_RESNET)
        out[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", VAE_ATTENTION)
    for i in range(levels):
        for j in range(config.layers_per_block):
            out[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", VAE_RESNET)
        out[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", {})
        for j in range(config.layers_per_block + 1):
            out[f"decoder.up_blocks.{i}.resnets.{j}"] = (
                f"decoder.up.{levels - 1 - i}.block.{j}",
                VAE_RESNET,
            )
        out[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{levels - 1 - i}.upsample.conv", {})
    out["quant_conv"] = ("quant_conv", {})
    out["post_quant_conv"] = ("post_quant_conv", {})
    return out


def _to_ldm(state: dict, prefixes: dict[str, tuple[str, dict]], root: str) -> dict:
    out = {}
    for key, value in state.items():
        module = max((p for p in prefixes if key.startswith(p + ".")), key=len, default=None)
        if module is None:
            raise KeyError(f"no LDM name for {key}")
        ldm, renames = prefixes[module]
        rest = key[len(module) + 1 :]
        for old, new in renames.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        if renames is VAE_ATTENTION and rest.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention projections are 1x1 convolutions
        out[f"{root}{ldm}.{rest}"] = value
    return out


def pipeline_to_single_file(pipe, path: Path) -> Path:
    """Write ``pipe`` (an SD 1.x-style ``StableDiffusionPipeline``) as one .safetensors file in the LDM key layout
    that AUTOMATIC1111 / ComfyUI checkpoints have and ``from_single_file`` reads."""
    from safetensors.torch import save_file

    state = _to_ldm(pipe.unet.state_dict(), _unet_prefixes(pipe.unet.config), "model.diffusion_model.")
    state |= _to_ldm(pipe.vae.state_dict(), _vae_prefixes(pipe.vae.config), "first_stage_model.")
    text = pipe.text_encoder.state_dict()
    wrapped = hasattr(pipe.text_encoder, "text_model")  # transformers >= 5.6 flattened CLIPTextModel
    state |= {f"cond_stage_model.transformer.{'' if wrapped else 'text_model.'}{k}": v for k, v in text.items()}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))
    return path


REFLOW_CAPTIONS = ["a red circle", "a blue square", "a green triangle"]
REFLOW_FAST = dict(batch_size=2, warmup_steps=0, validate_every=0, checkpoint_every=0, log_every=1, eval_samples=0)


def pair_settings(**overrides):
    """A ``d2f reflow`` teacher-pairs spec on the tiny model, small enough for the fast tier."""
    from d2f.reflow.pairs import PairSettings

    base = dict(
        teacher_model="tiny",
        teacher_weights=None,
        teacher_fingerprint=None,
        objective="diffusion",
        sampler="ddim",
        steps=2,
        guidance=2.0,
        num_pairs=5,
        seed=7,
        height=32,
        width=32,
        captions=REFLOW_CAPTIONS,
        shard_size=2,
    )
    return PairSettings(**{**base, **overrides})
