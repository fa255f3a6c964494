"""Property tests of the math core against docs/math.md and closed forms.

Everything runs in float64 unless the test is about another dtype. Section numbers (§N) refer to docs/math.md.
"""

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d2f import (
    PREDICTION_TYPES,
    Schedule,
    UserError,
    bridge_coefficients,
    check_bridge,
    clamp_t,
    diffusion_to_fm,
    estimates,
    fm_to_diffusion,
    fm_velocity,
    from_flowmatch,
    is_clamped,
    output_from_velocity,
    scale,
    t_of_tau,
    t_range,
    tau_of_t,
    to_flowmatch,
    velocity_from_output,
)

F64 = torch.float64
SCHEDULES = {
    "sd15": Schedule.preset("sd15"),
    "sd2-v": Schedule.preset("sd2-v"),
    "linear": Schedule.from_config({"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}),
    "cosine": Schedule.from_config({"beta_schedule": "squaredcos_cap_v2"}),
    "sd2-v-ztsnr": Schedule.preset("sd2-v", zero_terminal_snr=True),
}
schedule_names = st.sampled_from(sorted(SCHEDULES))
unit = st.floats(0.0, 1.0)


def tensor(*values):
    return torch.tensor(values, dtype=F64)


def ideal_output(prediction_type, data, noise, alpha, sigma):
    """What a perfect network outputs for z = alpha * data + sigma * noise."""
    return {"epsilon": noise, "v_prediction": alpha * noise - sigma * data, "sample": data}[prediction_type]


# --- 1. round trips (§4) ------------------------------------------------------------------------------


@given(schedule_names, st.floats(0.0, 999.0))
def test_tau_t_tau_round_trip(name, tau):
    schedule = SCHEDULES[name]
    back = tau_of_t(schedule, t_of_tau(schedule, tensor(tau)))
    assert back.item() == pytest.approx(tau, abs=1e-6)


@given(schedule_names, unit)
def test_t_tau_t_round_trip_inside_covered_range(name, u):
    schedule = SCHEDULES[name]
    t_min, t_max = t_range(schedule)
    t = t_min + u * (t_max - t_min)
    assert t_of_tau(schedule, tau_of_t(schedule, tensor(t))).item() == pytest.approx(t, rel=1e-10, abs=1e-12)


# --- 2. monotone, and the table is diffusers' own (§3-§4) ---------------------------------------------------


@given(schedule_names, st.floats(0.0, 998.0), st.floats(1e-3, 1.0))
def test_t_strictly_decreasing_in_tau(name, tau, step):
    schedule = SCHEDULES[name]
    assert t_of_tau(schedule, tensor(tau + step)) < t_of_tau(schedule, tensor(tau))


@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
        {"beta_schedule": "linear", "num_train_timesteps": 250},
    ],
)
def test_alpha_squared_is_diffusers_alphas_cumprod(config):
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(**config).alphas_cumprod.to(F64)  # diffusers computes in float32
    schedule = Schedule.from_config(config)
    tau = torch.arange(schedule.num_train_timesteps, dtype=F64)
    assert schedule.num_train_timesteps == reference.numel()
    torch.testing.assert_close(schedule.alpha(tau) ** 2, reference, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("preset", ["sd15", "sd2-base", "sd2-v"])
def test_presets_match_diffusers(preset):
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    schedule = Schedule.preset(preset)
    torch.testing.assert_close(schedule.alphas_cumprod, reference.to(F64), rtol=2e-6, atol=1e-7)
    assert schedule.prediction_type == ("v_prediction" if preset == "sd2-v" else "epsilon")


def test_sd15_numbers_of_the_math_page():
    schedule = Schedule.preset("sd15")
    t_min, t_max = t_range(schedule)
    assert t_min == pytest.approx(0.0640, abs=5e-5) and t_max == pytest.approx(0.9717, abs=5e-5)
    # c peaks at sqrt(2) where abar = 1/2, i.e. t = 1/2; docs/math.md §6: tau ~ 354
    tau_half = tau_of_t(schedule, tensor(0.5)).item()
    assert tau_half == pytest.approx(354, abs=0.5)
    assert scale(schedule, tensor(0.5)).item() == pytest.approx(math.sqrt(2), abs=1e-12)


@given(schedule_names, st.integers(0, 998), st.floats(0.0, 1.0))
def test_log_snr_is_piecewise_linear(name, i, w):
    schedule = SCHEDULES[name]
    lo, hi = schedule.log_snr_table[i], schedule.log_snr_table[i + 1]
    if torch.isinf(hi):  # zero terminal SNR: the last segment is linear in t instead (see schedule.py)
        t_lo = torch.sigmoid(lo / 2)
        assert t_of_tau(schedule, tensor(i + w)).item() == pytest.approx((t_lo * (1 - w)).item(), abs=1e-12)
    else:
        assert schedule.log_snr(tensor(i + w)).item() == pytest.approx((lo + w * (hi - lo)).item(), abs=1e-9)


# --- 3. alpha^2 + sigma^2 = 1 (§3) ---------------------------------------------------------------------


@given(schedule_names, st.floats(0.0, 999.0))
def test_alpha_sigma_on_the_unit_circle(name, tau):
    schedule = SCHEDULES[name]
    alpha, sigma = schedule.alpha(tensor(tau)), schedule.sigma(tensor(tau))
    assert (alpha**2 + sigma**2).item() == pytest.approx(1.0, abs=1e-12)
    assert 0 < sigma.item() <= 1 and 0 <= alpha.item() < 1
    if not schedule.zero_terminal_snr:
        assert 0 < alpha.item() and sigma.item() < 1


# --- 4. interpolant alignment (§6) --------------------------------------------------------------------


@settings(max_examples=50)
@given(schedule_names, st.floats(0.0, 999.0), st.integers(0, 2**31 - 1))
def test_scaled_fm_sample_is_the_diffusion_sample(name, tau, seed):
    schedule = SCHEDULES[name]
    g = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(2, 4, 3, 3, generator=g, dtype=F64)
    tau_t = tensor(tau)
    t = t_of_tau(schedule, tau_t)
    x_t = t * data + (1 - t) * noise
    alpha, sigma = schedule.alpha(tau_t), schedule.sigma(tau_t)
    # z = c(t) x_t = alpha data + sigma noise
    z, tau_back = fm_to_diffusion(schedule, x_t.unsqueeze(0), t.reshape(1))
    torch.testing.assert_close(z[0], alpha * data + sigma * noise, rtol=1e-9, atol=1e-9)
    assert tau_back.item() == pytest.approx(tau, abs=1e-6)
    x_back, t_back = diffusion_to_fm(schedule, z, tau_t.reshape(1))
    torch.testing.assert_close(x_back[0], x_t, rtol=1e-9, atol=1e-9)
    assert t_back.item() == pytest.approx(t.item(), abs=1e-12)


@given(schedule_names, unit)
def test_scale_between_one_and_sqrt2(name, t):
    c = scale(SCHEDULES[name], tensor(t)).item()
    assert 1 - 1e-12 <= c <= math.sqrt(2) + 1e-12


# --- 5. velocity from each prediction type (§7) ------------------------------------------------------------


@settings(max_examples=60)
@given(schedule_names, st.floats(0.0, 999.0), st.integers(0, 2**31 - 1), st.sampled_from(PREDICTION_TYPES))
def test_ideal_output_gives_the_true_velocity(name, tau, seed, prediction_type):
    schedule = SCHEDULES[name]
    g = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(2, 1, 4, 2, 2, generator=g, dtype=F64)
    alpha, sigma = schedule.alpha(tensor(tau)), schedule.sigma(tensor(tau))
    if prediction_type == "epsilon" and alpha.item() < 1e-3:
        return  # x1_hat = (z - sigma eps)/alpha: exact in theory, cancellation error ~ 1e-16/alpha in practice
    z = alpha * data + sigma * noise
    o = ideal_output(prediction_type, data, noise, alpha, sigma)
    v = velocity_from_output(o, z, alpha, sigma, prediction_type)
    torch.testing.assert_close(v, data - noise, rtol=1e-7, atol=1e-7)
    # and back: the velocity's native target is the ideal output
    torch.testing.assert_close(output_from_velocity(v, z, alpha, sigma, prediction_type), o, rtol=1e-7, atol=1e-7)


@settings(max_examples=40)
@given(st.floats(0.0, 999.0), st.integers(0, 2**31 - 1))
def test_prediction_types_agree_and_fm_coordinate_forms(tau, seed):
    """Outputs describing the same (x1_hat, eps_hat) give one velocity, and v_hat = (x_t - eps_hat)/t
    = (x1_hat - x_t)/(1 - t) in FM coordinates (§7)."""
    schedule = SCHEDULES["sd15"]
    g = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(2, 1, 8, generator=g, dtype=F64)  # any (x1_hat, eps_hat), not only the truth
    alpha, sigma = schedule.alpha(tensor(tau)), schedule.sigma(tensor(tau))
    z = alpha * data + sigma * noise
    velocities = [
        velocity_from_output(ideal_output(p, data, noise, alpha, sigma), z, alpha, sigma, p) for p in PREDICTION_TYPES
    ]
    for v in velocities[1:]:
        torch.testing.assert_close(v, velocities[0], rtol=1e-8, atol=1e-8)
    t = t_of_tau(schedule, tensor(tau))
    x_t = z / (alpha + sigma)
    torch.testing.assert_close(velocities[0], (x_t - noise) / t, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(velocities[0], (data - x_t) / (1 - t), rtol=1e-8, atol=1e-8)


def test_unknown_prediction_type_is_a_clear_error():
    with pytest.raises(UserError, match="unknown prediction type 'x0'"):
        velocity_from_output(torch.zeros(1), torch.zeros(1), 1.0, 0.0, "x0")
    with pytest.raises(UserError, match="unknown prediction type"):
        Schedule.preset("sd15").__class__(torch.tensor([0.9, 0.5]), prediction_type="eps")


def test_schedule_not_decreasing_in_snr_is_a_clear_error():
    with pytest.raises(UserError, match="not strictly decreasing in SNR.*timestep 2"):
        Schedule.from_betas(torch.tensor([0.1, 0.2, 0.0, 0.3], dtype=F64))
    with pytest.raises(UserError, match="unknown beta_schedule"):
        Schedule.from_config({"beta_schedule": "sigmoid"})


# --- 6. finite everywhere on [0, 1] (§5) ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd15", "sd2-v", "cosine", "linear"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bridge_finite_at_and_beyond_the_ends(name, prediction_type, dtype):
    schedule = SCHEDULES[name]
    t_min, t_max = t_range(schedule)
    t = torch.tensor([0.0, t_min / 2, t_min, 0.5, t_max, (t_max + 1) / 2, 1.0], dtype=dtype)
    x_t = torch.randn(t.numel(), 4, 2, 2).to(dtype)
    output = torch.randn_like(x_t)
    v = fm_velocity(schedule, output, x_t, t, prediction_type)
    assert v.dtype == dtype and torch.isfinite(v).all()
    coef = bridge_coefficients(schedule, t)
    assert all(torch.isfinite(c).all() for c in dataclasses.astuple(coef))
    exact_t = torch.tensor([0.0, t_min / 2, t_min, 0.5, t_max, (t_max + 1) / 2, 1.0], dtype=F64)
    assert is_clamped(schedule, exact_t).tolist() == [True, True, False, False, False, True, True]
    # clamping: beyond the ends the bridge is the bridge at the end
    exact = bridge_coefficients(schedule, exact_t)
    for key in ("tau", "alpha", "sigma", "scale"):
        torch.testing.assert_close(getattr(exact, key)[:2], getattr(exact, key)[2].expand(2))
        torch.testing.assert_close(getattr(exact, key)[-2:], getattr(exact, key)[-3].expand(2))


def test_dtype_and_device_preserved():
    schedule = SCHEDULES["sd15"]
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        t = torch.tensor([0.3, 0.7], dtype=dtype)
        assert t_of_tau(schedule, t * 999).dtype == dtype
        assert tau_of_t(schedule, t).dtype == dtype and scale(schedule, t).dtype == dtype
        assert schedule.alpha(t).dtype == dtype and schedule.sigma(t).dtype == dtype


# --- 7. zero terminal SNR (§12) -------------------------------------------------------------------------


def test_zero_terminal_snr_reaches_pure_noise():
    schedule = SCHEDULES["sd2-v-ztsnr"]
    assert t_range(schedule)[0] == 0.0
    assert schedule.alpha(tensor(999.0)).item() == 0.0 and schedule.sigma(tensor(999.0)).item() == 1.0
    # alpha_0 is kept (Lin et al. 2024, Alg. 1)
    assert schedule.alpha(tensor(0.0)).item() == pytest.approx(SCHEDULES["sd2-v"].alpha(tensor(0.0)).item(), abs=1e-12)
    v = fm_velocity(schedule, torch.randn(3, 4), torch.randn(3, 4), tensor(0.0, 1e-6, 1.0))
    assert torch.isfinite(v).all()


def test_epsilon_on_zero_terminal_snr_is_refused():
    schedule = Schedule.preset("sd15", zero_terminal_snr=True)
    with pytest.raises(UserError, match="epsilon-prediction model is undefined at the noise end"):
        fm_velocity(schedule, torch.randn(1, 4), torch.randn(1, 4), tensor(0.5))
    with pytest.raises(UserError):
        check_bridge(schedule, "epsilon")
    check_bridge(schedule, "v_prediction")


# --- 8. guidance commutes with the conversion (§7) -------------------------------------------------------


@settings(max_examples=30)
@given(st.sampled_from(PREDICTION_TYPES), st.floats(0.0, 999.0), st.floats(0.0, 15.0), st.integers(0, 2**31 - 1))
def test_guidance_on_output_equals_guidance_on_velocity(prediction_type, tau, w, seed):
    schedule = SCHEDULES["sd2-v"]
    g = torch.Generator().manual_seed(seed)
    z, o_u, o_c = torch.randn(3, 1, 6, generator=g, dtype=F64)
    alpha, sigma = schedule.alpha(tensor(tau)), schedule.sigma(tensor(tau))
    v = lambda o: velocity_from_output(o, z, alpha, sigma, prediction_type)  # noqa: E731
    torch.testing.assert_close(v(o_u + w * (o_c - o_u)), v(o_u) + w * (v(o_c) - v(o_u)), rtol=1e-9, atol=1e-8)


# --- 9. the FM ODE is the DDIM ODE (§11) ------------------------------------------------------


def gaussian_network(mu, d, prediction_type):
    """The exact optimal output for data ~ N(mu, d^2) (per element): with z = alpha x1 + sigma eps,
    E[eps|z] = sigma (z - alpha mu) / (alpha^2 d^2 + sigma^2), E[x1|z] = (z - sigma E[eps|z]) / alpha."""

    def net(z, alpha, sigma):
        r = (z - alpha * mu) / (alpha**2 * d**2 + sigma**2)
        eps, x1 = sigma * r, mu + alpha * d**2 * r
        return ideal_output(prediction_type, x1, eps, alpha, sigma)

    return net


def analytic_end(schedule, mu, d, z_start):
    """PF-ODE end point from tau = N-1 to tau = 0 for Gaussian data: with xbar = z/alpha, s = sigma/alpha,
    d xbar/ds = s (xbar - mu)/(d^2 + s^2), so (xbar - mu)/sqrt(d^2 + s^2) is constant along the path."""
    n = schedule.num_train_timesteps
    a0, s0 = schedule.alpha(tensor(0.0)), schedule.sigma(tensor(0.0))
    a1, s1 = schedule.alpha(tensor(n - 1.0)), schedule.sigma(tensor(n - 1.0))
    ratio_0, ratio_1 = s0 / a0, s1 / a1
    xbar = mu + (z_start / a1 - mu) * torch.sqrt(d**2 + ratio_0**2) / torch.sqrt(d**2 + ratio_1**2)
    return a0 * xbar


def fm_euler_end(schedule, net, prediction_type, z_start, steps):
    """Euler in (x, t) from t_min (x = z / c(t_min)) to t_max; returns z = c(t_max) x."""
    t_min, t_max = t_range(schedule)
    ts = torch.linspace(t_min, t_max, steps + 1, dtype=F64)
    x = z_start / scale(schedule, ts[0])
    for t, t_next in zip(ts[:-1], ts[1:]):
        coef = bridge_coefficients(schedule, t)
        z = coef.scale * x
        v = velocity_from_output(net(z, coef.alpha, coef.sigma), z, coef.alpha, coef.sigma, prediction_type)
        x = x + (t_next - t) * v
    return scale(schedule, ts[-1]) * x


def ddim_end(schedule, net, prediction_type, z_start, steps):
    """DDIM (Song et al. 2021, eta = 0) from tau = N-1 to 0: z' = alpha' x1_hat + sigma' eps_hat."""
    n = schedule.num_train_timesteps
    taus = torch.linspace(n - 1, 0, steps + 1, dtype=F64)
    z = z_start
    for tau, tau_next in zip(taus[:-1], taus[1:]):
        alpha, sigma = schedule.alpha(tau), schedule.sigma(tau)
        x1, eps = estimates(net(z, alpha, sigma), z, alpha, sigma, prediction_type)
        z = schedule.alpha(tau_next) * x1 + schedule.sigma(tau_next) * eps
    return z


@settings(max_examples=8, deadline=None)
@given(
    st.sampled_from(["sd15", "sd2-v", "cosine"]),
    st.sampled_from(PREDICTION_TYPES),
    st.floats(-1.0, 1.0),
    st.floats(0.2, 1.5),
    st.integers(0, 2**31 - 1),
)
def test_fm_euler_and_ddim_reach_the_analytic_end_point(name, prediction_type, mu, d, seed):
    schedule = SCHEDULES[name]
    mu, d = tensor(mu), tensor(d)
    z_start = torch.randn(16, generator=torch.Generator().manual_seed(seed), dtype=F64)
    net = gaussian_network(mu, d, prediction_type)
    exact = analytic_end(schedule, mu, d, z_start)
    fm = fm_euler_end(schedule, net, prediction_type, z_start, steps=2000)
    ddim = ddim_end(schedule, net, prediction_type, z_start, steps=2000)
    # Both are first-order discretisations of one ODE, so at K = 2000 both sit O(1/K) from the closed form.
    # Measured worst case (d = 0.2, |z| <= 3): FM Euler 7e-4, DDIM 2.6e-3 (DDIM's uniform tau-grid takes
    # coarse steps in s = sigma/alpha near the noise end). 1e-2 leaves room over hypothesis' draws, and is
    # still far below the O(1) gap a sign, index or clamp error produces.
    torch.testing.assert_close(ddim, exact, rtol=0, atol=1e-2)
    torch.testing.assert_close(fm, exact, rtol=0, atol=1e-2)
    torch.testing.assert_close(fm, ddim, rtol=0, atol=1e-2)


def test_fm_euler_error_shrinks_first_order():
    """Halving the step halves the error (Euler is first order), so the agreement is convergence, not luck."""
    schedule, prediction_type = SCHEDULES["sd15"], "epsilon"
    mu, d = tensor(0.3), tensor(0.5)
    z_start = torch.linspace(-2, 2, 9, dtype=F64)
    net = gaussian_network(mu, d, prediction_type)
    exact = analytic_end(schedule, mu, d, z_start)
    errors = [
        (fm_euler_end(schedule, net, prediction_type, z_start, k) - exact).abs().max().item() for k in (100, 200, 400)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert 1.6 < errors[0] / errors[1] < 2.5 and 1.6 < errors[1] / errors[2] < 2.5


# --- 10. diffusers FlowMatch orientation (§1) -------------------------------------------------------------


@given(unit, st.integers(0, 2**31 - 1))
def test_flowmatch_orientation_round_trip(t, seed):
    g = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(2, 5, generator=g, dtype=F64)
    t = tensor(t)
    sigma_fm, out_fm = to_flowmatch(t, data - noise)
    # diffusers' FlowMatchEuler: x = (1 - sigma) data + sigma noise, model output = noise - data
    torch.testing.assert_close(sigma_fm, 1 - t)
    torch.testing.assert_close(out_fm, noise - data)
    torch.testing.assert_close((1 - sigma_fm) * data + sigma_fm * noise, t * data + (1 - t) * noise)
    t_back, v_back = from_flowmatch(sigma_fm, out_fm)
    torch.testing.assert_close(t_back, t)
    torch.testing.assert_close(v_back, data - noise)


def test_flowmatch_step_agrees_with_diffusers_scheduler():
    """One Euler step of diffusers' FlowMatchEulerDiscreteScheduler with the converted output equals
    d2f's Euler step x + dt * v."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=[0.8, 0.5], device="cpu")
    x, v = torch.randn(2, 1, 4, 4)
    sigma, out = to_flowmatch(torch.tensor(0.2), v)
    stepped = scheduler.step(out, scheduler.timesteps[0], x).prev_sample
    t_next = 1 - scheduler.sigmas[1]
    torch.testing.assert_close(stepped, x + (t_next - (1 - sigma)) * v, rtol=1e-5, atol=1e-6)


# --- configs from folders -------------------------------------------------------------------------------


def test_schedule_from_a_model_folder(tmp_path):
    config = {
        "_class_name": "PNDMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
    }
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    schedule = Schedule.from_pretrained(tmp_path)
    assert schedule.prediction_type == "v_prediction"
    torch.testing.assert_close(schedule.alphas_cumprod, Schedule.preset("sd2-v").alphas_cumprod)
    with pytest.raises(UserError, match="no scheduler config"):
        Schedule.from_pretrained(tmp_path / "nope")


def test_clamp_is_clip_to_covered_range():
    schedule = SCHEDULES["sd15"]
    t_min, t_max = t_range(schedule)
    torch.testing.assert_close(clamp_t(schedule, tensor(0.0, 0.5, 1.0)), tensor(t_min, 0.5, t_max))
