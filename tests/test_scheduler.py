"""``Diff2FlowEulerScheduler`` / ``Diff2FlowHeunScheduler`` inside a plain diffusers ``StableDiffusionPipeline``.

The pipeline with the scheduler must give the same latents as d2f's own loop (``d2f.pipeline.sample_latents``)
for the same seed, prompts, steps and guidance; the CLI-level version (with a LoRA run folder) is in
test_sample_cli.py.
"""

from __future__ import annotations

import pytest
import torch

import d2f
from d2f.core.schedule import Schedule
from d2f.core.timemap import bridge_coefficients, scale, tau_of_t
from d2f.core.velocity import output_from_velocity
from d2f.errors import UserError


def _pipe(folder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_from_config_reads_betas_and_prediction_type(tiny_sd_v):
    from diffusers import DDIMScheduler

    native = DDIMScheduler.from_pretrained(tiny_sd_v, subfolder="scheduler")
    sched = d2f.Diff2FlowEulerScheduler.from_config(native.config)
    assert sched.config.prediction_type == "v_prediction"
    assert torch.allclose(sched.schedule.alphas_cumprod.float(), native.alphas_cumprod, atol=1e-7)
    sched.set_timesteps(4)
    # timesteps are fractional taus at t = 0, 1/4, 1/2, 3/4; the first two clamp to tau = N-1 (t < t_min)
    expected = tau_of_t(Schedule.from_config(dict(native.config)), torch.tensor([0, 0.25, 0.5, 0.75]))
    assert torch.allclose(sched.timesteps, expected.float()) and sched.timesteps.dtype == torch.float32
    assert sched.timesteps[0] == 999 and sched.timesteps[2] != sched.timesteps[2].round()
    assert sched.init_noise_sigma == 1.0 and sched.order == 1
    x = torch.randn(1, 4, 8, 8)
    # scale_model_input at step k multiplies by c(t_k)
    sched.step(torch.zeros_like(x), sched.timesteps[0], x)
    c = float(scale(sched.schedule, torch.tensor(0.25)))
    assert torch.allclose(sched.scale_model_input(x, sched.timesteps[1]), c * x)


def test_save_and_load_round_trip(tmp_path):
    sched = d2f.Diff2FlowEulerScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon", shift=2.0
    )
    sched.save_pretrained(tmp_path)
    again = d2f.Diff2FlowEulerScheduler.from_pretrained(tmp_path)
    assert again.config.shift == 2.0 and again.config.beta_schedule == "scaled_linear"
    with pytest.raises(UserError):
        d2f.Diff2FlowEulerScheduler(prediction_type="epsilon", rescale_betas_zero_snr=True)  # undefined at t = 0


@pytest.mark.parametrize("sampler,cls", [("euler", "Diff2FlowEulerScheduler"), ("heun", "Diff2FlowHeunScheduler")])
@pytest.mark.parametrize(
    "fixture,objective", [("tiny_sd_eps", "diff2flow"), ("tiny_sd_v", "diff2flow"), ("tiny_sd_eps", "diffusion")]
)
def test_pipeline_with_scheduler_equals_d2f_loop(fixture, objective, sampler, cls, request):
    """diff2flow: the grid starts at t = 0 from the noise; diffusion (an untouched model): at t_min from
    z = noise at tau = N-1 (init_noise_sigma = 1 / c(t_min))."""
    from d2f.pipeline import load_pipeline, sample_latents

    folder = request.getfixturevalue(fixture)
    prompts = ["a red circle", "a purple cross"]
    mine = sample_latents(
        load_pipeline(str(folder)), prompts, sampler=sampler, steps=5, guidance=4.0, seed=3, objective=objective
    )
    pipe = _pipe(folder)
    pipe.scheduler = getattr(d2f, cls).from_config(pipe.scheduler.config, objective=objective)
    assert (pipe.scheduler.init_noise_sigma == 1.0) == (objective == "diff2flow")
    gens = [torch.Generator().manual_seed(3 + i) for i in range(len(prompts))]
    theirs = pipe(prompts, num_inference_steps=5, guidance_scale=4.0, generator=gens, output_type="latent").images
    # the same float32 operations in the same order: equal up to round-off (measured: bit-identical)
    assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_fm_objective_scheduler_equals_d2f_loop(tiny_sd_eps):
    from d2f.pipeline import load_pipeline, sample_latents

    prompts = ["a green triangle"]
    mine = sample_latents(load_pipeline(str(tiny_sd_eps)), prompts, steps=4, guidance=2.0, seed=1, objective="fm")
    pipe = _pipe(tiny_sd_eps)
    pipe.scheduler = d2f.Diff2FlowEulerScheduler.from_config(pipe.scheduler.config, objective="fm")
    pipe.scheduler.set_timesteps(4)
    assert torch.allclose(pipe.scheduler.timesteps, torch.tensor([999.0, 749.25, 499.5, 249.75]))
    theirs = pipe(
        prompts,
        num_inference_steps=4,
        guidance_scale=2.0,
        generator=[torch.Generator().manual_seed(1)],
        output_type="latent",
    ).images
    assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_heun_layout_matches_diffusers_heun_convention():
    sched = d2f.Diff2FlowHeunScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(4)
    # t_0, t_1, t_1, t_2, t_2, t_3, t_3: 2K - 1 evaluations, the last step Euler
    assert len(sched.timesteps) == 7 and sched.order == 2
    assert [p[0] for p in sched.points] == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75]
    # a velocity field linear in t, v = a + b t, is integrated exactly by Heun (trapezoid) but not by Euler;
    # feed the scheduler the epsilon output that has this velocity at each evaluation. Exact end point:
    # x(1) = x(0) + a + b/2, with the last step Euler: error b h^2 / 2 on [3/4, 1] only.
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    a, b = 0.3, -0.8
    state = x.clone()
    for k, tau in enumerate(sched.timesteps):
        t = sched.points[k][0]
        coef = bridge_coefficients(sched.schedule, torch.tensor(t))
        z = sched.scale_model_input(state, tau)
        o = output_from_velocity(torch.full_like(x, a + b * t), z, coef.alpha, coef.sigma, "epsilon")
        state = sched.step(o, tau, state).prev_sample
    # Heun steps on [0, 3/4] exact, last Euler step from 3/4: x + h (a + b 3/4) vs exact x + h (a + b 7/8)
    assert torch.allclose(state, x + a + b / 2 - b * 0.25**2 / 2, atol=1e-6)
