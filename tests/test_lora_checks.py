"""A LoRA that is not whole is refused with one line before diffusers sees it (``d2f.pipeline.loading``).

diffusers loads a LoRA with layers missing without a word (a layer without its up weight is skipped, a
layer left out is simply not adapted): such a file samples as a weaker, different model. d2f refuses a layer
whose down (lora_A) or up (lora_B) weight is missing, and a LoRA that covers fewer layers than the peft config
saved in its own metadata targets.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from d2f.cli import app
from d2f.errors import UserError
from d2f.pipeline.loading import load_pipeline
from d2f.pipeline.lora_checks import check_pairs, recorded_targets


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_sd_eps):
    """A run folder whose LoRA (attention and convolutions) d2f saved, with its peft config in the metadata."""
    import json

    from diffusers import StableDiffusionPipeline

    from d2f.training.lora import add_lora, save_weights

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    torch.manual_seed(0)
    add_lora(pipe.unet, 4, 4, "attn+conv")
    folder = tmp_path_factory.mktemp("saved") / "run"
    save_weights(pipe.unet, folder, 4)
    record = {"base_model": str(tiny_sd_eps), "prediction_type": "epsilon", "objective": "diff2flow"}
    (folder / "d2f_run.json").write_text(json.dumps(record))
    return folder


def rewritten(run, tmp_path, keep):
    """A copy of ``run`` whose LoRA holds only the keys ``keep(sorted keys)`` returns (metadata kept)."""
    out = shutil.copytree(run, tmp_path / "run")
    lora = out / "pytorch_lora_weights.safetensors"
    with safe_open(str(lora), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    kept = set(keep(sorted(tensors)))
    save_file({k: v for k, v in tensors.items() if k in kept}, lora, metadata=metadata)
    return out


def layer(key: str) -> str:
    return key.rsplit(".lora", 1)[0]


def test_the_whole_lora_loads_and_its_targets_are_read(saved_run):
    pipe = load_pipeline(lora=saved_run)
    assert pipe.d2f_run is not None
    with safe_open(str(saved_run / "pytorch_lora_weights.safetensors"), "pt") as f:
        targets = recorded_targets(f.metadata())
    assert set(targets["unet"]) == {"to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "conv"}


@pytest.mark.parametrize(
    "keep, message",
    [
        (lambda keys: keys[: len(keys) // 2], "is incomplete"),  # the file's first half: one layer is cut
        (lambda keys: [k for k in keys if not k.endswith(("up.weight", "lora_B.weight"))], "is incomplete"),
        (lambda keys: [k for k in keys if not k.endswith(("down.weight", "lora_A.weight"))], "is incomplete"),
        (lambda keys: [k for k in keys if layer(k) in sorted({layer(x) for x in keys})[::2]], "its own config targets"),
        (lambda keys: [k for k in keys if ".attn" in k], "its own config targets"),  # the convolutions dropped
    ],
    ids=["first-half-of-the-keys", "no-ups", "no-downs", "every-other-layer", "attention-only"],
)
def test_an_incomplete_lora_is_refused_in_one_line(saved_run, tmp_path, keep, message):
    run = rewritten(saved_run, tmp_path, keep)
    with pytest.raises(UserError, match=message):
        load_pipeline(lora=run)
    result = CliRunner().invoke(app, ["sample", "--lora", str(run), "--prompt", "a red circle", "--steps", "1"])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_check_pairs_names_a_broken_layer(tmp_path):
    keys = {"unet.a.to_q.lora.down.weight": 0, "unet.a.to_q.lora.up.weight": 0, "unet.b.conv1.lora_A.weight": 0}
    with pytest.raises(UserError, match=r"1 of its 2 layers lack their down or up weight \(e.g. unet.b.conv1\)"):
        check_pairs(keys, tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="holds no LoRA layers"):
        check_pairs({"unet.conv_in.weight": 0}, tmp_path / "x.safetensors")
    assert set(check_pairs(dict(list(keys.items())[:2]), tmp_path / "x.safetensors")) == {("unet", "a.to_q")}
