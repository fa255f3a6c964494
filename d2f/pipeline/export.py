"""Export a d2f LoRA for other tools: the kohya / AUTOMATIC1111 key format.

d2f saves LoRAs in diffusers' format (``unet.<module>.lora.down.weight``), which ``pipe.load_lora_weights``
reads. kohya's sd-scripts, AUTOMATIC1111, ComfyUI and InvokeAI read the kohya format instead:
``lora_unet_<module with _>.lora_down.weight`` / ``.lora_up.weight`` plus one ``.alpha`` scalar per layer. The
conversion is diffusers' own ``convert_state_dict_to_kohya`` (from PEFT's ``lora_A`` / ``lora_B`` names); d2f
adds the run's real alpha (diffusers' converter writes alpha = rank, i.e. scale 1, which is wrong for a LoRA
trained with another ``--lora-alpha``): a kohya loader scales each layer by alpha / rank. A text-encoder LoRA
becomes kohya's ``lora_te_<module>`` layers, the SD 1.x/2.x name (one text encoder). The kohya format has no
token-embedding layers, so a ``--train-text-encoder`` run (which changes the token embedding too) is refused:
dropping that part would export another model than the one trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from d2f.errors import UserError
from d2f.files import shareable
from d2f.pipeline.run_folder import resolve_lora

FORMATS = ("kohya",)
# diffusers' LoRA names -> PEFT's, which diffusers' kohya converter takes (diffusers already writes convolution
# layers with PEFT's names)
TO_PEFT = {
    ".lora.down.weight": ".lora_A.weight",
    ".lora.up.weight": ".lora_B.weight",
    ".lora_A.weight": ".lora_A.weight",
    ".lora_B.weight": ".lora_B.weight",
    ".lora_linear_layer.down.weight": ".lora_A.weight",  # the text encoder's
    ".lora_linear_layer.up.weight": ".lora_B.weight",
}


def lora_alpha(metadata: dict, run: dict | None, rank: int) -> float:
    """The LoRA's alpha: from the adapter metadata diffusers saves beside the weights, else from the run
    record, else the rank (scale alpha / rank = 1, peft's default when alpha is not given)."""
    adapter = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    if "unet.lora_alpha" in adapter:
        return float(adapter["unet.lora_alpha"])
    if run and isinstance(run.get("lora"), dict) and run["lora"].get("alpha"):
        return float(run["lora"]["alpha"])
    return float(rank)


def to_kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA state dict (UNet, and text encoder if any) in kohya's format, with ``.alpha`` =
    ``alpha`` for every layer (d2f gives both adapters the same rank and alpha)."""
    from diffusers.utils import convert_state_dict_to_kohya

    if any("lora_embedding" in key for key in state):
        raise UserError(
            "this LoRA changes the text encoder's token embedding (d2f train --train-text-encoder), which the kohya "
            "format cannot hold; use the diffusers file itself (pipe.load_lora_weights loads it)"
        )
    peft = {}
    for key, value in state.items():
        suffix = next((s for s in TO_PEFT if key.endswith(s)), None)
        if suffix is None or not key.startswith(("unet.", "text_encoder.")):
            raise UserError(f"unexpected LoRA key {key!r}: d2f exports its own LoRAs, in diffusers' format")
        peft[key[: -len(suffix)] + TO_PEFT[suffix]] = value
    kohya = convert_state_dict_to_kohya(peft)
    # diffusers names the text encoder te1 (SDXL's first of two); SD 1.x/2.x LoRAs call their one encoder te
    kohya = {k.replace("lora_te1_", "lora_te_", 1): v for k, v in kohya.items()}
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in kohya.items()}


def export_lora(lora: str | Path, output: str | Path | None = None, fmt: str = "kohya") -> Path:
    """Write the LoRA of ``lora`` (a run folder or a LoRA file) in format ``fmt``; returns the file written
    (default: ``<run>/pytorch_lora_weights_kohya.safetensors``, or beside the file)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    weights, run = resolve_lora(lora)
    if weights.is_dir():
        raise UserError(f"{lora} is a full finetune (a whole UNet), not a LoRA: there is no LoRA to export")
    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}
    ranks = {v.shape[0] for k, v in state.items() if k.endswith((".lora.down.weight", ".lora_A.weight"))}
    if len(ranks) != 1:
        raise UserError(f"{weights} has layers of several ranks {sorted(ranks)}; the kohya export needs one rank")
    rank = ranks.pop()
    alpha = lora_alpha(metadata, run, rank)
    output = Path(output) if output else weights.with_name(weights.stem + f"_{fmt}.safetensors")
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        to_kohya(state, alpha),
        output,
        metadata={"format": "pt", "ss_network_dim": str(rank), "ss_network_alpha": f"{alpha:g}"},
    )
    shareable(output)
    return output
