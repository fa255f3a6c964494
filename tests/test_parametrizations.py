"""The parametrisations (docs/math.md §8, §9.1): their losses against a hand computation, their velocity
and loss written once, the objective registry, a few training steps of each, and a 2-step ``d2f train`` of
each ablation sampled as its run says.

The hand computation is independent of d2f's schedule code: alpha, sigma, the time map and its inverse
are recomputed here in numpy float64 straight from the betas (§3-§5), and the loss from the table of §7.
The "network" of the hand check is a fixed function of (z, timestep, cond) that records what it was called
with, so a wrong input, a wrong (or rounded) timestep or a wrong target changes the number.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d2f.core.schedule import Schedule, make_betas
from d2f.errors import UserError
from d2f.objectives import DIFFUSION_LOSSES, OBJECTIVES, check_objective, parametrization, sampled_objective
from d2f.parametrizations import (
    Diff2FlowDiscreteModel,
    Diff2FlowModel,
    Diff2FlowNoScaleModel,
    Diff2FlowUnweightedModel,
    DiffusionFMTimeModel,
    DiffusionModel,
    NaiveFMModel,
    NaiveFMRawTModel,
)

N = 1000
ABLATIONS = ("diffusion-fm-t", "diff2flow-discrete", "diff2flow-unweighted", "diff2flow-no-scale")


def sd_tables():
    """abar, lam for SD's schedule (scaled_linear 0.00085-0.012), numpy float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, N) ** 2
    abar = np.cumprod(1 - betas)
    return abar, np.log(abar / (1 - abar))


def hand_bridge(t):
    """(tau, alpha, sigma, c) of FM time t by docs/math.md §4-§5: clamp t to [t(N-1), t(0)], lam = 2 logit(t),
    tau by linear interpolation inside the lam segment, alpha = sqrt(sigmoid(lam)), c = alpha + sigma."""
    _, lam_table = sd_tables()
    t_table = 1 / (1 + np.exp(-lam_table / 2))
    t = np.clip(t, t_table[-1], t_table[0])
    lam = 2 * np.log(t / (1 - t))
    tau = np.empty_like(t)
    for k, l in enumerate(lam):
        i = min(max(int(np.searchsorted(-lam_table, -l)) - 1, 0), N - 2)
        tau[k] = i + (l - lam_table[i]) / (lam_table[i + 1] - lam_table[i])
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    return tau, alpha, sigma, alpha + sigma


class RecordingNet:
    """o = 0.7 z + 1e-3 * timestep + mean(cond): depends on every input; remembers its last call."""

    def __call__(self, z, timestep, cond):
        self.z, self.timestep = z.detach().clone(), timestep.detach().clone()
        return 0.7 * z + 1e-3 * timestep.reshape(-1, 1, 1, 1) + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(5, 4, 3, 3, generator=g)
    noise = torch.randn(5, 4, 3, 3, generator=g)
    cond = torch.randn(5, 2, 6, generator=g)
    t = torch.tensor([0.0, 0.03, 0.5, 0.9, 1.0])  # both ends lie outside [t_min, t_max]: clamped
    return data, noise, cond, t


def as64(x):
    return x.double().numpy()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diff2flow_loss_is_the_hand_computation(batch, prediction_type):
    data, noise, cond, t = batch
    net = RecordingNet()
    out = Diff2FlowModel(Schedule.preset("sd15"), prediction_type).loss(net, data, noise, t, cond)

    x1, x0, tt = as64(data), as64(noise), t.double().numpy()
    tau, alpha, sigma, c = hand_bridge(tt)
    b = (slice(None), None, None, None)
    x_t = tt[b] * x1 + (1 - tt[b]) * x0  # x_t = t x1 + (1-t) x0
    z = c[b] * x_t  # z = c(t) x_t
    np.testing.assert_allclose(as64(net.z), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as64(net.timestep), tau, rtol=1e-5, atol=1e-3)  # fractional, not rounded
    o = 0.7 * z + 1e-3 * tau[b] + as64(cond).mean(axis=(1, 2))[b]
    a, s = alpha[b], sigma[b]
    x1_hat, eps_hat = {
        "epsilon": ((z - s * o) / a, o),
        "v_prediction": (a * z - s * o, s * z + a * o),
        "sample": (o, (z - a * o) / s),
    }[prediction_type]
    per_sample = ((x1_hat - eps_hat - (x1 - x0)) ** 2).reshape(5, -1).mean(1)  # ||v_hat - (x1 - x0)||^2
    np.testing.assert_allclose(as64(out.per_sample), per_sample, rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), per_sample.mean(), rtol=1e-4)
    np.testing.assert_allclose(as64(out.t), tt)


def test_fm_loss_is_the_hand_computation(batch):
    data, noise, cond, t = batch
    net = RecordingNet()
    out = NaiveFMModel(Schedule.preset("sd15")).loss(net, data, noise, t, cond)
    x1, x0, tt = as64(data), as64(noise), t.double().numpy()
    b = (slice(None), None, None, None)
    x_t = tt[b] * x1 + (1 - tt[b]) * x0
    timestep = (1 - tt) * (N - 1)  # naive FM: (1-t)(N-1), unscaled x_t
    np.testing.assert_allclose(as64(net.z), x_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as64(net.timestep), timestep, rtol=1e-6)
    o = 0.7 * x_t + 1e-3 * timestep[b] + as64(cond).mean(axis=(1, 2))[b]
    per_sample = ((o - (x1 - x0)) ** 2).reshape(5, -1).mean(1)
    np.testing.assert_allclose(as64(out.per_sample), per_sample, rtol=1e-5)
    np.testing.assert_allclose(float(out.loss), per_sample.mean(), rtol=1e-5)


def test_fm_raw_t_passes_the_raw_fm_time_as_timestep(batch):
    """The paper code's naive FM: timestep = t itself (t = 0, pure noise, is timestep 0), unscaled x_t,
    raw output as velocity; d2f's fm maps the same t to (1 - t)(N - 1)."""
    data, noise, cond, t = batch
    schedule = Schedule.preset("sd15")
    net = RecordingNet()
    raw = NaiveFMRawTModel(schedule)
    out = raw.loss(net, data, noise, t, cond)
    x1, x0, tt = as64(data), as64(noise), t.double().numpy()
    b = (slice(None), None, None, None)
    x_t = tt[b] * x1 + (1 - tt[b]) * x0
    np.testing.assert_allclose(as64(net.z), x_t, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(as64(net.timestep), tt, rtol=1e-6)
    o = 0.7 * x_t + 1e-3 * tt[b] + as64(cond).mean(axis=(1, 2))[b]
    np.testing.assert_allclose(as64(out.per_sample), ((o - (x1 - x0)) ** 2).reshape(5, -1).mean(1), rtol=1e-5)
    ends = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    _, ts = raw.network_input(torch.zeros(3, 1), ends)
    _, ts_fm = NaiveFMModel(schedule).network_input(torch.zeros(3, 1), ends)
    assert ts.tolist() == [0.0, 0.5, 1.0] and ts_fm.tolist() == [N - 1, (N - 1) / 2, 0.0]
    assert raw.t_start == 0.0 and raw.sampler == "euler" and parametrization("fm-raw-t", schedule).name == "fm-raw-t"


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_is_the_hand_computation(batch, prediction_type):
    data, noise, cond, _ = batch
    i = torch.tensor([0.0, 1.0, 354.0, 700.0, 999.0])
    net = RecordingNet()
    out = DiffusionModel(Schedule.preset("sd15"), prediction_type).loss(net, data, noise, i, cond)
    abar, _ = sd_tables()
    ii = i.long().numpy()
    b = (slice(None), None, None, None)
    a, s = np.sqrt(abar[ii])[b], np.sqrt(1 - abar[ii])[b]
    x1, eps = as64(data), as64(noise)
    z = a * x1 + s * eps  # z = alpha_i x1 + sigma_i eps
    np.testing.assert_allclose(as64(net.z), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.timestep.numpy(), i.numpy())
    o = 0.7 * z + 1e-3 * ii[b] + as64(cond).mean(axis=(1, 2))[b]
    target = {"epsilon": eps, "v_prediction": a * eps - s * x1, "sample": x1}[prediction_type]
    per_sample = ((o - target) ** 2).reshape(5, -1).mean(1)
    np.testing.assert_allclose(as64(out.per_sample), per_sample, rtol=1e-4)
    # logged at the FM time of its timestep, t(i) = alpha_i / (alpha_i + sigma_i)
    np.testing.assert_allclose(as64(out.t), (a / (a + s)).ravel(), rtol=1e-5)


def test_objectives_are_chosen_by_name_from_one_registry():
    schedule = Schedule.preset("sd15")
    assert set(OBJECTIVES) == {"diff2flow", "fm", "fm-raw-t", "diffusion", *ABLATIONS}
    for name in OBJECTIVES:
        flow = parametrization(name, schedule)
        assert flow.name == name and flow.prediction_type == "epsilon"
    assert parametrization("diffusion", schedule, "v_prediction").prediction_type == "v_prediction"
    with pytest.raises(UserError, match="unknown objective 'flow'.*diff2flow, fm, fm-raw-t, diffusion, diffusion-fm-t"):
        check_objective("flow")
    with pytest.raises(UserError, match="unknown prediction type"):
        parametrization("diff2flow", schedule, "velocity")


@pytest.mark.parametrize("cls", [Diff2FlowModel, NaiveFMModel, Diff2FlowNoScaleModel])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_fm_loss_is_the_error_of_the_sampling_velocity(batch, cls, prediction_type):
    """Loss and sampler use one velocity: the loss equals ||velocity(net, x_t, t) - (x1 - x0)||^2 computed
    through the object's own ``velocity`` (what the samplers integrate), for every t in the batch."""
    data, noise, cond, t = batch
    flow = cls(Schedule.preset("sd15"), prediction_type)
    net = RecordingNet()
    out = flow.loss(net, data, noise, t, cond)
    tt = t.reshape(-1, 1, 1, 1)
    v = torch.stack(
        [
            flow.velocity(net, (tt * data + (1 - tt) * noise)[k : k + 1], float(t[k]), cond[k : k + 1])[0]
            for k in range(len(t))
        ]
    )
    expected = (v - (data - noise)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out.per_sample, expected, rtol=1e-5, atol=1e-6)


def test_diffusion_model_samples_through_the_bridge_from_t_min():
    schedule = Schedule.preset("sd15")
    diffusion, bridge = DiffusionModel(schedule), Diff2FlowModel(schedule)
    assert (diffusion.sampler, bridge.sampler) == ("ddim", "euler")
    assert bridge.t_start == 0.0 and NaiveFMModel(schedule).t_start == 0.0
    assert diffusion.t_start == pytest.approx(0.06404, abs=1e-4)  # t_min of SD's schedule
    x, o = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(diffusion.velocity_from_output(o, x, 0.3), bridge.velocity_from_output(o, x, 0.3))


def test_sample_time():
    schedule = Schedule.preset("sd15")
    g = torch.Generator().manual_seed(0)
    t = Diff2FlowModel(schedule).sample_time(4000, "uniform", g)
    assert t.min() >= 0 and t.max() <= 1 and abs(t.mean() - 0.5) < 0.02
    ln = NaiveFMModel(schedule).sample_time(4000, "logit-normal", g)
    # t = sigmoid(n): the middle is denser than under uniform sampling
    assert ((ln > 0.25) & (ln < 0.75)).float().mean() > 0.65
    i = DiffusionModel(schedule).sample_time(4000, "uniform", g)
    assert torch.equal(i, i.round()) and i.min() >= 0 and i.max() <= N - 1 and len(i.unique()) > 900
    with pytest.raises(UserError, match="unknown t sampling"):
        Diff2FlowModel(schedule).sample_time(2, "beta", g)


@pytest.mark.parametrize("objective", ["diff2flow", "fm", "fm-raw-t", "diffusion", *ABLATIONS])
def test_a_few_steps_lower_each_objective(tiny_sd_eps, objective):
    """12 AdamW steps of the tiny UNet on one fixed batch (fixed noise and times) lower that batch's loss."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_eps, subfolder="unet")
    schedule = Schedule.from_pretrained(tiny_sd_eps)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(4, 4, 8, 8, generator=g)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    cond = torch.randn(4, 16, 32, generator=g)
    flow = parametrization(objective, schedule, "epsilon")
    time = flow.sample_time(4, "uniform", g)

    def net(z, timestep, c):
        return unet(z, timestep, encoder_hidden_states=c).sample

    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        out = flow.loss(net, data, noise, time, cond)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


# --- the ablations (docs/math.md §9.1) ---------------------------------------------------------------------


def hand_native(z, timestep, cond, a, s, x1, eps, prediction_type):
    """(o, ||o - target||^2 per sample) of RecordingNet at (z, timestep), target at (alpha, sigma) = (a, s)."""
    b = (slice(None), None, None, None)
    o = 0.7 * z + 1e-3 * timestep[b] + as64(cond).mean(axis=(1, 2))[b]
    target = {"epsilon": eps, "v_prediction": a[b] * eps - s[b] * x1, "sample": x1}[prediction_type]
    return o, ((o - target) ** 2).reshape(len(z), -1).mean(1)


def hand_weight(t, c, prediction_type):
    """w(t) of §9: 1/t^2, c^2, 1/(1-t)^2."""
    return {"epsilon": 1 / t**2, "v_prediction": c**2, "sample": 1 / (1 - t) ** 2}[prediction_type]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_fm_t_is_the_native_loss_at_tau_of_t(batch, prediction_type):
    """diffusion-fm-t: z = alpha x1 + sigma eps and the native target at tau(t_eff), fractional; t as drawn."""
    data, noise, cond, t = batch
    net = RecordingNet()
    out = DiffusionFMTimeModel(Schedule.preset("sd15"), prediction_type).loss(net, data, noise, t, cond)
    x1, eps, tt = as64(data), as64(noise), t.double().numpy()
    tau, alpha, sigma, _ = hand_bridge(tt)
    b = (slice(None), None, None, None)
    z = alpha[b] * x1 + sigma[b] * eps
    np.testing.assert_allclose(as64(net.z), z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as64(net.timestep), tau, rtol=1e-5, atol=1e-3)
    _, per_sample = hand_native(z, tau, cond, alpha, sigma, x1, eps, prediction_type)
    np.testing.assert_allclose(as64(out.per_sample), per_sample, rtol=1e-4)
    np.testing.assert_allclose(as64(out.t), tt)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diff2flow_discrete_is_the_diffusion_loss_weighted_by_w_of_t_i(batch, prediction_type):
    """diff2flow-discrete at the integer timestep i: the network sees exactly what diffusion's does, and the loss
    is diffusion's times w(t(i)) (epsilon: 1 / t(i)^2), which is also ||u_hat - (x1 - eps)||^2 by §7's table."""
    data, noise, cond, _ = batch
    i = torch.tensor([0.0, 1.0, 354.0, 700.0, 999.0])
    schedule = Schedule.preset("sd15")
    net = RecordingNet()
    out = Diff2FlowDiscreteModel(schedule, prediction_type).loss(net, data, noise, i, cond)
    abar, _ = sd_tables()
    ii = i.long().numpy()
    a, s = np.sqrt(abar[ii]), np.sqrt(1 - abar[ii])
    b = (slice(None), None, None, None)
    x1, eps = as64(data), as64(noise)
    z = a[b] * x1 + s[b] * eps
    np.testing.assert_allclose(as64(net.z), z, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.timestep.numpy(), i.numpy())  # the integer timestep, as diffusion's
    o, native = hand_native(z, ii.astype(float), cond, a, s, x1, eps, prediction_type)
    t_i, c = a / (a + s), a + s
    np.testing.assert_allclose(as64(out.per_sample), hand_weight(t_i, c, prediction_type) * native, rtol=1e-4)
    x1_hat, eps_hat = {
        "epsilon": ((z - s[b] * o) / a[b], o),
        "v_prediction": (a[b] * z - s[b] * o, s[b] * z + a[b] * o),
        "sample": (o, (z - a[b] * o) / s[b]),
    }[prediction_type]
    velocity_error = ((x1_hat - eps_hat - (x1 - eps)) ** 2).reshape(5, -1).mean(1)
    np.testing.assert_allclose(as64(out.per_sample), velocity_error, rtol=1e-4)
    np.testing.assert_allclose(as64(out.t), t_i, rtol=1e-5)
    diffusion = DiffusionModel(schedule, prediction_type).loss(RecordingNet(), data, noise, i, cond)
    torch.testing.assert_close(
        out.per_sample,
        diffusion.per_sample * torch.tensor(hand_weight(t_i, c, prediction_type)).float(),
        rtol=1e-4,
        atol=0,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diff2flow_unweighted_is_the_diffusion_loss_inside_and_diff2flow_over_w_at_the_ends(batch, prediction_type):
    """diff2flow-unweighted = Diff2Flow's per-sample loss / w(t_eff): inside the covered range the native loss at
    tau(t) on z = c(t) x_t = alpha x1 + sigma eps; on the clamped ends Diff2Flow's loss over w at the end."""
    data, noise, cond, t = batch
    schedule = Schedule.preset("sd15")
    net = RecordingNet()
    out = Diff2FlowUnweightedModel(schedule, prediction_type).loss(net, data, noise, t, cond)
    x1, eps, tt = as64(data), as64(noise), t.double().numpy()
    tau, alpha, sigma, c = hand_bridge(tt)
    b = (slice(None), None, None, None)
    np.testing.assert_allclose(as64(net.z), c[b] * (tt[b] * x1 + (1 - tt[b]) * eps), rtol=1e-5, atol=1e-5)
    _, native = hand_native(alpha[b] * x1 + sigma[b] * eps, tau, cond, alpha, sigma, x1, eps, prediction_type)
    inside = np.array([False, False, True, True, False])  # 0 and 0.03 < t_min, 1 > t_max
    np.testing.assert_allclose(as64(out.per_sample)[inside], native[inside], rtol=1e-4)
    t_eff = alpha / (alpha + sigma)
    d2f_loss = Diff2FlowModel(schedule, prediction_type).loss(RecordingNet(), data, noise, t, cond)
    expected = as64(d2f_loss.per_sample) / hand_weight(t_eff, c, prediction_type)
    np.testing.assert_allclose(as64(out.per_sample), expected, rtol=1e-4)
    assert not np.allclose(as64(out.per_sample)[~inside], native[~inside], rtol=1e-2)  # the ends differ
    np.testing.assert_allclose(float(out.loss), expected.mean(), rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diff2flow_no_scale_feeds_x_t_and_reads_the_output_at_c_x_t(batch, prediction_type):
    data, noise, cond, t = batch
    net = RecordingNet()
    out = Diff2FlowNoScaleModel(Schedule.preset("sd15"), prediction_type).loss(net, data, noise, t, cond)
    x1, x0, tt = as64(data), as64(noise), t.double().numpy()
    tau, alpha, sigma, c = hand_bridge(tt)
    b = (slice(None), None, None, None)
    x_t = tt[b] * x1 + (1 - tt[b]) * x0
    np.testing.assert_allclose(as64(net.z), x_t, rtol=1e-5, atol=1e-6)  # no c(t)
    np.testing.assert_allclose(as64(net.timestep), tau, rtol=1e-5, atol=1e-3)
    o = 0.7 * x_t + 1e-3 * tau[b] + as64(cond).mean(axis=(1, 2))[b]
    z, a, s = c[b] * x_t, alpha[b], sigma[b]
    x1_hat, eps_hat = {
        "epsilon": ((z - s * o) / a, o),
        "v_prediction": (a * z - s * o, s * z + a * o),
        "sample": (o, (z - a * o) / s),
    }[prediction_type]
    per_sample = ((x1_hat - eps_hat - (x1 - x0)) ** 2).reshape(5, -1).mean(1)
    np.testing.assert_allclose(as64(out.per_sample), per_sample, rtol=1e-4)


def test_each_ablation_samples_as_its_loss_says():
    """Which parametrisation samples a run (``sampled_objective``), from where and with which default sampler."""
    schedule = Schedule.preset("sd15")
    t_min = pytest.approx(0.06404, abs=1e-4)
    expected = {
        "diffusion-fm-t": ("diffusion", "ddim", t_min),
        "diff2flow-discrete": ("diff2flow-discrete", "euler", t_min),
        "diff2flow-unweighted": ("diff2flow", "euler", 0.0),
        "diff2flow-no-scale": ("diff2flow-no-scale", "euler", 0.0),
    }
    for name, (samples_as, sampler, t_start) in expected.items():
        flow = parametrization(name, schedule)
        assert flow.name == name and (flow.sampler, flow.t_start) == (sampler, t_start)
        assert sampled_objective({"objective": name}) == samples_as
        assert sampled_objective({"objective": "reflow", "reflow_objective": name}) == samples_as
    assert DIFFUSION_LOSSES == {"diffusion", "diffusion-fm-t"}
    # the samplers' velocity of a run equals its own parametrisation's where it samples as another one
    x, o = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    for name in ("diffusion-fm-t", "diff2flow-unweighted"):
        other = parametrization(sampled_objective({"objective": name}), schedule)
        torch.testing.assert_close(
            parametrization(name, schedule).velocity_from_output(o, x, 0.3), other.velocity_from_output(o, x, 0.3)
        )
    g = torch.Generator().manual_seed(0)
    i = parametrization("diff2flow-discrete", schedule).sample_time(2000, "uniform", g)
    assert torch.equal(i, i.round()) and i.min() >= 0 and i.max() <= N - 1
    t = parametrization("diffusion-fm-t", schedule).sample_time(2000, "logit-normal", g)
    assert 0 < t.min() and t.max() < 1 and ((t > 0.25) & (t < 0.75)).float().mean() > 0.65


def oracle_net(schedule, data, noise, prediction_type, scaled=True):
    """The ideal network for this batch: at (z, tau) it outputs the true target of the diffusion sample at tau
    (eps, v or x1 of the batch's own data and noise), whatever z is; the optimum of every objective."""

    def net(z, timestep, cond):
        tau = timestep.double().cpu()
        a = per(schedule.alpha(tau).float(), data)
        s = per(schedule.sigma(tau).float(), data)
        return {"epsilon": noise, "v_prediction": a * noise - s * data, "sample": data}[prediction_type]

    return net


def per(x, like):
    return x.reshape(-1, *([1] * (like.dim() - 1))).to(like)


FM_TIME = ("diff2flow", "diffusion-fm-t", "diff2flow-unweighted", "diffusion", "diff2flow-discrete")


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["epsilon", "v_prediction", "sample"]),
    st.floats(0.07, 0.97),
    st.integers(0, N - 1),
    st.integers(0, 2**31 - 1),
)
def test_the_true_target_is_every_objectives_optimum_for_every_prediction_type(prediction_type, t, i, seed):
    """eps / v / x1 agreement: the ideal output gives zero loss under every objective that regresses the true
    target through the bridge, at a t inside the covered range (and any integer i for the discrete ones)."""
    schedule = Schedule.preset("sd15")
    g = torch.Generator().manual_seed(seed)
    data, noise = (
        torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64),
        torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64),
    )
    data, noise = data.float(), noise.float()
    for name in FM_TIME:
        time = torch.tensor([float(i)]) if name in ("diffusion", "diff2flow-discrete") else torch.tensor([t])
        out = parametrization(name, schedule, prediction_type).loss(
            oracle_net(schedule, data, noise, prediction_type), data, noise, time, None
        )
        assert float(out.loss) < 1e-4, (name, float(out.loss))  # a wrong conversion costs O(1)


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["epsilon", "v_prediction", "sample"]),
    st.floats(0.07, 0.97),
    st.integers(0, N - 1),
    st.integers(0, 2**31 - 1),
)
def test_the_decomposition_identities_hold_per_sample(prediction_type, t, i, seed):
    """For any network (here a random affine one), at a t inside the covered range
    diffusion-fm-t = diff2flow-unweighted = diff2flow / w(t), and at any i diff2flow-discrete = w(t(i)) diffusion."""
    from d2f.parametrizations import loss_weight

    schedule = Schedule.preset("sd15")
    g = torch.Generator().manual_seed(seed)
    data, noise = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    w0, w1 = torch.randn(2, generator=g)

    def net(z, timestep, cond):
        return w0 * z + 1e-3 * w1 * timestep.reshape(-1, 1, 1, 1)

    def loss(name, time):
        return parametrization(name, schedule, prediction_type).loss(net, data, noise, time, None).per_sample

    tt = torch.tensor([t, t])
    w = loss_weight(schedule, tt, prediction_type).float()
    torch.testing.assert_close(loss("diffusion-fm-t", tt), loss("diff2flow-unweighted", tt), rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(loss("diff2flow", tt) / w, loss("diffusion-fm-t", tt), rtol=2e-4, atol=1e-6)
    ii = torch.tensor([float(i), float(i)])
    w_i = loss_weight(schedule, DiffusionModel(schedule).loss(net, data, noise, ii, None).t, prediction_type).float()
    torch.testing.assert_close(loss("diff2flow-discrete", ii), w_i * loss("diffusion", ii), rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("objective", ABLATIONS)
@pytest.mark.parametrize(
    "schedule_name, prediction_type",
    [("sd15", "epsilon"), ("sd2-v", "v_prediction"), ("sd15", "sample"), ("ztsnr-v", "v_prediction")],
)
def test_every_ablation_is_finite_with_finite_gradients_at_the_ends(objective, schedule_name, prediction_type):
    """t = 0 and 1 exactly (i = 0 and N - 1 for the discrete one), zero terminal SNR included (v models)."""
    schedule = (
        Schedule.from_betas(make_betas("scaled_linear", N, 0.00085, 0.012), "v_prediction", zero_terminal_snr=True)
        if schedule_name == "ztsnr-v"
        else Schedule.preset(schedule_name)
    )
    flow = parametrization(objective, schedule, prediction_type)
    g = torch.Generator().manual_seed(0)
    data, noise = torch.randn(2, 4, 2, 2, generator=g), torch.randn(2, 4, 2, 2, generator=g)
    weight = torch.tensor(0.5, requires_grad=True)
    time = torch.tensor([0.0, float(N - 1)]) if objective == "diff2flow-discrete" else torch.tensor([0.0, 1.0])
    out = flow.loss(lambda z, ts, c: weight * z, data, noise, time, None)
    out.loss.backward()
    assert torch.isfinite(out.per_sample).all() and torch.isfinite(weight.grad)
    assert torch.isfinite(out.t).all() and ((out.t >= 0) & (out.t <= 1)).all()


@pytest.mark.parametrize("objective", ABLATIONS)
def test_train_two_steps_and_sample_each_ablation(tmp_path, tiny_sd_eps, shapes_folder, objective):
    """``d2f train --objective NAME --steps 2`` runs to the end (the CLI, in this process), records the objective,
    and the run loads with the scheduler its objective samples with and samples finite images (d2f's sampler and
    the plain diffusers pipeline)."""
    from diffusers import DDIMScheduler
    from typer.testing import CliRunner

    from d2f.cli import app
    from d2f.diffusers_scheduler import Diff2FlowEulerScheduler
    from d2f.pipeline import generate, load_pipeline
    from d2f.pipeline.generate import pipe_parametrization

    out = tmp_path / objective
    args = ["train", "--model", str(tiny_sd_eps), "--data", str(shapes_folder), "--output", str(out)]
    args += ["--objective", objective, "--steps", "2", "--batch-size", "4", "--sample-steps", "2"]
    args += ["--validate-every", "1", "--checkpoint-every", "0", "--warmup-steps", "0", "--lora-rank", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "d2f_run.json").read_text())
    assert record["objective"] == objective and record["status"] == "finished" and record["summary"]["steps"] == 2
    assert np.isfinite(record["summary"]["final_loss"])
    pipe = load_pipeline(lora=out)
    flow = pipe_parametrization(pipe)
    assert flow.name == sampled_objective(record)
    if objective == "diffusion-fm-t":
        assert isinstance(pipe.scheduler, DDIMScheduler) and flow.sampler == "ddim"
    else:
        assert isinstance(pipe.scheduler, Diff2FlowEulerScheduler) and pipe.scheduler.model.name == flow.name
        assert pipe.scheduler.model.t_start == flow.t_start
    images = generate(pipe, ["a red circle", "a blue square"], sampler=flow.sampler, steps=2, guidance=2.0, seed=0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert pipe(["a red circle"], num_inference_steps=2, output_type="pt").images.isfinite().all()
