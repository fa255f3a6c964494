"""``d2f train --train-text-encoder``: a LoRA on the text encoder beside the UNet's, trained in the same step,
saved in the same diffusers LoRA file (``text_encoder.`` keys), loaded by plain ``pipe.load_lora_weights``,
resumed bit-identically, exported to kohya's ``lora_te_`` layers."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from d2f.errors import UserError
from d2f.training import TrainConfig, train
from d2f.training.config import check_config
from d2f.training.lora import TEXT_PREFIX, add_text_lora

FAST = dict(batch_size=4, sample_steps=2, validate_every=0, warmup_steps=0, lr=1e-3, lora_rank=4, log_every=1)


def run(model, data, output, **overrides) -> dict:
    settings = {**FAST, "train_text_encoder": True, **overrides}
    return train(TrainConfig(model=str(model), data=str(data), output=str(output), **settings))


def text_states(text_encoder, tokenizer, captions=("a red circle", "a digit 7")) -> torch.Tensor:
    ids = tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        return text_encoder(ids.input_ids)[0]


def test_text_encoder_lora_is_trained_saved_and_loaded_by_diffusers(tmp_path, tiny_sd_eps, shapes_folder):
    from diffusers import StableDiffusionPipeline

    from d2f.pipeline.export import export_lora, to_kohya
    from d2f.pipeline.loading import load_pipeline
    from d2f.reflow.run import ReflowConfig, reflow
    from d2f.training.start_weights import load_start_weights

    out = tmp_path / "run"
    run(tiny_sd_eps, shapes_folder, out, steps=3, lora_alpha=8, checkpoint_every=3)
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    text_keys = [k for k in lora if k.startswith("text_encoder.")]
    # 2 layers x (q, k, v, out) x (down, up), and the token embedding's A and B
    assert len(text_keys) == 18 and any(k.startswith("unet.") for k in lora)

    # plain diffusers puts the file's text-encoder layers into pipe.text_encoder: its states are those of a
    # text encoder holding the step-3 checkpoint's weights, and no longer the base model's
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    base = text_states(pipe.text_encoder, pipe.tokenizer)
    pipe.load_lora_weights(out)
    loaded = text_states(pipe.text_encoder, pipe.tokenizer)
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd_eps).text_encoder
    add_text_lora(trained, 4, 8)
    state = load_file(out / "checkpoints" / "step_00003" / "trainable.safetensors")
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if p.requires_grad:
                p.copy_(state[TEXT_PREFIX + name])
    torch.testing.assert_close(loaded, text_states(trained, pipe.tokenizer), rtol=0, atol=1e-5)
    assert (loaded - base).abs().max() > 1e-4

    # d2f's own loader (its LoRA checks know the text encoder's layer names) gives the same text encoder
    ours = load_pipeline(lora=out)
    torch.testing.assert_close(text_states(ours.text_encoder, ours.tokenizer), loaded, rtol=0, atol=1e-6)

    # kohya has no token-embedding layers: the run is refused whole; its attention layers convert to one
    # lora_te_ layer (down, up, alpha) per adapted projection, with the run's alpha
    with pytest.raises(UserError, match="token embedding"):
        export_lora(out)
    kohya = to_kohya({k: v for k, v in lora.items() if "token_embedding" not in k}, 8.0)
    te = {k for k in kohya if k.startswith("lora_te_")}
    assert len(te) == 24 and not any(k.startswith("lora_te1_") for k in kohya)
    assert all(float(kohya[k]) == 8 for k in te if k.endswith(".alpha"))

    # reflow trains the UNet only: a student cannot start from this run (said before any pair is made)
    with pytest.raises(UserError, match="text encoder"):
        load_start_weights(ours.unet, out / "pytorch_lora_weights.safetensors", 4)
    with pytest.raises(UserError, match="--train-text-encoder"):
        reflow(ReflowConfig(lora=str(out), output=str(tmp_path / "student")))
    assert not (tmp_path / "student").exists()


def test_resume_with_text_encoder_reproduces_the_uninterrupted_run(tmp_path, tiny_sd_eps, shapes_folder):
    a, b = tmp_path / "a", tmp_path / "b"
    settings = dict(steps=4, checkpoint_every=2, ema=True, ema_decay=0.9, caption_dropout=0.5)
    settings.update(cpu=True)  # bit for bit on a CPU only: CUDA's kernels are not deterministic
    run(tiny_sd_eps, shapes_folder, a, **settings)
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00004")
    (b / "pytorch_lora_weights.safetensors").unlink()
    assert any(k.startswith(TEXT_PREFIX) for k in load_file(b / "checkpoints" / "step_00002" / "ema.safetensors"))
    run(tiny_sd_eps, shapes_folder, b, resume=True, **settings)
    wa, wb = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys() and any(k.startswith("text_encoder.") for k in wa)
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_cache_on_and_off_give_the_same_first_step(tmp_path, tiny_sd_eps, shapes_folder):
    """The text encoder cannot be cached when trained; the latents still are, and both paths agree."""
    settings = dict(steps=1, checkpoint_every=0, cpu=True)  # CPU: compared to 2e-5
    run(tiny_sd_eps, shapes_folder, tmp_path / "cached", cache=True, **settings)
    run(tiny_sd_eps, shapes_folder, tmp_path / "uncached", cache=False, **settings)
    wa = load_file(tmp_path / "cached" / "pytorch_lora_weights.safetensors")
    wb = load_file(tmp_path / "uncached" / "pytorch_lora_weights.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=2e-5)


def test_settings_that_cannot_train_the_text_encoder():
    from d2f.reflow.run import check_student

    with pytest.raises(UserError, match="needs a LoRA run"):
        check_config(TrainConfig(train_text_encoder=True, lora_rank=0))
    with pytest.raises(UserError, match="reflow trains the UNet only"):  # a reflow student (d2f.reflow)
        check_student(TrainConfig(train_text_encoder=True))


def test_the_step_encodes_each_distinct_caption_once_with_the_same_gradient(tiny_sd_eps):
    """``training_step`` runs the text encoder on the batch's distinct captions and gathers the rows: the loss and
    the text encoder LoRA's gradient equal encoding every row (float64, to rounding)."""
    from transformers import AutoTokenizer, CLIPTextModel

    from d2f.core.schedule import Schedule
    from d2f.parametrizations import Diff2FlowModel, unet_net
    from d2f.training.step import training_step

    tokenizer = AutoTokenizer.from_pretrained(tiny_sd_eps / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd_eps / "text_encoder").double()
    torch.manual_seed(0)
    params = add_text_lora(text_encoder, rank=4)
    for p in params:  # LoRA's B starts at zero: move it so the gradient reaches every LoRA weight
        p.data.normal_(0, 0.1)
    ids = tokenizer(["a red circle", "a digit 7", "a red circle", "", "a digit 7"], padding="max_length",
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    data, noise = (
        torch.randn(5, 4, 8, 8, generator=gen, dtype=torch.float64),
        torch.randn(5, 4, 8, 8, generator=gen, dtype=torch.float64),
    )
    t = torch.rand(5, generator=gen, dtype=torch.float64)
    # a stand-in UNet that reads the states: the point is the text encoder's gradient, not the UNet
    weight = torch.randn(text_encoder.config.hidden_size, 4, generator=gen, dtype=torch.float64)

    class Net(torch.nn.Module):
        config = type("Config", (), {"in_channels": 4})

        def forward(self, z, timestep, encoder_hidden_states, return_dict=False):
            return (z + (encoder_hidden_states.mean(1) @ weight)[:, :, None, None],)

    parametrization = Diff2FlowModel(Schedule.preset("sd15"), "epsilon")

    class Batches:
        def get(self, k, *_):
            return data, noise, t, ids

    class Keep:  # the step's "optimizer": keeps the gradient it is handed
        def step(self):
            self.grads = [p.grad.clone() for p in params]

        def zero_grad(self, set_to_none=True):
            for p in params:
                p.grad = None

    kept = Keep()
    training_step(parametrization, Net(), Batches(), kept, params, 0, max_grad_norm=0, text_encoder=text_encoder)
    parametrization.loss(unet_net(Net()), data, noise, t, text_encoder(ids)[0]).loss.backward()  # every row
    assert all(p.grad.abs().sum() > 0 for p in params)
    for a, b in zip(kept.grads, [p.grad for p in params]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
