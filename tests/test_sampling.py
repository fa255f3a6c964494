"""The samplers of ``d2f.sampling``, driven by the velocities of ``d2f.parametrizations`` and ``d2f.guidance``.

1. Closed form: Gaussian data, where the probability-flow ODE is solved analytically. Euler and Heun must
   converge to the analytic end point at their orders (1 and 2), both on the exact FM velocity and through
   the Diff2Flow bridge on the exact optimal epsilon / v "network" of that data.
2. DDIM is FM Euler on DDIM's grid, and agrees with diffusers' DDIMScheduler on a real pipeline.
3. Zero-shot on the built-in priors: FM Euler and DDIM with many steps end at the same images; 25-step
   FM Euler reaches the prompt accuracy bar.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import builtin_prior

from d2f.core.schedule import Schedule
from d2f.core.timemap import scale, t_range
from d2f.errors import UserError
from d2f.guidance import guided
from d2f.parametrizations import Diff2FlowModel, NaiveFMModel
from d2f.sampling import (
    ddim_grid,
    ddim_timesteps,
    network_calls,
    sample_ddim,
    sample_euler,
    sample_heun,
    sampler_grid,
    time_grid,
)

# Gaussian data x1 ~ N(MU, S^2) per coordinate; x_t = t x1 + (1-t) x0 is then N(t MU, sd(t)^2) with
# sd(t)^2 = t^2 S^2 + (1-t)^2, and the PF-ODE keeps the standardised value xi = (x_t - t MU) / sd(t) fixed.
MU, S = 0.7, 0.5


def sd(t: float) -> float:
    return math.sqrt(t * t * S * S + (1 - t) ** 2)


def exact_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """d/dt (t MU + sd(t) xi) = MU + sd'(t) xi,  sd'(t) = (t S^2 - (1 - t)) / sd(t)."""
    xi = (x - t * MU) / sd(t)
    return MU + (t * S * S - (1 - t)) / sd(t) * xi


def analytic_end(x: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
    return t_to * MU + sd(t_to) * (x - t_from * MU) / sd(t_from)


def gaussian_net(schedule: Schedule, prediction_type: str):
    """The exact optimal network of Gaussian data: E[eps | z] = sigma (z - alpha MU) / (alpha^2 S^2 + sigma^2),
    returned as epsilon or converted to the v target (through x1_hat, the model's native output)."""

    def net(z, tau, cond):
        alpha = schedule.alpha(tau.double()).view(-1, 1)
        sigma = schedule.sigma(tau.double()).view(-1, 1)
        z = z.double()
        eps = sigma * (z - alpha * MU) / (alpha**2 * S**2 + sigma**2)
        if prediction_type == "epsilon":
            return eps
        data = (z - sigma * eps) / alpha
        return alpha * eps - sigma * data  # v = alpha eps - sigma x1

    return net


def velocity_field(flow, net, cond, uncond=None, w: float = 1.0):
    """``velocity_fn(x, t)`` of a parametrisation and a network, as ``d2f.pipeline.generate`` builds it."""
    guided_net = guided(net, uncond, w)
    return lambda x, t: flow.velocity(guided_net, x, t, cond)


def test_euler_and_heun_converge_at_their_order_to_the_analytic_end_point():
    x0 = torch.linspace(-3, 3, 13, dtype=torch.float64)
    target = analytic_end(x0, 0.0, 1.0)
    errors = {}
    for name, sampler in (("euler", sample_euler), ("heun", sample_heun)):
        errors[name] = [float((sampler(exact_velocity, x0, time_grid(k)) - target).abs().max()) for k in (20, 40, 80)]
    # first order: halving h halves the error (ratio -> 2); second order: ratio -> 4. The last Heun step is
    # Euler (O(h^2) locally), which keeps Heun's global error O(h^2). Bounds leave room for the pre-asymptotic
    # regime at these step counts (measured ratios: Euler ~1.9-2.0, Heun ~3.8-4.0).
    for a, b in zip(errors["euler"], errors["euler"][1:]):
        assert 1.7 < a / b < 2.3, errors
    for a, b in zip(errors["heun"], errors["heun"][1:]):
        assert 3.3 < a / b < 4.7, errors
    assert errors["heun"][-1] < errors["euler"][-1] / 10


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_bridge_sampler_on_gaussian_network_matches_pf_ode(prediction_type):
    """Through the whole Diff2Flow path (c(t) x, fractional tau, output -> velocity), on the covered range
    [t_min, t_max] where no clamp applies: the end point is the analytic PF-ODE solution of the data."""
    schedule = Schedule.preset("sd15")
    t_min, t_max = t_range(schedule)
    cond = torch.zeros(13, 1)
    velocity_fn = velocity_field(
        Diff2FlowModel(schedule, prediction_type), gaussian_net(schedule, prediction_type), cond
    )
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).view(13, 1)
    target = analytic_end(x, t_min, t_max)
    err = [
        float((sample_euler(velocity_fn, x, time_grid(k, t_start=t_min, t_end=t_max)) - target).abs().max())
        for k in (100, 200, 400)
    ]
    # the bridge is exact (float32 network I/O: ~1e-6), so Euler's O(h) error dominates and halves with h
    # (measured 0.020, 0.010, 0.005): a wrong c, tau or conversion would leave an O(1) gap that does not shrink
    assert err[-1] < 0.01 and all(1.7 < a / b < 2.3 for a, b in zip(err, err[1:])), err
    heun = sample_heun(velocity_fn, x, time_grid(100, t_start=t_min, t_end=t_max))
    assert float((heun - target).abs().max()) < err[-1] / 5


def test_heun_network_calls_and_grids():
    calls = []

    def counting(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    sample_heun(counting, torch.zeros(2), time_grid(5))
    assert len(calls) == network_calls("heun", 5) == 9
    calls.clear()
    sample_euler(counting, torch.zeros(2), time_grid(5))
    assert calls == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8]) and network_calls("euler", 5) == 5
    shifted = time_grid(8, shift=3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and torch.all(shifted[1:] > shifted[:-1])
    assert shifted[1] < 1 / 8  # a shift > 1 puts more steps near the noise end
    assert torch.allclose(time_grid(4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    for bad in (
        lambda: time_grid(0),
        lambda: time_grid(3, shift=0),
        lambda: sample_euler(counting, torch.zeros(1), [0.5, 0.5]),
    ):
        with pytest.raises(UserError):
            bad()


def test_ddim_timesteps_are_diffusers_trailing_for_every_step_count():
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
    for k in range(1, 101):
        ddim.set_timesteps(k)
        assert ddim_timesteps(1000, k).long().tolist() == ddim.timesteps.tolist(), k
    schedule = Schedule.preset("sd15")
    grid = ddim_grid(schedule, 10)
    assert grid[0] == pytest.approx(t_range(schedule)[0]) and grid[-1] == 1.0 and len(grid) == 11


def diffusers_ddim_end(schedule, net, z, steps):
    """diffusers' DDIMScheduler loop (trailing, set_alpha_to_one, no clipping) on a closed-form epsilon net."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    ddim.set_timesteps(steps)
    for tau in ddim.timesteps:
        z = ddim.step(net(z, torch.full((len(z),), float(tau), dtype=torch.float64), None), int(tau), z).prev_sample
    return z


def test_ddim_equals_diffusers_where_the_timesteps_are_evenly_spaced_and_names_the_difference_elsewhere():
    """d2f's DDIM steps from each listed timestep to the next (Song et al.); diffusers' lands at tau - N//K and
    evaluates the next step at the next listed timestep. Evenly spaced lists (K | N): identical. Elsewhere:
    identical again once diffusers' landing is moved onto the next listed timestep (what d2f does)."""
    schedule = Schedule.preset("sd15")
    net = gaussian_net(schedule, "epsilon")
    flow = Diff2FlowModel(schedule)
    t_min = t_range(schedule)[0]
    z = torch.linspace(-2.5, 2.5, 11, dtype=torch.float64).view(11, 1)
    for k in range(1, 101):
        mine = sample_ddim(
            velocity_field(flow, net, None), z / float(scale(schedule, torch.tensor(t_min))), ddim_grid(schedule, k)
        )
        taus = ddim_timesteps(1000, k).long()
        even = bool(torch.all(taus[:-1] - taus[1:] == 1000 // k)) and int(taus[-1]) - 1000 // k < 0
        if even:
            theirs = diffusers_ddim_end(schedule, net, z.clone(), k)
            assert torch.allclose(mine, theirs, atol=1e-5), (k, float((mine - theirs).abs().max()))
        else:  # the same update, landing on the next listed timestep: DDIM's z' = alpha' x1_hat + sigma' eps_hat
            x = z.clone()
            lands = [int(t) for t in taus[1:]] + [None]
            for tau, land in zip(taus, lands):
                tt = torch.full((len(x),), float(tau), dtype=torch.float64)
                eps = net(x, tt, None)
                a, s = schedule.alpha(tt).view(-1, 1), schedule.sigma(tt).view(-1, 1)
                x1_hat = (x - s * eps) / a
                a2 = 1.0 if land is None else float(schedule.alpha(torch.tensor(float(land), dtype=torch.float64)))
                s2 = 0.0 if land is None else float(schedule.sigma(torch.tensor(float(land), dtype=torch.float64)))
                x = a2 * x1_hat + s2 * eps
            assert torch.allclose(mine, x, atol=1e-6), k


def test_shift_warps_inside_the_start_time():
    """The SD3 shift keeps both ends: a diffusion model's grid starts at t_min whatever the shift."""
    schedule = Schedule.preset("sd15")
    t_min = t_range(schedule)[0]
    for shift in (0.5, 1.0, 3.0):
        grid = sampler_grid("euler", 8, t_start=t_min, shift=shift)
        assert grid[0] == t_min and grid[-1] == 1.0 and torch.all(grid[1:] > grid[:-1]), shift
    assert torch.allclose(
        time_grid(8, shift=3.0, t_start=0.0), 1 - 3 * (1 - time_grid(8)) / (1 + 2 * (1 - time_grid(8)))
    )


def test_ddim_in_fm_coordinates_is_euler():
    """x' = t' x1_hat + (1 - t') eps_hat with x1_hat = x + (1-t) v, eps_hat = x - t v equals x + (t' - t) v."""
    schedule = Schedule.preset("sd2-v")
    velocity_fn = velocity_field(Diff2FlowModel(schedule), gaussian_net(schedule, "v_prediction"), torch.zeros(4, 1))
    x = torch.randn(4, 1, dtype=torch.float64)
    ts = ddim_grid(schedule, 6).tolist()
    manual = x.clone()
    for t, t_next in zip(ts, ts[1:]):
        v = velocity_fn(manual, t)
        data, noise = manual + (1 - t) * v, manual - t * v
        manual = t_next * data + (1 - t_next) * noise
    assert torch.allclose(sample_ddim(velocity_fn, x, ts), manual, atol=1e-12)


def test_guidance_on_output_equals_guidance_on_velocity():
    schedule = Schedule.preset("sd15")
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(3, 8, generator=gen)

    def net(z, tau, cond):  # a toy conditional network, affine in nothing in particular
        return torch.tanh(z * cond.sum(-1, keepdim=True) + tau.view(-1, 1) / 1000)

    cond, uncond = weights[:2].repeat(2, 1)[:3], weights[2:].repeat(3, 1)
    x, t, w = torch.randn(3, 8, generator=gen), 0.4, 5.0
    flow = Diff2FlowModel(schedule)
    v_guided = velocity_field(flow, net, cond, uncond, w)(x, t)
    v_c = velocity_field(flow, net, cond)(x, t)
    v_u = velocity_field(flow, net, uncond)(x, t)
    # v is affine in o: v(o_u + w (o_c - o_u)) = v_u + w (v_c - v_u)   (float32 round-off)
    assert torch.allclose(v_guided, v_u + w * (v_c - v_u), atol=1e-4)
    assert guided(net, uncond, 1.0) is net  # w = 1: only the conditional branch


def test_naive_fm_velocity_is_raw_output_at_linear_timestep():
    seen = []

    def net(z, tau, cond):
        seen.append((z.clone(), tau.clone()))
        return 2 * z

    x = torch.randn(2, 3)
    v = velocity_field(NaiveFMModel(Schedule.preset("sd15")), net, torch.zeros(2, 1))(x, 0.25)
    assert torch.equal(v, 2 * x) and torch.equal(seen[0][0], x)  # unscaled x, raw output
    assert torch.allclose(seen[0][1], torch.full((2,), 0.75 * 999))


# ---------------------------------------------------------------------------- against diffusers' DDIM


@pytest.mark.parametrize("fixture", ["tiny_sd_eps", "tiny_sd_v"])
def test_sample_ddim_matches_diffusers_ddim(fixture, request):
    from diffusers import DDIMScheduler

    from d2f.pipeline import load_pipeline, sample_latents

    pipe = load_pipeline(str(request.getfixturevalue(fixture)))
    prompts = ["a red circle", "a blue square"]
    mine = sample_latents(pipe, prompts, sampler="ddim", steps=10, guidance=3.0, seed=5)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    theirs = pipe(prompts, num_inference_steps=10, guidance_scale=3.0, generator=gens, output_type="latent").images
    # different arithmetic (FM coordinates, float64 coefficients vs diffusers' float32 alphas) on the same
    # ODE steps: only float32 round-off may differ. Random weights give latents of size ~50, so relative 1e-5.
    assert torch.allclose(mine, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max())), (mine - theirs).abs().max()


# ------------------------------------------------------------------------------ zero-shot on the priors


def _prior_pipe(name):
    from d2f.pipeline import load_pipeline

    builtin_prior(name)
    return load_pipeline(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-shapes-eps", "tiny-shapes-v"])
def test_zero_shot_fm_euler_ends_where_ddim_ends(name):
    """From the same point of the covered range (DDIM: z at tau = N-1, diffusers' own DDIMScheduler on the raw
    model; FM: x = z / c(t_min) at t_min, d2f's bridge), 250 steps each, to the data end."""
    from diffusers import DDIMScheduler

    from d2f.pipeline import initial_noise, sample_latents

    pipe = _prior_pipe(name)
    schedule = Schedule.from_config(dict(pipe.scheduler.config))
    t_min = t_range(schedule)[0]
    prompts = ["a red circle", "a green square", "a blue triangle", "a yellow cross"]
    z = initial_noise(pipe, len(prompts), 32, 32, seed=0)
    steps, guidance = 250, 3.0
    fm = sample_latents(
        pipe,
        prompts,
        sampler="euler",
        steps=steps,
        guidance=guidance,
        noise=z / float(scale(schedule, torch.tensor(t_min))),
        ts=time_grid(steps, t_start=t_min),
    )
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False
    )
    ddim = pipe(
        prompts, num_inference_steps=steps, guidance_scale=guidance, latents=z.clone(), output_type="latent"
    ).images
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    diff = rms(fm - ddim) / rms(ddim)
    # Both are first-order discretisations of one ODE (docs/math.md §11) on different grids (uniform in t,
    # uniform in tau), so their gap is O(1/steps): measured 0.21 % (eps) and 0.24 % (v) of the latents' RMS at
    # 500 steps, about twice that at 250. The 2 % bound leaves a 4x margin for priors being retrained, and still
    # separates "same ODE" from a wrong bridge: a wrong scale c, tau or prediction type moves the end point by
    # O(1), tens of percent.
    print(f"{name}: relative RMS gap FM Euler vs DDIM at {steps} steps = {diff:.4f}")
    assert diff < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-shapes-eps", "tiny-shapes-v"])
def test_zero_shot_fm_euler_prompt_accuracy(name):
    from d2f.pipeline import generate
    from d2f.world.metrics import prompt_accuracy
    from d2f.world.shapes import all_prompts

    pipe = _prior_pipe(name)
    prompts = all_prompts() * 2  # 48 images: a true 0.95 reads 0.95 +- 0.03 (binomial standard error)
    # an untouched model samples as objective "diffusion": the FM grid starts at t_min, where DDIM starts
    # (starting at t = 0 instead, through the clamped segment [0, t_min], measured 0.78 on the eps prior)
    acc = {
        s: prompt_accuracy(generate(pipe, prompts, sampler=s, steps=25, guidance=7.5, seed=0), prompts)
        for s in ("euler", "ddim")
    }
    print(f"{name}: 25-step prompt accuracy, FM Euler {acc['euler']:.3f}, DDIM {acc['ddim']:.3f}")
    assert acc["euler"] >= 0.85, acc
