"""``d2f.diff2flow_loss``, the drop-in for diffusers' ``examples/text_to_image/train_text_to_image_lora.py``.

``script_steps`` is a miniature of that script (huggingface/diffusers, commit 58eb52c): its setup and training step,
call for call and in the same order, on a built-in prior, with its add_noise + MSE block replaced by the drop-in
as docs/dropin-loss.md shows. Its two optimizer steps must equal ``d2f train``'s own training step
(``d2f.training.loop.train_step``) on the same batches (same latents, noise, t and text states): the losses and
the LoRA weights after each step.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import builtin_prior, write_shapes_folder

import d2f
from d2f import dropin
from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.parametrizations import Diff2FlowModel
from d2f.training import TrainConfig
from d2f.training.loop import train_step
from d2f.training.setup import setup

LR, RANK, BATCH, STEPS = 1e-4, 4, 4, 2  # the script's --learning_rate and --rank defaults; a short run


def to_tensor(image) -> torch.Tensor:
    """torchvision's ``ToTensor`` (not installed here): (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def t_generator(step: int) -> torch.Generator:
    """Where step k draws its FM time (the script would use the global RNG; a generator lets d2f draw the same)."""
    return torch.Generator().manual_seed(1000 + step)


def script_steps(prior, data_dir) -> tuple[dict, list[dict]]:
    """The script's LoRA finetune for ``STEPS`` steps; returns the initial LoRA weights and, per step, the batch
    the loss saw, the loss and the LoRA weights after the step."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no", cpu=True)
    set_seed(0)
    noise_scheduler = DDPMScheduler.from_pretrained(prior, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(prior, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(prior, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(prior, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(prior, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    weight_dtype = torch.float32
    unet_lora_config = LoraConfig(
        r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
    )
    unet.to(accelerator.device, dtype=weight_dtype)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config)
    # the script keeps `filter(...)`, which the optimizer consumes, so its clip_grad_norm_ sees no parameters; a list
    # clips (docs/dropin-loss.md), as d2f does
    lora_layers = list(filter(lambda p: p.requires_grad, unet.parameters()))
    initial = {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(lora_layers, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)

    dataset = load_dataset("imagefolder", data_files={"train": os.path.join(data_dir, "**")})

    def preprocess_train(examples):  # Resize, CenterCrop (no-ops at the data's 32 px), ToTensor, Normalize(0.5, 0.5)
        images = [image.convert("RGB") for image in examples["image"]]
        examples["pixel_values"] = [(to_tensor(image) - 0.5) / 0.5 for image in images]
        examples["input_ids"] = tokenizer(
            examples["text"], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        return examples

    train_dataset = dataset["train"].with_transform(preprocess_train)

    def collate_fn(examples):
        pixel_values = torch.stack([example["pixel_values"] for example in examples]).float()
        return {"pixel_values": pixel_values, "input_ids": torch.stack([example["input_ids"] for example in examples])}

    train_dataloader = torch.utils.data.DataLoader(train_dataset, shuffle=True, collate_fn=collate_fn, batch_size=BATCH)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=STEPS)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )

    records = []
    unet.train()
    for step, batch in enumerate(train_dataloader):
        with accelerator.accumulate(unet):
            latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
            # -- the drop-in, in place of: timesteps, add_noise, the target, the UNet call and the MSE
            loss = d2f.diff2flow_loss(
                noise_scheduler,
                lambda z, tau: unet(z.to(weight_dtype), tau, encoder_hidden_states, return_dict=False)[0],  # noqa: B023
                latents,
                noise,
                generator=t_generator(step),
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_layers, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        records.append(
            {
                "batch": (latents.detach(), noise, encoder_hidden_states.detach()),
                "loss": loss.item(),
                "weights": {n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad},
            }
        )
        if step + 1 == STEPS:
            break
    return initial, records


class SameBatches:
    """``run.batches`` for ``train_step``: the script's batch of step k, with the FM time drawn as d2f's batches draw
    it (``flow.sample_time``) from the generator the drop-in used."""

    def __init__(self, records, flow):
        self.records, self.flow = records, flow

    def get(self, micro_step, rank=0, world=1):
        latents, noise, states = self.records[micro_step]["batch"]
        return latents, noise, self.flow.sample_time(len(latents), "uniform", t_generator(micro_step)), states


@pytest.mark.parametrize("prior_name", ["tiny-shapes-eps", "tiny-shapes-v"])
def test_the_scripts_step_with_the_dropin_is_d2f_trains_step(tmp_path, prior_name):
    prior = builtin_prior(prior_name)
    data_dir = write_shapes_folder(tmp_path / "data", num_images=8)
    initial, records = script_steps(prior, data_dir)

    cfg = TrainConfig(
        model=str(prior), data=str(data_dir), output=str(tmp_path / "d2f"), steps=STEPS, batch_size=BATCH,
        lora_rank=RANK, lora_alpha=RANK, lora_targets="attn", lr=LR, lr_scheduler="constant", warmup_steps=0,
        weight_decay=1e-2, max_grad_norm=1.0, caption_dropout=0.0, cpu=True, validate_every=0, checkpoint_every=0,
    )  # fmt: skip
    run, start = setup(cfg)
    with run.lock:
        assert start == 0 and set(run.trainable) == set(initial)  # the same LoRA layers
        with torch.no_grad():  # the script's initial LoRA (peft's gaussian init) instead of d2f's own
            for name, p in run.trainable.items():
                p.copy_(initial[name])
        run.batches = SameBatches(records, run.parametrization)
        for step, record in enumerate(records):
            per_sample, _ = train_step(run, step)
            run.lr_scheduler.step()
            assert per_sample.mean().item() == pytest.approx(record["loss"], rel=1e-6)
            for name, p in run.trainable.items():
                torch.testing.assert_close(p.detach(), record["weights"][name], rtol=1e-5, atol=1e-7)
    moved = sum(float((records[-1]["weights"][n] - initial[n]).abs().max()) for n in initial)
    assert moved > 0  # two steps changed the LoRA, so the comparison above is not of untouched weights


class ToyNet:
    """o = 0.5 z + 1e-3 tau: depends on both inputs; remembers the timestep it saw."""

    def __call__(self, z, tau):
        self.tau = tau
        return 0.5 * z + 1e-3 * tau.reshape(-1, 1, 1, 1)


def sd_config(**changes) -> dict:
    return {
        **dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000),
        **changes,
    }


def test_it_draws_t_as_diff2flow_and_is_diff2flows_loss():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**sd_config())
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    model = Diff2FlowModel(Schedule.from_config(sd_config()))
    net = ToyNet()
    t = model.sample_time(6, "logit-normal", torch.Generator().manual_seed(5))
    expected = model.loss(lambda z, tau, cond: ToyNet()(z, tau), x1, x0, t, None).loss
    drawn = d2f.diff2flow_loss(
        scheduler, net, x1, x0, t_sampling="logit-normal", generator=torch.Generator().manual_seed(5)
    )
    assert drawn.item() == expected.item()
    assert net.tau.dtype == torch.float32 and not torch.equal(net.tau, net.tau.round())  # fractional timesteps
    # t = 0 and t = 1 lie outside the covered range: the bridge clamps (tau = N-1 and 0), the loss stays finite
    ends = d2f.diff2flow_loss(scheduler, net, x1[:2], x0[:2], torch.tensor([0.0, 1.0]))
    assert torch.isfinite(ends) and net.tau.tolist() == pytest.approx([999.0, 0.0])


def test_it_reads_the_schedulers_prediction_type_at_each_call():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(**sd_config())
    scheduler.register_to_config(prediction_type="v_prediction")  # what the script's --prediction_type does
    x1, x0, t = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([0.3, 0.8])
    v_model = Diff2FlowModel(Schedule.from_config(sd_config()), "v_prediction")
    expected = v_model.loss(lambda z, tau, cond: ToyNet()(z, tau), x1, x0, t, None).loss
    assert d2f.diff2flow_loss(scheduler, ToyNet(), x1, x0, t).item() == expected.item()
    assert d2f.diff2flow_loss(dict(scheduler.config), ToyNet(), x1, x0, t).item() == expected.item()  # a config too


def test_what_the_bridge_cannot_do_is_one_clear_error():
    zero_snr_eps = sd_config(rescale_betas_zero_snr=True, prediction_type="epsilon")
    with pytest.raises(UserError, match="zero-terminal-SNR"):
        d2f.diff2flow_loss(zero_snr_eps, ToyNet(), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_it_is_d2fs_public_api():
    assert d2f.diff2flow_loss is dropin.diff2flow_loss and "diff2flow_loss" in d2f.__all__
