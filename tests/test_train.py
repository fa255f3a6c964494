"""``d2f train`` end to end on a tiny random SD model: the run-folder contract, LoRA round trip through plain
diffusers, resume equivalence, caching, full finetune, NaN handling, bad input, and a 2-process CPU run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import read_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

from d2f.errors import UserError
from d2f.training import TrainConfig, train
from d2f.training.metrics import TIMING

FAST = dict(
    batch_size=4,
    sample_steps=2,
    validate_every=0,
    checkpoint_every=0,
    warmup_steps=0,
    lr=1e-3,
    lora_rank=4,
    log_every=1,
)


def run(model, data, output, **overrides) -> dict:
    return train(TrainConfig(model=str(model), data=str(data), output=str(output), **{**FAST, **overrides}))


def unet_outputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([10.0, 700.5]), encoder_hidden_states=cond).sample


def test_run_folder_contract_and_lora_round_trip(tmp_path, tiny_sd_eps, shapes_folder):
    from diffusers import StableDiffusionPipeline

    from d2f.training.lora import add_lora

    out = tmp_path / "run"
    summary = run(
        tiny_sd_eps,
        shapes_folder,
        out,
        steps=3,
        lora_alpha=8,
        lora_targets="attn+conv",
        checkpoint_every=3,
        validate_every=2,
    )
    assert summary["output_dir"] == str(out) and summary["steps"] == 3 and summary["final_loss"] > 0
    assert Path(summary["lora_path"]) == out / "pytorch_lora_weights.safetensors"
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["base_model"] == str(tiny_sd_eps) and record["prediction_type"] == "epsilon"
    assert record["base_model_source"] == str(Path(tiny_sd_eps).resolve())
    assert (record["objective"], record["sampler"], record["resolution"]) == ("diff2flow", "euler", 32)
    assert record["time_convention"] == "t=0 noise, t=1 data" and record["status"] == "finished"
    assert record["settings"]["lora_alpha"] == 8 and record["seed"] == 0 and "torch" in record["versions"]
    assert record["schedule"]["num_train_timesteps"] == 1000 and 0.06 < record["schedule"]["t_min"] < 0.07
    lines = read_jsonl(out / "metrics.jsonl")
    train_lines = [l for l in lines if l["kind"] == "train"]
    assert [l["step"] for l in train_lines] == [1, 2, 3]
    assert all(len(l["loss_t_bins"]) == 10 and l["lr"] > 0 and l["seconds"] >= 0 for l in train_lines)
    assert [l["step"] for l in lines if l["kind"] == "validation"] == [0, 2, 3]
    assert all((out / l["grid"]).is_file() for l in lines if l["kind"] == "validation")
    # every weights file is as readable as the JSON beside it (safetensors alone would leave them 0600)
    mode = (out / "d2f_run.json").stat().st_mode & 0o777
    assert {f.relative_to(out).as_posix(): f.stat().st_mode & 0o777 for f in out.rglob("*.safetensors")} == {
        f.relative_to(out).as_posix(): mode for f in out.rglob("*.safetensors")
    } and len(list(out.rglob("*.safetensors"))) >= 6

    # plain diffusers loads the LoRA and reproduces the trained weights (kept in the step-3 checkpoint)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    base = unet_outputs(pipe.unet)
    pipe.load_lora_weights(out)
    loaded = unet_outputs(pipe.unet)
    trained = StableDiffusionPipeline.from_pretrained(tiny_sd_eps).unet
    add_lora(trained, 4, 8, "attn+conv")
    state = load_file(out / "checkpoints" / "step_00003" / "trainable.safetensors")
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if p.requires_grad:
                p.copy_(state[name])
    torch.testing.assert_close(loaded, unet_outputs(trained), rtol=0, atol=1e-6)
    assert (loaded - base).abs().max() > 1e-4  # the finetune changed the model


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_sd_eps, shapes_folder):
    """Run 4 steps (EMA, grad-accum 2, checkpoints at 2 and 4); 'kill' a copy after step 2 (drop its later
    checkpoint and its weights, leave a half-written checkpoint folder behind); --resume ends bit-identical."""
    a, b = tmp_path / "a", tmp_path / "b"
    settings = dict(steps=4, checkpoint_every=2, ema=True, ema_decay=0.9, grad_accum=2, random_flip=True, log_every=3)
    settings.update(cpu=True)  # bit for bit on a CPU only: CUDA's kernels are not deterministic
    run(tiny_sd_eps, shapes_folder, a, **settings)
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_00004")
    (b / "pytorch_lora_weights.safetensors").unlink()
    half = b / "checkpoints" / ".tmp-step_00004-999"
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"half written")
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == ["step_00002", "step_00004"]
    ckpt = b / "checkpoints" / "step_00002"
    assert {"trainable.safetensors", "optimizer.safetensors", "ema.safetensors", "rng.safetensors", "state.json"} <= {
        p.name for p in ckpt.iterdir()
    }

    run(tiny_sd_eps, shapes_folder, b, resume=True, **settings)
    wa, wb = load_file(a / "pytorch_lora_weights.safetensors"), load_file(b / "pytorch_lora_weights.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    # the train line of step 3 averages steps 1-3 across the resume: the checkpoint carried steps 1-2
    untimed = lambda folder: [
        {k: v for k, v in l.items() if k not in TIMING} for l in read_jsonl(folder / "metrics.jsonl")
    ]
    assert untimed(a) == untimed(b) and [l["step"] for l in untimed(b) if l["kind"] == "train"] == [3, 4]
    assert not half.exists()  # the leftover of the "killed" write is gone


def test_cache_on_and_off_give_the_same_first_step(tmp_path, tiny_sd_eps, shapes_folder):
    settings = dict(steps=1, caption_dropout=0.5, random_flip=True, cpu=True)  # CPU: compared to 1e-5
    run(tiny_sd_eps, shapes_folder, tmp_path / "cached", cache=True, **settings)
    run(tiny_sd_eps, shapes_folder, tmp_path / "uncached", cache=False, **settings)
    la, lb = (read_jsonl(tmp_path / name / "metrics.jsonl")[1]["loss"] for name in ("cached", "uncached"))
    assert la == pytest.approx(lb, rel=1e-5)
    wa = load_file(tmp_path / "cached" / "pytorch_lora_weights.safetensors")
    wb = load_file(tmp_path / "uncached" / "pytorch_lora_weights.safetensors")
    for key in wa:
        # one AdamW step moves each weight by about lr = 1e-3 (the sign of its gradient); float noise in the
        # VAE batch size may flip the sign of a gradient that is ~0, hence atol 2% of lr
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=2e-5)


def test_full_finetune_v_model_diffusion_bf16_checkpointing(tmp_path, tiny_sd_v, shapes_folder):
    """rank 0 on a v-prediction model with the diffusion objective, bf16 autocast and gradient checkpointing."""
    from diffusers import UNet2DConditionModel

    out = tmp_path / "full"
    summary = run(
        tiny_sd_v,
        shapes_folder,
        out,
        steps=2,
        lora_rank=0,
        objective="diffusion",
        mixed_precision="bf16",
        gradient_checkpointing=True,
        t_sampling="logit-normal",
    )
    record = json.loads((out / "d2f_run.json").read_text())
    assert (record["weights"], record["sampler"], record["prediction_type"]) == ("unet", "ddim", "v_prediction")
    assert summary["unet_path"] == str(out / "unet") and summary["lora_path"] is None
    tuned = UNet2DConditionModel.from_pretrained(out / "unet")
    base = UNet2DConditionModel.from_pretrained(tiny_sd_v, subfolder="unet")
    assert tuned.dtype == torch.float32
    assert (unet_outputs(tuned) - unet_outputs(base)).abs().max() > 1e-4


def test_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, tiny_sd_eps, shapes_folder):
    out = tmp_path / "nan"
    with pytest.raises(
        UserError, match=r"loss became NaN or infinite at step \d+ .*last finite checkpoint is .*step_0000\d"
    ):
        run(tiny_sd_eps, shapes_folder, out, steps=8, lr=1e30, max_grad_norm=0, checkpoint_every=1, objective="fm")
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["status"] == "diverged" and not (out / "pytorch_lora_weights.safetensors").exists()
    for path in (out / "checkpoints").iterdir():
        state = load_file(path / "trainable.safetensors")
        assert all(torch.isfinite(v).all() for v in state.values())


def test_zero_terminal_snr_run_is_sampled_with_zero_terminal_snr(tmp_path, tiny_sd_v, shapes_folder):
    """--zero-terminal-snr on a v model: trained on the rescaled schedule, recorded, and the run's pipeline
    (d2f sample's) gets a scheduler with rescale_betas_zero_snr that d2f's sampler reads and samples with."""
    from d2f.pipeline import generate, load_pipeline
    from d2f.pipeline.generate import pipe_parametrization

    out = tmp_path / "ztsnr"
    run(tiny_sd_v, shapes_folder, out, steps=2, zero_terminal_snr=True, validate_every=1)
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["schedule"]["zero_terminal_snr"] and record["settings"]["zero_terminal_snr"]
    assert record["schedule"]["scheduler_config"]["rescale_betas_zero_snr"] is True
    assert record["schedule"]["t_min"] == 0.0  # the noise end is pure noise
    pipe = load_pipeline(lora=out)
    assert pipe.scheduler.config.rescale_betas_zero_snr is True
    schedule = pipe_parametrization(pipe).schedule
    assert schedule.zero_terminal_snr and float(schedule.alphas_cumprod[-1]) == 0.0
    images = generate(pipe, ["a red circle", "a blue square"], sampler="euler", steps=3, guidance=2.0, seed=0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert pipe(["a red circle"], num_inference_steps=3, output_type="pt").images.isfinite().all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "flow"], "'--objective': 'flow' is not one of 'diff2flow', 'fm'"),
        (["--lora-rank", "-1"], "--lora-rank must be at least 0"),
        (["--lora-targets", "mlp"], "'--lora-targets': 'mlp' is not one of 'attn', 'attn+conv'"),
        (["--resolution", "20"], "size 20 px does not fit this model"),
        (["--mixed-precision", "fp8"], "'--mixed-precision': 'fp8' is not one of 'no', 'fp16', 'bf16'"),
        (["--resume"], "nothing to resume in"),
        (["--data", "/nonexistent/folder"], "data folder /nonexistent/folder does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_sd_eps, shapes_folder, args, message):
    from d2f.cli import app

    base = [
        "train",
        "--model",
        str(tiny_sd_eps),
        "--data",
        str(shapes_folder),
        "--output",
        str(tmp_path / "r"),
        "--steps",
        "1",
        "--batch-size",
        "2",
    ]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    errors = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], result.stderr


def test_existing_run_and_changed_settings_are_refused(tmp_path, tiny_sd_eps, shapes_folder):
    out = tmp_path / "r"
    run(tiny_sd_eps, shapes_folder, out, steps=1, checkpoint_every=1)
    with pytest.raises(UserError, match="already holds a run; pass --resume to continue it, --overwrite"):
        run(tiny_sd_eps, shapes_folder, out, steps=1)
    with pytest.raises(UserError, match=r"--resume needs the settings .* lr: 0.001 -> 0.01"):
        run(tiny_sd_eps, shapes_folder, out, steps=1, resume=True, lr=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "with-text-encoder"])
def test_two_process_cpu_run(tmp_path, tiny_sd_eps, shapes_folder, text_encoder):
    """torchrun with 2 processes: accelerate runs MULTI_CPU over gloo; each process draws its own batch. With
    --train-text-encoder both prepared models (UNet and text encoder) train under DDP and both LoRAs are saved."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29533 + text_encoder),
        "-m",
        "d2f",
        "train",
        "--model",
        str(tiny_sd_eps),
        "--data",
        str(shapes_folder),
        "--output",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--sample-steps",
        "2",
        "--validate-every",
        "0",
        "--checkpoint-every",
        "2",
        "--lora-rank",
        "4",
        "--json",
        *(["--train-text-encoder"] if text_encoder else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)  # one JSON object: only rank 0 prints
    assert summary["output_dir"] == str(out) and summary["steps"] == 2 and summary["final_loss"] > 0
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["num_processes"] == 2 and record["status"] == "finished"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "checkpoints" / "step_00002" / "state.json").is_file()
    assert not (out / "d2f.lock").exists()  # taken by rank 0 only, and released
    text_keys = [k for k in load_file(out / "pytorch_lora_weights.safetensors") if k.startswith("text_encoder.")]
    assert bool(text_keys) == text_encoder == bool(record["lora"].get("text_encoder"))


def test_train_s_step_is_training_step_in_plain_pytorch(tmp_path, tiny_sd_eps, shapes_folder):
    """``train``'s step is ``d2f.training.step.training_step``: two steps of ``train`` (through accelerate, with
    its step-0 validation) and two calls of ``training_step`` in plain PyTorch (``OneProcess``, a new AdamW) on
    the same set-up give the same losses and weights, bit for bit on a CPU; with gradient accumulation."""
    from d2f.training.setup import setup
    from d2f.training.step import OneProcess, training_step

    settings = dict(FAST, steps=2, grad_accum=2, lr_scheduler="constant", checkpoint_every=2, cpu=True)
    events = []
    cfg = TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(tmp_path / "train"), **settings)
    train(cfg, callback=events.append)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    trained = load_file(tmp_path / "train" / "checkpoints" / "step_00002" / "trainable.safetensors")

    cfg = TrainConfig(model=str(tiny_sd_eps), data=str(shapes_folder), output=str(tmp_path / "plain"), **settings)
    run, _ = setup(cfg, callback=lambda event: None)  # the same model, adapter, data and draws
    with run.lock:
        params = list(run.trainable.values())
        optimizer = torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        device, mine, initial = OneProcess(cfg.grad_accum), [], [p.detach().clone() for p in params]
        for step in range(cfg.steps):
            per_sample, t = training_step(
                run.parametrization, run.unet, run.batches, optimizer, params, step,
                grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm, device=device,
            )  # fmt: skip
            assert per_sample.shape == t.shape == (cfg.batch_size * cfg.grad_accum,)
            mine.append(per_sample.mean().item())
    assert mine == losses
    assert set(trained) == set(run.trainable)
    for name, p in run.trainable.items():
        assert torch.equal(p.detach(), trained[name]), name
    assert not all(torch.equal(p.detach(), p0) for p, p0 in zip(params, initial))  # the steps changed the weights
