"""``d2f reflow --windows K`` (issue #23; PeRFlow, Yan et al. 2024): the teacher's state at every window boundary
in the pairs, the student's batches on each window's straight line (closed form), and a windowed run end to end."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REFLOW_CAPTIONS as CAPTIONS
from helpers import REFLOW_FAST as FAST
from helpers import pair_settings as settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from safetensors.torch import save_file

from d2f.reflow.pair_batches import SHARD, load_pairs, load_path, window_line
from d2f.reflow.pairs import generate_pairs


@pytest.fixture(scope="module")
def teacher(tiny_sd_eps):
    from d2f.pipeline import load_pipeline

    return load_pipeline(str(tiny_sd_eps))


@hsettings(max_examples=60, deadline=None)
@given(windows=st.integers(1, 8), data=st.data(), seed=st.integers(0, 2**31))
def test_the_window_line_runs_through_both_states_and_one_euler_step_lands_on_the_next(windows, data, seed):
    """docs/math.md §8.2 in float64: t x1' + (1 - t) x0' is x_{b_k} at b_k and x_{b_{k+1}} at b_{k+1}, its slope
    is K (x_{b_{k+1}} - x_{b_k}), and one Euler step of 1/K along it from x_{b_k} lands on x_{b_{k+1}}."""
    k = torch.tensor([data.draw(st.integers(0, windows - 1))])
    g = torch.Generator().manual_seed(seed)
    start, end = (torch.randn(1, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2))
    x0, x1 = window_line(start, end, k, windows)
    b_k, b_next = float(k) / windows, float(k + 1) / windows
    assert torch.allclose(b_k * x1 + (1 - b_k) * x0, start, atol=1e-12)
    assert torch.allclose(b_next * x1 + (1 - b_next) * x0, end, atol=1e-12)
    assert torch.allclose(x1 - x0, windows * (end - start), atol=1e-12)
    assert torch.allclose(start + (x1 - x0) / windows, end, atol=1e-12)


def test_window_pairs_hold_the_teachers_state_at_each_boundary(tmp_path, teacher):
    """K = 2: the same noise as plain pairs; the state at t = 1/2 and x1 are the teacher's DDIM (= FM Euler) on its
    grid with 1/2 added, integrated in one go from the same noise."""
    from d2f.pipeline import pipe_parametrization, sample_latents
    from d2f.sampling import ddim_grid

    generate_pairs(teacher, settings(), tmp_path / "plain")
    generate_pairs(teacher, settings(windows=2), tmp_path / "two")
    x0, x1, _, _ = load_pairs(tmp_path / "two")
    path = load_path(tmp_path / "two")
    assert path.shape == (5, 3, 4, 8, 8) and torch.equal(path[:, 0], x0) and torch.equal(path[:, 2], x1)
    assert torch.equal(x0, load_pairs(tmp_path / "plain")[0])
    assert load_path(tmp_path / "plain").shape == (5, 2, 4, 8, 8)

    grid = ddim_grid(pipe_parametrization(teacher, "diffusion").schedule, 2)
    assert 0.5 not in grid.tolist()
    merged = torch.sort(torch.cat([grid, torch.tensor([0.5], dtype=torch.float64)])).values
    prompts = [CAPTIONS[i % 3] for i in range(5)]
    run = dict(sampler="ddim", guidance=2.0, seed=7, objective="diffusion")
    half = merged[merged <= 0.5]
    mid = sample_latents(teacher, prompts, steps=len(half) - 1, ts=half, **run)
    end = sample_latents(teacher, prompts, steps=len(merged) - 1, ts=merged, **run)
    scale = float(x1.abs().max())
    assert torch.allclose(path[:, 1], mid, rtol=1e-5, atol=1e-5 * scale)
    assert torch.allclose(x1, end, rtol=1e-5, atol=1e-5 * scale)
    assert json.loads((tmp_path / "two" / "pairs.json").read_text())["settings"]["windows"] == 2


def test_a_pairs_folder_from_before_windows_is_reused_as_one_window(tmp_path, teacher):
    generate_pairs(teacher, settings(num_pairs=2), tmp_path)
    record = json.loads((tmp_path / "pairs.json").read_text())
    del record["settings"]["windows"]
    (tmp_path / "pairs.json").write_text(json.dumps(record))
    assert generate_pairs(teacher, settings(num_pairs=2), tmp_path)["shards_written"] == 0


@pytest.mark.parametrize("t_sampling", ["uniform", "near-noise"])
def test_window_batches_lie_on_their_windows_line(tmp_path, tiny_sd_eps, t_sampling):
    """K = 3 windows, states drawn at random: every sample's (x1', x0', t) has its t in a window [k/3, (k+1)/3],
    slope x1' - x0' = 3 (x_{b_{k+1}} - x_{b_k}), and its line t x1' + (1 - t) x0' passes through both states."""
    from d2f.core.schedule import Schedule
    from d2f.objectives import parametrization
    from d2f.pipeline import load_pipeline
    from d2f.reflow.pair_batches import PairBatches

    n, K = 64, 3
    path = torch.randn(n, K + 1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    folder = tmp_path / "pairs"
    folder.mkdir()
    spec = {"num_pairs": n, "shard_size": n, "captions": ["x"], "windows": K}
    (folder / "pairs.json").write_text(json.dumps({"settings": spec}))
    shard = {"x0": path[:, 0].contiguous(), "x1": path[:, -1].contiguous(), "states": path[:, 1:-1].contiguous()}
    save_file(shard | {"caption": torch.zeros(n, dtype=torch.int64)}, str(folder / SHARD.format(0)))
    pipe = load_pipeline(str(tiny_sd_eps))
    flow = parametrization("diff2flow", Schedule.preset("sd15"), "epsilon")
    batches = PairBatches(
        folder, pipe.text_encoder, pipe.tokenizer, flow, latent_shape=(4, 8, 8), batch_size=n,
        caption_dropout=0.0, t_sampling=t_sampling, seed=0, device="cpu",
    )  # fmt: skip
    data, noise, t, _ = batches.get(0)
    assert ((t >= 0) & (t <= 1)).all()
    order = batches.get(0)  # the draws are reproducible
    assert all(torch.equal(a, b) for a, b in zip((data, noise, t), order[:3]))
    k = torch.clamp((t * K).floor().long(), max=K - 1)
    assert len(set(k.tolist())) == K  # every window drawn
    for j in range(n):
        slope = data[j] - noise[j]
        # the line's points at the window's ends, and the pair whose states they are
        start = (k[j] / K) * data[j] + (1 - k[j] / K) * noise[j]
        end = ((k[j] + 1) / K) * data[j] + (1 - (k[j] + 1) / K) * noise[j]
        pair = int(torch.argmin(((path[:, k[j]] - start) ** 2).flatten(1).sum(1)))
        assert torch.allclose(start, path[pair, k[j]], atol=1e-5)
        assert torch.allclose(end, path[pair, k[j] + 1], atol=1e-5)
        assert torch.allclose(slope, K * (path[pair, k[j] + 1] - path[pair, k[j]]), atol=1e-5)


def test_a_windowed_reflow_is_sampled_with_one_step_per_window(tmp_path, tiny_run, shapes_folder):
    from d2f.reflow import ReflowConfig, reflow

    out = tmp_path / "student"
    cfg = ReflowConfig(lora=str(tiny_run), data=str(shapes_folder), num_pairs=2, pair_steps=2, shard_size=2,
                       output=str(out), windows=2, train=dict(FAST, steps=2))  # fmt: skip
    summary = reflow(cfg)
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["sample_steps"] == 2 and summary["sample_command"].endswith("--steps 2")
    assert record["reflow"]["pair_settings"]["windows"] == 2
    assert load_path(out / "pairs").shape[1] == 3
    for name in ("step_00002.png", "step_00002_4steps.png", "step_00002_8steps.png"):
        assert (out / "samples" / name).is_file()
