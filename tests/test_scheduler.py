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


# --- image-to-image and inpainting: add_noise, set_begin_index, strength ----------------------------------------------


def _gens(n, seed=3):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _noise(n, seed=3):
    """The noise diffusers' pipelines draw with ``_gens(n, seed)`` when nothing else uses the generators first."""
    return torch.cat([torch.randn(1, 4, 8, 8, generator=g) for g in _gens(n, seed)])


def _img2img(folder, cls, objective):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pipe(_pipe(folder))
    pipe.scheduler = getattr(d2f, cls).from_config(pipe.scheduler.config, objective=objective)
    return pipe


@pytest.mark.parametrize("cls", ["Diff2FlowEulerScheduler", "Diff2FlowHeunScheduler"])
@pytest.mark.parametrize("objective", ["diff2flow", "fm"])
def test_img2img_at_strength_one_equals_text_to_image(tiny_sd_eps, cls, objective):
    """Strength 1 keeps every step (begin_index 0, t_0 = 0) and starts from add_noise at t = 0, i.e.
    0 * data + 1 * noise = the noise itself, which is txt2img's noise * init_noise_sigma (= 1). The image is
    passed as latents so that no VAE sampling draws from the generators first: both pipelines then draw the
    same noise, and the latents are bit-identical."""
    prompts = ["a red circle", "a purple cross"]
    data = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    i2i = _img2img(tiny_sd_eps, cls, objective)
    kwargs = dict(num_inference_steps=5, guidance_scale=4.0, output_type="latent")
    theirs = i2i(prompts, image=data, strength=1.0, generator=_gens(2), **kwargs).images
    txt = _pipe(tiny_sd_eps)
    txt.scheduler = getattr(d2f, cls).from_config(txt.scheduler.config, objective=objective)
    mine = txt(prompts, generator=_gens(2), **kwargs).images
    assert torch.equal(mine, theirs)


@pytest.mark.parametrize("sampler,cls", [("euler", "Diff2FlowEulerScheduler"), ("heun", "Diff2FlowHeunScheduler")])
@pytest.mark.parametrize(
    "fixture,objective",
    [("tiny_sd_eps", "diff2flow"), ("tiny_sd_v", "diff2flow"), ("tiny_sd_eps", "diffusion"), ("tiny_sd_eps", "fm")],
)
def test_img2img_starts_at_the_kept_grid_point(fixture, objective, sampler, cls, request):
    """Strength 0.6 of K = 10 skips k = 4 steps: the pipeline evaluates timesteps[4 * order:] and starts from
    x = t_4 data + (1 - t_4) noise, then runs the rest of the grid; d2f's own loop from that state on
    ``grid[4:]`` gives the same latents."""
    from d2f.pipeline import load_pipeline, sample_latents

    folder = request.getfixturevalue(fixture)
    prompts = ["a red circle", "a purple cross"]
    data = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    i2i = _img2img(folder, cls, objective)
    seen = []

    def record(pipe, i, t, kwargs):
        seen.append(float(t))
        return kwargs

    theirs = i2i(
        prompts,
        image=data,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=4.0,
        generator=_gens(2),
        output_type="latent",
        callback_on_step_end=record,
    ).images
    sched = i2i.scheduler
    k = 4 * sched.order
    assert sched.begin_index == k and seen == sched.timesteps[k:].tolist()
    assert len(seen) == (6 if sampler == "euler" else 11)  # 6 steps: Euler 6 calls, Heun 2 * 6 - 1
    t_s = sched.grid[4]
    assert t_s == pytest.approx(0.4 if objective != "diffusion" else sched.grid[0] + 0.4 * (1 - sched.grid[0]))
    noise = _noise(2)
    start = t_s * data + (1 - t_s) * noise  # the FM interpolant at t_4
    sched.set_timesteps(10)
    sched.set_begin_index(k)
    assert torch.allclose(sched.add_noise(data, noise, sched.timesteps[k : k + 1]), start, atol=1e-6)
    mine = sample_latents(
        load_pipeline(str(folder)), prompts, sampler, guidance=4.0, objective=objective, noise=start, ts=sched.grid[4:]
    )
    assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_add_noise_picks_the_grid_point_after_begin_index_and_step_index():
    """With K = 50 the diff2flow grid has t = 0, 0.02, 0.04, 0.06 below t_min (SD: 0.064), all at tau = 999: the
    timestep alone does not say which; the first point at or after begin_index (before stepping) or step_index
    (after, as inpainting calls it) does. An off-grid timestep is read through the time map t(tau)."""
    sched = d2f.Diff2FlowEulerScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sched.set_timesteps(50)
    assert (sched.timesteps[:4] == 999).all()
    data, noise = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)

    def interpolant(t):
        return t * data + (1 - t) * noise

    tau = sched.timesteps[1:2]
    assert torch.equal(sched.add_noise(data, noise, tau), noise)  # no begin index: the first point, t = 0
    sched.set_begin_index(1)
    assert torch.allclose(sched.add_noise(data, noise, tau.repeat(2)), interpolant(0.02), atol=1e-6)
    sched.set_begin_index(0)
    for _ in range(2):  # two steps taken: the next evaluation is at t_2 = 0.04
        sched.step(torch.zeros_like(data), sched.timesteps[0], data)
    assert torch.allclose(sched.add_noise(data, noise, tau), interpolant(0.04), atol=1e-6)
    # later grid points match by value; an off-grid timestep goes through t(tau)
    assert torch.allclose(sched.add_noise(data, noise, sched.timesteps[30:31]), interpolant(0.6), atol=1e-6)
    t = float(d2f.t_of_tau(sched.schedule, torch.tensor(500.0, dtype=torch.float64)))
    assert torch.allclose(sched.add_noise(data, noise, torch.tensor([500])), interpolant(t), atol=1e-6)
    # half precision in, half precision out
    assert sched.add_noise(data.half(), noise.half(), tau).dtype == torch.float16


def test_add_noise_of_a_diffusion_model_is_the_interpolant_at_t_min():
    """An untouched diffusion model starts at t_min. add_noise gives the FM state there, t_min x1 + (1 - t_min) x0
    = z / c(t_min) for DDIM's z = alpha_{N-1} x1 + sigma_{N-1} x0 (what diffusers' DDIM img2img starts from),
    not txt2img's x0 / c(t_min), which drops the signal (DDIM's approximation): strength 1 there differs from
    txt2img by about t_min x1, as it does with diffusers' own DDIMScheduler."""
    sched = d2f.Diff2FlowEulerScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, objective="diffusion"
    )
    sched.set_timesteps(10)
    t_min = d2f.t_range(sched.schedule)[0]
    assert sched.grid[0] == t_min and sched.timesteps[0] == 999
    data, noise = torch.randn(1, 4, 2, 2, dtype=torch.float64), torch.randn(1, 4, 2, 2, dtype=torch.float64)
    x = sched.add_noise(data, noise, sched.timesteps[:1])
    assert torch.allclose(x, t_min * data + (1 - t_min) * noise)
    alpha, sigma = sched.schedule.alpha(torch.tensor(999.0)), sched.schedule.sigma(torch.tensor(999.0))
    assert torch.allclose(x, (alpha * data + sigma * noise) / (alpha + sigma))


@pytest.mark.parametrize("cls,strength", [("Diff2FlowEulerScheduler", 1.0), ("Diff2FlowEulerScheduler", 0.75),
                                          ("Diff2FlowHeunScheduler", 0.75)])  # fmt: skip
def test_inpaint_pipeline_keeps_the_unmasked_region(tiny_sd_eps, cls, strength):
    """The inpainting pipeline (4-channel UNet) blends after every step: unmasked latents = add_noise(image
    latents, noise, timesteps[i + 1]), which must be the FM state at the *next* evaluation point (K = 20: t = 0
    and 0.05 share tau = 999, so the next point is found from step_index), and the image latents at the end."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import retrieve_latents
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pipe(_pipe(tiny_sd_eps))
    pipe.scheduler = getattr(d2f, cls).from_config(pipe.scheduler.config)
    pixels = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(5))
    image = Image.fromarray((pixels * 255).to(torch.uint8).numpy())
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[:, :16] = 255  # repaint the left half; latents 8x8: columns 0-3
    states = []

    def record(p, i, t, kwargs):
        states.append(kwargs["latents"].clone())
        return kwargs

    out = pipe(
        "a red circle",
        image=image,
        mask_image=Image.fromarray(mask.numpy()),
        strength=strength,
        num_inference_steps=20,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(3),
        output_type="latent",
        callback_on_step_end=record,
    ).images
    # the pipeline's own draws from its generator: the VAE sample of the image, then the noise
    g = torch.Generator().manual_seed(3)
    init = pipe.image_processor.preprocess(image, height=32, width=32).float()
    with torch.no_grad():
        data = retrieve_latents(pipe.vae.encode(init), generator=g) * pipe.vae.config.scaling_factor
    noise = torch.randn(1, 4, 8, 8, generator=g)
    sched = pipe.scheduler
    begin = sched.begin_index or 0
    assert len(states) == len(sched.timesteps) - begin
    keep = (slice(None), slice(None), slice(None), slice(4, None))
    for i, state in enumerate(states[:-1]):
        t = sched.points[begin + i + 1][0]
        assert torch.allclose(state[keep], (t * data + (1 - t) * noise)[keep], atol=1e-5), (i, t)
    assert torch.allclose(out[keep], data[keep], atol=1e-6)
    assert torch.isfinite(out).all() and not torch.allclose(out[..., :4], data[..., :4], atol=1e-2)


# --- custom grids: timesteps= and sigmas= through the pipeline --------------------------------------------------------


@pytest.mark.parametrize("sampler,cls", [("euler", "Diff2FlowEulerScheduler"), ("heun", "Diff2FlowHeunScheduler")])
def test_custom_timesteps_and_sigmas_through_the_pipeline(tiny_sd_eps, sampler, cls):
    """``pipe(..., timesteps=[...])``: decreasing diffusion timesteps, t_k = t(tau_k), then t = 1; the noise is z at
    tau_0 (init_noise_sigma = 1 / c(t_0)). ``pipe(..., sigmas=[...])``: FM noise levels, t_k = 1 - sigma_k. Both
    equal d2f's own loop on that grid."""
    from d2f.pipeline import load_pipeline, sample_latents

    prompts = ["a red circle", "a purple cross"]
    schedule = Schedule.from_config(dict(_pipe(tiny_sd_eps).scheduler.config))
    taus = [999, 700, 400, 100]
    grids = {
        "timesteps": d2f.t_of_tau(schedule, torch.tensor(taus, dtype=torch.float64)).tolist() + [1.0],
        "sigmas": [0.0, 0.3, 0.6, 0.8, 1.0],
    }
    for name, given in [("timesteps", taus), ("sigmas", [1.0, 0.7, 0.4, 0.2])]:
        pipe = _pipe(tiny_sd_eps)
        pipe.scheduler = getattr(d2f, cls).from_config(pipe.scheduler.config)
        kwargs = {name: given}
        theirs = pipe(prompts, guidance_scale=4.0, generator=_gens(2), output_type="latent", **kwargs).images
        sched = pipe.scheduler
        assert sched.grid == pytest.approx(grids[name], abs=1e-12) and sched.num_inference_steps == 4
        t0 = grids[name][0]
        assert sched.init_noise_sigma == pytest.approx(1.0 if t0 == 0 else 1 / float(scale(schedule, torch.tensor(t0))))
        if name == "timesteps":
            assert torch.allclose(sched.timesteps[:: sched.order], torch.tensor(taus, dtype=torch.float32), atol=1e-3)
        mine = sample_latents(load_pipeline(str(tiny_sd_eps)), prompts, sampler, guidance=4.0, seed=3, ts=grids[name])
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max())), name


@pytest.mark.parametrize(
    "kwargs,objective,message",
    [
        (dict(timesteps=[400, 600, 200]), "diff2flow", "strictly decreasing"),
        (dict(timesteps=[1500, 10]), "diff2flow", r"lie in \[0, 999\]"),
        (dict(timesteps=[999, 500, 0]), "fm", "above 0"),
        (dict(sigmas=[1.0, 0.5, 0.0]), "diff2flow", r"lie in \(0, 1\]"),
        (dict(sigmas=[0.2, 0.5]), "diff2flow", "strictly decreasing"),
        (dict(sigmas=[1.0, float("nan")]), "diff2flow", "finite"),
    ],
)
def test_bad_custom_grids_are_refused_with_what_to_pass(tiny_sd_eps, kwargs, objective, message):
    pipe = _pipe(tiny_sd_eps)
    pipe.scheduler = d2f.Diff2FlowEulerScheduler.from_config(pipe.scheduler.config, objective=objective)
    with pytest.raises(UserError, match=message) as err:
        pipe("a red circle", guidance_scale=4.0, output_type="latent", **kwargs)
    assert "sigmas=[1.0, 0.75, 0.5, 0.25]" in str(err.value)  # says what to pass instead
    with pytest.raises(UserError, match="not both"):
        pipe.scheduler.set_timesteps(timesteps=[999, 500], sigmas=[1.0, 0.5])
    with pytest.raises(UserError, match="num_inference_steps"):
        pipe.scheduler.set_timesteps()


# --- configs and grids ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["Diff2FlowEulerScheduler", "Diff2FlowHeunScheduler"])
def test_flow_matching_config_is_refused(cls, tmp_path):
    """SD3/Flux's FlowMatch schedulers have no betas; their config would silently give the default linear betas."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FlowMatchHeunDiscreteScheduler,
    )

    sched_cls = getattr(d2f, cls)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    without_name = {k: v for k, v in flow.config.items() if k != "_class_name"}
    flow.save_pretrained(tmp_path)
    configs = [
        flow.config,  # by _class_name
        without_name,  # by FlowMatch-only keys
        FlowMatchHeunDiscreteScheduler().config,  # only num_train_timesteps and shift
        {"num_train_timesteps": 1000, "shift": 3.0},  # shift, no betas
        DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction").config,  # SANA-style
    ]
    for config in configs:
        with pytest.raises(UserError, match="already a flow model and needs no Diff2Flow scheduler"):
            sched_cls.from_config(config)
    with pytest.raises(UserError, match="already a flow model"):
        sched_cls.from_pretrained(tmp_path)
    # diffusion configs (which may carry use_dynamic_shifting=False etc.) are still accepted
    for config in [DPMSolverMultistepScheduler().config, EulerDiscreteScheduler(beta_schedule="scaled_linear").config]:
        assert sched_cls.from_config(config).config.beta_schedule == config["beta_schedule"]


@pytest.mark.parametrize("objective", ["diff2flow", "fm", "diffusion"])
def test_shifted_grid_starts_where_the_objective_starts(objective):
    """``shift != 1`` warps the grid inside [t_start, 1]: a diffusion model still starts at t_min (tau = 999, the
    noise scaled by 1 / c(t_min)), diff2flow and fm at t = 0."""
    from d2f.sampling import time_grid

    sched = d2f.Diff2FlowEulerScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, objective=objective, shift=3.0
    )
    sched.set_timesteps(8)
    t_start = d2f.t_range(sched.schedule)[0] if objective == "diffusion" else 0.0
    assert sched.grid[0] == t_start and sched.grid[-1] == 1.0 and sched.points[0][0] == t_start
    assert sched.grid == time_grid(8, 3.0, t_start).tolist()
    assert sched.grid[1] - sched.grid[0] < (1 - t_start) / 8  # shifted: denser at the noise end
    assert sched.timesteps[0] == 999
    c = float(scale(sched.schedule, torch.tensor(t_start, dtype=torch.float64)))
    assert sched.init_noise_sigma == pytest.approx(1 / c if objective == "diffusion" else 1.0)
