"""``d2f train --train-conv-io`` (issue #24, the paper's LoRA recipe): conv_in and conv_out trained fully beside the
LoRA, saved in a file of their own (``load_lora_weights`` takes LoRA layers only), loaded by ``load_pipeline``
and, in plain diffusers, by ``load_state_dict``; the EMA and checkpoints carry them; what cannot hold them says so."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from d2f.errors import UserError
from d2f.pipeline.run_folder import CONV_IO_FILE, LORA_FILE
from d2f.training import TrainConfig, train
from d2f.training.config import check_config

FAST = dict(batch_size=4, sample_steps=2, validate_every=0, warmup_steps=0, lr=1e-2, lora_rank=4, log_every=1)


def test_conv_io_is_trained_saved_and_loaded_with_d2f_and_plain_diffusers(tmp_path, tiny_sd_eps, shapes_folder):
    from diffusers import StableDiffusionPipeline

    from d2f.pipeline.export import export_lora
    from d2f.pipeline.generate import sample_latents
    from d2f.pipeline.loading import load_pipeline

    out = tmp_path / "run"
    cfg = TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(out), steps=3, checkpoint_every=3,
                      train_conv_io=True, lr_scheduler="constant", weight_decay=0.0, ema=True, **FAST)  # fmt: skip
    train(cfg)
    io = load_file(out / CONV_IO_FILE)
    assert sorted(io) == ["conv_in.bias", "conv_in.weight", "conv_out.bias", "conv_out.weight"]
    base = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    assert not torch.equal(io["conv_in.weight"], base.unet.conv_in.weight)  # trained (the EMA's, after 3 steps)
    assert all(k.startswith("unet.") and "lora" in k for k in load_file(out / LORA_FILE))  # a pure LoRA file
    assert (out / "checkpoints" / "step_00003" / CONV_IO_FILE).is_file()
    trainable = load_file(out / "checkpoints" / "step_00003" / "trainable.safetensors")
    assert {"conv_in.weight", "conv_out.bias"} <= set(trainable)  # resumed with the rest

    pipe = load_pipeline(lora=str(out))
    torch.testing.assert_close(pipe.unet.conv_out.weight.detach(), io["conv_out.weight"], rtol=0, atol=0)
    mine = sample_latents(pipe, ["a red circle"], steps=2, guidance=1.0, seed=0)
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    plain.load_lora_weights(out)  # the LoRA file loads as it is
    plain.unet.load_state_dict(load_file(out / CONV_IO_FILE), strict=False)  # the documented extra step
    plain.scheduler = pipe.scheduler
    gen = [torch.Generator().manual_seed(0)]
    theirs = plain(["a red circle"], num_inference_steps=2, guidance_scale=1.0, generator=gen, output_type="latent")
    torch.testing.assert_close(mine, theirs.images, rtol=1e-5, atol=1e-5 * float(theirs.images.abs().max()))
    bare = load_pipeline(str(tiny_sd_eps), lora=str(out / LORA_FILE))  # the LoRA file given, not the run
    torch.testing.assert_close(bare.unet.conv_in.weight.detach(), io["conv_in.weight"], rtol=0, atol=0)

    with pytest.raises(UserError, match="kohya LoRA format cannot hold"):
        export_lora(out, tmp_path / "k.safetensors")
    (out / CONV_IO_FILE).write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read .*unet_conv_io"):
        load_pipeline(lora=str(out))


def test_conv_io_needs_a_lora_run_and_a_reflow_cannot_start_from_it(tmp_path, tiny_sd_eps, shapes_folder):
    from d2f.reflow import ReflowConfig, reflow

    with pytest.raises(UserError, match="full finetune trains them already"):
        check_config(TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), lora_rank=0, train_conv_io=True))
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(out), steps=1, train_conv_io=True,
                      checkpoint_every=0, **FAST))  # fmt: skip
    with pytest.raises(UserError, match="trained with --train-conv-io"):
        reflow(
            ReflowConfig(lora=str(out), data=str(shapes_folder), num_pairs=2, pair_steps=2, output=str(tmp_path / "s"))
        )
