"""The three parametrisations (docs/math.md §8): their losses against a hand computation, their velocity
and loss written once, the objective registry, and a few training steps of each.

The hand computation is independent of d2f's schedule code: alpha, sigma, the time map and its inverse
are recomputed here in numpy float64 straight from the betas (§3-§5), and the loss from the table of §7.
The "network" of the hand check is a fixed function of (z, timestep, cond) that records what it was called
with, so a wrong input, a wrong (or rounded) timestep or a wrong target changes the number.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.objectives import OBJECTIVES, check_objective, parametrization
from d2f.parametrizations import Diff2FlowModel, DiffusionModel, NaiveFMModel, NaiveFMRawTModel

N = 1000


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
    assert set(OBJECTIVES) == {"diff2flow", "fm", "fm-raw-t", "diffusion"}
    for name in OBJECTIVES:
        flow = parametrization(name, schedule)
        assert flow.name == name and flow.prediction_type == "epsilon"
    assert parametrization("diffusion", schedule, "v_prediction").prediction_type == "v_prediction"
    with pytest.raises(UserError, match="unknown objective 'flow'.*diff2flow, fm, fm-raw-t, diffusion"):
        check_objective("flow")
    with pytest.raises(UserError, match="unknown prediction type"):
        parametrization("diff2flow", schedule, "velocity")


@pytest.mark.parametrize("cls", [Diff2FlowModel, NaiveFMModel])
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


@pytest.mark.parametrize("objective", ["diff2flow", "fm", "fm-raw-t", "diffusion"])
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
