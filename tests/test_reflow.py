"""``d2f reflow`` (issue #13) on tiny random SD models: the teacher's pairs (deterministic, independent of the
shard size, resumable, refused from another teacher, never half-written), the reflow loss on exact straight
pairs of a closed-form model, and a reflow run sampled through the CLI and a plain diffusers pipeline."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from helpers import REFLOW_CAPTIONS as CAPTIONS
from helpers import REFLOW_FAST as FAST
from helpers import pair_settings as settings
from safetensors.torch import load_file
from typer.testing import CliRunner

from d2f.errors import UserError
from d2f.reflow.pair_batches import SHARD, load_pairs
from d2f.reflow.pairs import generate_pairs


@pytest.fixture(scope="module")
def teacher(tiny_sd_eps):
    from d2f.pipeline import load_pipeline

    return load_pipeline(str(tiny_sd_eps))


def test_pairs_are_deterministic_and_do_not_depend_on_the_shard_size(tmp_path, teacher):
    from d2f.pipeline import initial_noise, sample_latents

    record = generate_pairs(teacher, settings(), tmp_path / "a")
    assert record["complete"] and record["shards"] == 3 and record["shards_written"] == 3 and record["bytes"] > 0
    x0, x1, index, captions = load_pairs(tmp_path / "a")
    assert x0.shape == x1.shape == (5, 4, 8, 8) and index.tolist() == [0, 1, 2, 0, 1] and captions == CAPTIONS
    generate_pairs(teacher, settings(shard_size=5), tmp_path / "b")
    again = load_pairs(tmp_path / "b")
    # the noise is bit-identical; the teacher's end points up to the round-off of another UNet batch size
    assert torch.equal(x0, again[0]) and torch.allclose(x1, again[1], rtol=1e-5, atol=1e-5 * float(x1.abs().max()))
    # x0 is the noise d2f sample draws for seed + i; x1 what d2f sample's loop makes of it (docs: x0 at t = 0)
    assert torch.equal(x0, initial_noise(teacher, 5, 32, 32, 7))
    prompts = [CAPTIONS[i % 3] for i in range(5)]
    expected = sample_latents(teacher, prompts, sampler="ddim", steps=2, guidance=2.0, seed=7, objective="diffusion")
    assert torch.allclose(x1, expected, rtol=1e-5, atol=1e-5 * float(x1.abs().max()))


def test_interrupted_generation_resumes_to_the_same_pairs(tmp_path, teacher):
    whole = tmp_path / "whole"
    generate_pairs(teacher, settings(), whole)

    def stop_after_one(done, total):
        if done == 1:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        generate_pairs(teacher, settings(), part, stop_after_one)
    assert (part / SHARD.format(0)).is_file() and not (part / SHARD.format(1)).is_file()
    assert not json.loads((part / "pairs.json").read_text())["complete"]
    (part / f".{SHARD.format(1)}.tmp-1").write_bytes(b"half")  # what a kill inside a write leaves
    record = generate_pairs(teacher, settings(), part)
    assert record["shards_written"] == 2 and not list(part.glob(".shard_*"))
    for a, b in zip(load_pairs(whole), load_pairs(part)):
        assert a == b if isinstance(a, list) else torch.equal(a, b)
    assert generate_pairs(teacher, settings(), part)["shards_written"] == 0  # complete: reused as it is


def test_pairs_of_another_teacher_or_settings_are_refused(tmp_path, teacher):
    generate_pairs(teacher, settings(num_pairs=1), tmp_path)
    for change in (dict(guidance=3.0), dict(teacher_weights="runs/other/pytorch_lora_weights.safetensors")):
        with pytest.raises(UserError, match="another teacher or settings.*--pairs DIR"):
            generate_pairs(teacher, settings(num_pairs=1, **change), tmp_path)
    with pytest.raises(UserError, match="--num-pairs must be at least 1"):
        generate_pairs(teacher, settings(num_pairs=0), tmp_path / "none")


def test_a_full_disk_leaves_no_half_written_shard(tmp_path, teacher, monkeypatch):
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match="disk is full.*resumes at this shard"):
        generate_pairs(teacher, settings(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.json"]


@pytest.mark.parametrize("objective", ["diff2flow", "fm"])
def test_reflow_loss_on_exact_straight_pairs(tmp_path, tiny_sd_eps, objective):
    """Pairs on straight lines x1 = x0 + d. A closed-form model whose velocity is d' everywhere (for diff2flow:
    a sample-prediction network returning x1_hat = x_t + (1 - t) d', which the bridge reads as v = d') has the
    reflow loss ||d' - d||^2 / (C h w) at every t: 0 for the exact model."""
    from d2f.core.schedule import Schedule
    from d2f.core.timemap import scale, t_of_tau
    from d2f.objectives import parametrization
    from d2f.pipeline import load_pipeline
    from d2f.reflow.pair_batches import PairBatches

    schedule = Schedule.preset("sd15")
    flow = parametrization(objective, schedule, "sample")
    g = torch.Generator().manual_seed(0)
    x0, d = torch.randn(6, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "pairs.json").write_text(json.dumps({"settings": {"num_pairs": 6, "shard_size": 6, "captions": ["x"]}}))
    shard = {"x0": x0, "x1": x0 + d, "caption": torch.zeros(6, dtype=torch.int64)}
    from safetensors.torch import save_file

    save_file(shard, str(folder / SHARD.format(0)))
    pipe = load_pipeline(str(tiny_sd_eps))
    batches = PairBatches(
        folder, pipe.text_encoder, pipe.tokenizer, flow, latent_shape=(4, 8, 8), batch_size=6,
        caption_dropout=0.0, t_sampling="uniform", seed=0, device="cpu",
    )  # fmt: skip
    data, noise, t, cond = batches.get(0)
    assert torch.allclose(data - noise, d.expand(6, -1, -1, -1), atol=1e-6)  # the pairs stay coupled
    t = 0.1 + 0.8 * t  # inside [t_min, t_max]: the network is told the true t
    for wrong in (0.0, 0.5):
        d_model = d + wrong

        def net(z, timestep, cond, d_model=d_model):
            if objective == "fm":  # the raw output is the velocity
                return d_model.expand_as(z)
            t_net = t_of_tau(schedule, timestep.double()).float().view(-1, 1, 1, 1)
            x_t = z / scale(schedule, t_net.double().flatten()).float().view(-1, 1, 1, 1)
            return x_t + (1 - t_net) * d_model  # x1_hat on the straight line of slope d'

        out = flow.loss(net, data, noise, t, cond)
        assert torch.allclose(out.per_sample, torch.full((6,), wrong**2), atol=1e-4), out.per_sample


def test_reflow_run_samples_through_the_cli_and_plain_diffusers(tmp_path, tiny_sd_eps, tiny_run, shapes_folder):
    from diffusers import StableDiffusionPipeline

    import d2f
    from d2f.cli import app
    from d2f.pipeline import load_pipeline, sample_latents
    from d2f.reflow import ReflowConfig, reflow

    out = tmp_path / "student"
    common = dict(lora=str(tiny_run), data=str(shapes_folder), num_pairs=4, pair_steps=2, shard_size=2)
    summary = reflow(ReflowConfig(output=str(out), **common, train=dict(FAST, steps=2, lr=1e-12, weight_decay=0)))
    record = json.loads((out / "d2f_run.json").read_text())
    assert (record["objective"], record["reflow_objective"], record["sampler"]) == ("reflow", "diff2flow", "euler")
    assert (record["guidance"], record["sample_steps"], record["settings"]["caption_dropout"]) == (1.0, 1, 0.0)
    assert record["reflow"]["guidance_distilled"] and record["reflow"]["pair_settings"]["num_pairs"] == 4
    assert record["reflow"]["teacher"]["teacher_weights"].endswith("pytorch_lora_weights.safetensors")
    assert summary["pairs"]["shards_written"] == 2 and (out / "pairs" / SHARD.format(1)).is_file()
    for name in ("step_00002.png", "step_00002_2steps.png", "step_00002_4steps.png"):
        assert (out / "samples" / name).is_file()
    # the student starts as the teacher: with lr ~ 0 its LoRA is the teacher's
    mine, teachers = load_file(out / "pytorch_lora_weights.safetensors"), load_file(tiny_run / d2f_lora_name())
    assert set(teachers) <= set(mine)
    assert all(torch.allclose(mine[k], teachers[k], atol=1e-6) for k in teachers)

    result = CliRunner().invoke(
        app,
        ["sample", "--lora", str(out), "--steps", "1", "--prompt", "a red circle", "--output", str(tmp_path / "g.png")],
    )
    assert result.exit_code == 0, result.output
    pipe = load_pipeline(lora=str(out))
    assert isinstance(pipe.scheduler, d2f.Diff2FlowEulerScheduler)
    mine = sample_latents(pipe, ["a red circle"], steps=1, guidance=1.0, seed=0)
    plain = StableDiffusionPipeline.from_pretrained(tiny_sd_eps, safety_checker=None, requires_safety_checker=False)
    plain.load_lora_weights(str(out))
    plain.scheduler = d2f.Diff2FlowEulerScheduler.from_config(plain.scheduler.config)
    gens = [torch.Generator().manual_seed(0)]
    theirs = plain(["a red circle"], num_inference_steps=1, guidance_scale=1.0, generator=gens, output_type="latent")
    assert torch.allclose(mine, theirs.images, rtol=1e-5, atol=1e-5 * float(theirs.images.abs().max()))

    # a second run with the same teacher and settings reuses the pairs; another teacher's are refused
    again = reflow(
        ReflowConfig(
            output=str(tmp_path / "fm"), pairs=str(out / "pairs"), objective="fm", **common, train=dict(FAST, steps=1)
        )
    )
    assert again["pairs"]["shards_written"] == 0
    assert json.loads((tmp_path / "fm" / "d2f_run.json").read_text())["reflow_objective"] == "fm"
    with pytest.raises(UserError, match="another teacher or settings"):
        reflow(ReflowConfig(model=str(tiny_sd_eps), output=str(tmp_path / "x"), pairs=str(out / "pairs"),
                            data=str(shapes_folder), num_pairs=4, pair_steps=2, shard_size=2, train=FAST))  # fmt: skip


def test_reflow_overwrite_keeps_its_pairs_and_resume_needs_the_same_pairs(tmp_path, tiny_run, shapes_folder):
    """Reflow plugs into training through ``train(source=...)``: the pairs folder inside the run is kept by
    --overwrite (and reused), recorded in ``settings``, and --resume with another pairs folder is refused."""
    from d2f.reflow import ReflowConfig, reflow

    out = tmp_path / "student"
    common = dict(lora=str(tiny_run), data=str(shapes_folder), num_pairs=2, pair_steps=2, shard_size=2, output=str(out))
    reflow(ReflowConfig(**common, train=dict(FAST, steps=1)))
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["settings"]["pairs"] == str(out / "pairs") and record["reflow"]["pairs"] == str(out / "pairs")
    again = reflow(ReflowConfig(**common, train=dict(FAST, steps=1, overwrite=True)))
    assert again["pairs"]["shards_written"] == 0 and (out / "pairs" / SHARD.format(0)).is_file()
    assert not (out / ".overwritten").exists()
    with pytest.raises(UserError, match="--resume needs the settings.*pairs"):
        reflow(ReflowConfig(**common, pairs=str(tmp_path / "other"), train=dict(FAST, steps=2, resume=True)))


def test_bad_teacher_and_num_pairs_are_one_line_errors(tmp_path):
    from d2f.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["reflow", "--lora", str(tmp_path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Traceback" not in result.output and "run folder" in result.output
    result = runner.invoke(app, ["reflow", "--model", "tiny-shapes-eps", "--num-pairs", "0"])
    assert result.exit_code == 2 and "--num-pairs must be at least 1" in result.output


def d2f_lora_name() -> str:
    from d2f.pipeline.run_folder import LORA_FILE

    return LORA_FILE
