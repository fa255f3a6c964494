"""What the finetune trains: a LoRA on the UNet (peft, through diffusers), or the whole UNet.

LoRA (Hu et al. 2021) freezes a weight W and learns a low-rank update for it:

    W' = W + (lora_alpha / r) * B @ A,      A: (r, in),  B: (out, r),  B = 0 at the start

so the adapted model starts exactly at the pretrained one. For a convolution, A is a convolution with
r output channels and the original kernel size, B a 1x1 convolution (peft's ``Conv2d`` LoRA layer).

Targets (``--lora-targets``):

- ``attn``: the attention projections ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (self- and
  cross-attention): diffusers' text-to-image LoRA default;
- ``attn+conv``: also every convolution of the ResNet blocks (``conv1``, ``conv2``, ``conv_shortcut``) and
  of the down/upsamplers (``conv``), closer to the paper's setup; a domain shift in colour and texture
  lives largely in those.

``rank = 0`` means no adapter: the whole UNet is trained (a full finetune).

``--train-conv-io`` also trains the UNet's first and last convolutions (``conv_in``: latents to features,
``conv_out``: features to the prediction) fully, beside the LoRA, as the Diff2Flow paper's LoRA finetunes do:
they are small and map straight to and from the latent space. ``load_lora_weights`` reads LoRA layers only
(it refuses any other key), so they are saved in a file of their own, ``unet_conv_io.safetensors`` (diffusers'
names, ``conv_in.weight``, ...), which ``d2f.pipeline.load_pipeline`` loads after the LoRA; in plain diffusers,
``pipe.unet.load_state_dict(safetensors.torch.load_file(path), strict=False)``.

``--train-text-encoder`` adds a second LoRA, of the same rank and alpha, on the text encoder's attention
projections (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``: diffusers' ``--train_text_encoder`` in its
DreamBooth LoRA script) and on its token embedding (peft's ``Embedding`` LoRA: a low-rank change of the rows,
as textual inversion learns new words). The UNet only learns what the captions' states tell apart: a text
encoder whose words for the data were never trained ("a digit 3" vs "a digit 7" for the built-in priors) keeps
those words at their random initial embeddings, and its attention has learnt to pass them on only faintly.

Saving uses diffusers' own format, so a plain ``StableDiffusionPipeline.load_lora_weights(folder)`` loads
the result (``pytorch_lora_weights.safetensors``, with the peft config in the safetensors metadata so that
``lora_alpha`` and the targets survive the round trip; the text encoder's layers under ``text_encoder.``, which
``load_lora_weights`` puts into ``pipe.text_encoder``); a full finetune saves the UNet as a diffusers
model folder (``unet/``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.files import make_folder, shareable, write_errors
from d2f.pipeline.run_folder import CONV_IO_FILE, CONV_IO_LAYERS, LORA_FILE, UNET_DIR

ATTN_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "conv"]
TARGETS = {"attn": ATTN_TARGETS, "attn+conv": ATTN_TARGETS + CONV_TARGETS}
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "token_embedding"]  # CLIP's attention, its words
TEXT_PREFIX = "text_encoder."  # the text encoder's names among a run's trainable weights (and in the LoRA file)


def check_lora_settings(rank: int, alpha: float | None, targets: str) -> None:
    if rank < 0:
        raise UserError(f"--lora-rank must be >= 0 (0 = full finetune of the UNet), got {rank}")
    if alpha is not None and alpha <= 0:
        raise UserError(f"--lora-alpha must be positive, got {alpha}")
    if targets not in TARGETS:
        raise UserError(f"unknown --lora-targets {targets!r}; use one of {', '.join(TARGETS)}")


def add_lora(
    unet, rank: int = 4, alpha: float | None = None, targets: str = "attn", conv_io: bool = False
) -> list[torch.nn.Parameter]:
    """Freeze the UNet and add a LoRA adapter (``rank`` > 0), or make the whole UNet trainable
    (``rank`` = 0). Returns the trainable parameters. ``alpha`` defaults to ``rank`` (scale 1); ``conv_io``
    makes ``conv_in`` and ``conv_out`` trainable too (module doc).

    Seed the global RNG before calling: peft initialises A randomly (Kaiming uniform)."""
    from peft import LoraConfig

    check_lora_settings(rank, alpha, targets)
    if rank == 0:
        unet.requires_grad_(True)
        return [p for p in unet.parameters()]
    unet.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=True, target_modules=TARGETS[targets]
    )
    unet.add_adapter(config)
    for name in CONV_IO_LAYERS if conv_io else ():
        getattr(unet, name).requires_grad_(True)
    return [p for p in unet.parameters() if p.requires_grad]


def conv_io_state(unet) -> dict[str, torch.Tensor]:
    """``conv_in`` and ``conv_out``'s weights and biases by their diffusers names, float32, contiguous."""
    return {
        f"{name}.{key}": value.detach().float().contiguous().cpu()
        for name in CONV_IO_LAYERS
        for key, value in getattr(unet, name).state_dict().items()
    }


def add_text_lora(text_encoder, rank: int, alpha: float | None = None) -> list[torch.nn.Parameter]:
    """Freeze the text encoder and add a LoRA (``rank`` > 0) to its attention projections and token embedding;
    returns the trainable parameters (the LoRA's). Seed the global RNG first, as for ``add_lora``."""
    from peft import LoraConfig

    text_encoder.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights=True, target_modules=TEXT_TARGETS
    )
    try:
        text_encoder.add_adapter(config)
    except ValueError as exc:  # transformers checks the peft version first (5.24 wants peft >= 0.22)
        raise UserError(f"cannot add a LoRA to the text encoder: {exc}; or install transformers<5.24") from None
    return [p for p in text_encoder.parameters() if p.requires_grad]


def trainable_state(unet, rank: int) -> dict[str, torch.Tensor]:
    """The trained weights in diffusers' format: the LoRA layers (``rank`` > 0), or the UNet's
    state dict (``rank`` = 0). Also for the text encoder's LoRA."""
    if rank == 0:
        return {k: v.detach() for k, v in unet.state_dict().items()}
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_weights(unet, folder: str | Path, rank: int, text_encoder=None, conv_io: bool = False) -> Path:
    """Save what was trained into ``folder``: ``pytorch_lora_weights.safetensors`` (LoRA, loadable with
    ``pipe.load_lora_weights(folder)``; with ``text_encoder``, its LoRA too; with ``conv_io``, the full
    ``conv_in`` and ``conv_out`` beside it) or ``unet/`` (full finetune, loadable with
    ``UNet2DConditionModel.from_pretrained(folder / "unet")``). Returns the path written.

    Beside a LoRA, the UNet's adapter in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``),
    so that ``peft.PeftModel.from_pretrained(unet, folder)`` loads it without diffusers."""
    folder = Path(folder)
    # each weights file is written through a temporary file and a rename by safetensors (0.8) itself
    with write_errors(
        folder / (LORA_FILE if rank else UNET_DIR),
        f"free space on {folder}'s disk and continue with d2f train --resume",
    ):
        make_folder(folder)
        if conv_io and rank:
            from safetensors.torch import save_file

            save_file(conv_io_state(unet), folder / CONV_IO_FILE)
            shareable(folder / CONV_IO_FILE)
        return _save_weights(unet, folder, rank, text_encoder)


def _save_weights(unet, folder: Path, rank: int, text_encoder) -> Path:
    if rank == 0:
        unet.save_pretrained(folder / UNET_DIR, safe_serialization=True)
        shareable(folder / UNET_DIR)
        return folder / UNET_DIR
    from diffusers import StableDiffusionPipeline

    text = {}
    if text_encoder is not None:
        text = {
            "text_encoder_lora_layers": trainable_state(text_encoder, rank),
            "text_encoder_lora_adapter_metadata": text_encoder.peft_config["default"].to_dict(),
        }
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=trainable_state(unet, rank),
        safe_serialization=True,
        weight_name=LORA_FILE,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        **text,
    )
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet.peft_config["default"].save_pretrained(folder)  # adapter_config.json
    # PeftModel wraps the UNet as base_model.model: its keys carry that prefix
    state = {f"base_model.model.{k}": v.detach().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    save_file(state, folder / "adapter_model.safetensors")
    shareable(folder / LORA_FILE, folder / "adapter_model.safetensors")
    return folder / LORA_FILE
