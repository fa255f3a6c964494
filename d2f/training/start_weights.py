"""Trained weights that do not start at the base model: ``--init-weights`` (reflow's student starts as its teacher).

- a ``unet/`` folder (a full-finetune run): copied into the UNet, which is then finetuned whole (rank 0);
- a LoRA file in diffusers' format (a LoRA run): loaded into the new adapter, which must have the same rank,
  alpha and targets, so that the run's saved LoRA is again the whole change from the base model and
  ``d2f sample --lora RUN`` loads it on the base model as for any run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.training.lora import ATTN_TARGETS


def lora_file_settings(path: str | Path) -> dict:
    """{"rank", "alpha", "targets"} of a diffusers-format LoRA file: the rank from the weights' shapes, alpha
    from its peft metadata (else the rank, as diffusers assumes), targets ``attn`` unless convolutions have one."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        downs = [k for k in keys if k.endswith((".lora.down.weight", ".lora_A.weight"))]
        if not downs:
            raise UserError(f"{path} holds no LoRA layers; is it a LoRA of `d2f train`?")
        rank = int(f.get_slice(downs[0]).get_shape()[0])
        metadata = f.metadata() or {}
    alpha = rank
    for value in metadata.values():
        try:
            alpha = json.loads(value).get("lora_alpha", alpha)
        except (ValueError, AttributeError):
            continue
    attn = all(any(f".{t}.lora" in k for t in ATTN_TARGETS) for k in downs)
    return {"rank": rank, "alpha": float(alpha), "targets": "attn" if attn else "attn+conv"}


def load_start_weights(unet, path: str | Path, rank: int) -> None:
    """Set the UNet's trainable weights (after ``add_lora``) to those in ``path`` (see the module doc)."""
    path = Path(path)
    if path.is_dir():
        if rank:
            raise UserError(f"{path} is a full finetune: a student of it is one too; pass --lora-rank 0")
        from diffusers import UNet2DConditionModel

        state = UNet2DConditionModel.from_pretrained(path, use_safetensors=True).state_dict()
        with torch.no_grad():
            unet.load_state_dict(state)  # copies in place: the optimizer's parameters stay the same objects
        return
    if rank == 0:
        raise UserError(f"{path} is a LoRA: a student of it is a LoRA of the same rank; drop --lora-rank 0")
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(path)
    if any(k.startswith("text_encoder.") for k in saved):
        raise UserError(
            f"the LoRA {path} also changes the text encoder (a --train-text-encoder run); a student trains the "
            "UNet only, so it cannot start from it: reflow a run trained with --no-train-text-encoder"
        )
    state = {k.removeprefix("unet."): v for k, v in saved.items() if k.startswith("unet.")}
    config = unet.peft_config["default"]
    found = lora_file_settings(path)
    if (found["rank"], found["alpha"]) != (config.r, float(config.lora_alpha)):
        raise UserError(
            f"the LoRA {path} has rank {found['rank']} and alpha {found['alpha']:g}, this run's adapter "
            f"{config.r} and {config.lora_alpha:g}: pass --lora-rank {found['rank']} --lora-alpha {found['alpha']:g}"
        )
    try:
        result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    except RuntimeError:
        result = None
    if result is None or result.unexpected_keys:
        raise UserError(
            f"the LoRA {path} does not fit this run's adapter (--lora-targets {found['targets']}, the same base model)"
        )
