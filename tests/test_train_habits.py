"""The habits SD finetuners bring to ``d2f train``: a config file, trackers, resuming from a checkpoint and
for more steps, a LoRA in every checkpoint, the optimizer and noise options, accelerate's precision setting,
captions longer than the window, and a model stored in fp16. Real runs of the tiny model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import read_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

from d2f.cli import app
from d2f.errors import UserError
from d2f.training import TrainConfig, train

FAST = dict(batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4, log_every=1)


def run(model, data, output, events=None, **overrides) -> dict:
    cfg = TrainConfig(model=str(model), data=str(data), output=str(output), **{**FAST, **overrides})
    return train(cfg, callback=None if events is None else events.append)


def cli_train(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def test_config_file_with_command_line_overrides(tmp_path, tiny_sd_eps, shapes_folder):
    config = tmp_path / "run.toml"
    config.write_text(
        f'model = "{tiny_sd_eps}"\ndata = "{shapes_folder}"\nsteps = 2\nbatch_size = 2\nlora_rank = 8\n'
        'validation_prompts = ["a red circle"]\nsample_steps = 2\nvalidate_every = 0\nweight_decay = 0.05\n'
        "adam_beta2 = 0.99\n"
    )
    out = tmp_path / "r"
    result = cli_train("--config", config, "--lora-rank", 4, "--output", out, "--cpu", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "d2f_run.json").read_text())
    settings = record["settings"]
    assert settings["lora_rank"] == 4  # the command line wins
    assert settings["cpu"] is True and record["device"] == "cpu"  # --cpu: the CPU also where CUDA is
    assert (settings["steps"], settings["weight_decay"], settings["adam_beta2"]) == (2, 0.05, 0.99)
    assert settings["validation_prompts"] == ["a red circle"]
    bad = tmp_path / "bad.toml"
    bad.write_text("lora_rnak = 4\n")
    result = cli_train("--config", bad, "--output", tmp_path / "x")
    assert result.exit_code == 2 and "did you mean lora_rank" in result.stderr


def test_report_to_tensorboard_logs_scalars_and_grids(tmp_path, tiny_sd_eps, shapes_folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    run(tiny_sd_eps, shapes_folder, out, steps=2, report_to=["tensorboard"], validation_prompts=["a red circle"])
    events = [p for p in out.rglob("events.out.tfevents.*")]
    assert events, list(out.rglob("*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"train/loss", "train/lr"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert "validation/grid" in acc.Tags()["images"]
    with pytest.raises(UserError, match="unknown --report-to"):
        run(tiny_sd_eps, shapes_folder, tmp_path / "x", steps=1, report_to=["tensorbord"])


def test_resume_from_a_checkpoint_and_for_more_steps(tmp_path, tiny_sd_eps, shapes_folder):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "r"
    run(tiny_sd_eps, shapes_folder, out, steps=3, checkpoint_every=1, checkpoints_total_limit=0)
    step2 = out / "checkpoints" / "step_00002"
    # every checkpoint is also a diffusers LoRA
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_eps)
    pipe.load_lora_weights(step2)
    more = run(tiny_sd_eps, shapes_folder, out, steps=5, checkpoint_every=1, checkpoints_total_limit=0, resume=True)
    assert more["steps"] == 5 and [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"] == [
        1,
        2,
        3,
        4,
        5,
    ]
    again = run(tiny_sd_eps, shapes_folder, out, steps=5, checkpoint_every=1, resume_from=step2)
    assert again["output_dir"] == str(out.resolve()) and again["steps"] == 5
    with pytest.raises(UserError, match="is not a checkpoint folder"):
        run(tiny_sd_eps, shapes_folder, out, steps=5, resume_from=out)
    with pytest.raises(UserError, match="belongs to the run in"):
        run(tiny_sd_eps, shapes_folder, tmp_path / "other", steps=5, resume_from=step2)


def test_noise_offset_is_for_the_diffusion_objective(tmp_path, tiny_sd_eps, shapes_folder):
    with pytest.raises(UserError, match="--noise-offset is for the diffusion objective"):
        run(tiny_sd_eps, shapes_folder, tmp_path / "fm", steps=1, noise_offset=0.1)
    plain = run(tiny_sd_eps, shapes_folder, tmp_path / "a", steps=1, objective="diffusion")
    offset = run(tiny_sd_eps, shapes_folder, tmp_path / "b", steps=1, objective="diffusion", noise_offset=0.1)
    assert plain["final_loss"] != offset["final_loss"]


def test_decoding_threads_give_the_same_batches(tmp_path, tiny_sd_eps, shapes_folder):
    one = run(tiny_sd_eps, shapes_folder, tmp_path / "a", steps=1, cache=False)
    many = run(tiny_sd_eps, shapes_folder, tmp_path / "b", steps=1, cache=False, dataloader_num_workers=2)
    assert one["final_loss"] == many["final_loss"]


def test_mixed_precision_comes_from_accelerate_when_not_given(tmp_path, tiny_sd_eps, shapes_folder, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    run(tiny_sd_eps, shapes_folder, tmp_path / "r", steps=1)
    assert json.loads((tmp_path / "r" / "d2f_run.json").read_text())["mixed_precision"] == "bf16"
    run(tiny_sd_eps, shapes_folder, tmp_path / "s", steps=1, mixed_precision="no")  # given: it wins
    assert json.loads((tmp_path / "s" / "d2f_run.json").read_text())["mixed_precision"] == "no"


def test_long_captions_are_counted_once(tmp_path, tiny_sd_eps, shapes_folder):
    data = tmp_path / "long"
    shutil.copytree(shapes_folder, data)
    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    rows[0]["text"] = " ".join(["a red circle"] * 40)  # 120 words: far past the 77-token window
    (data / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    events = []
    run(tiny_sd_eps, data, tmp_path / "r", events, steps=1)
    cut = [e for e in events if e["event"] == "captions_cut"]
    assert len(cut) == 1 and cut[0]["count"] == 1 and "longer than" in cut[0]["message"]


def test_a_model_stored_in_fp16_trains_in_float32(tmp_path, tiny_sd_eps, shapes_folder):
    from diffusers import StableDiffusionPipeline

    half = tmp_path / "half"
    StableDiffusionPipeline.from_pretrained(tiny_sd_eps).to(torch.float16).save_pretrained(half)
    summary = run(half, shapes_folder, tmp_path / "r", steps=1, validation_prompts=["a red circle"])
    assert summary["final_loss"] > 0
    weights = load_file(tmp_path / "r" / "pytorch_lora_weights.safetensors")
    assert all(v.dtype == torch.float32 for v in weights.values())
