"""The ablation parametrisations (docs/math.md §9.1): Diff2Flow taken apart into what it changes relative to
diffusion finetuning (the time density, the training of the clamped ends, the loss weight w(t)) and what it
keeps (the input alignment c(t)), one objective per step. Each is a ``Parametrization`` beside the others
(``d2f.parametrizations``, which re-exports them): its velocity, its loss, its time density and where it is
sampled from, side by side. Conventions as there: t = 0 is noise, t = 1 is data; t_eff is t clamped to the
covered range (§5); losses in float32 or better.
"""

from __future__ import annotations

import torch

from d2f.core._tensor import at_least_float32, per_sample
from d2f.core.schedule import Schedule
from d2f.core.timemap import bridge_coefficients, t_of_tau, t_range
from d2f.core.velocity import velocity_from_output
from d2f.parametrizations.base import (
    Diff2FlowModel,
    DiffusionModel,
    LossOutput,
    Net,
    Parametrization,
    _batch_times,
    mse,
)


def loss_weight(schedule: Schedule, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """w(t) (B,), float64: ||u_hat - u||^2 = w(t) * (the native loss) inside the covered range (§9), at t_eff:

    epsilon: 1 / t^2 = c^2 / alpha^2,    v_prediction: c^2,    sample: 1 / (1 - t)^2 = c^2 / sigma^2
    """
    coef = bridge_coefficients(schedule, torch.as_tensor(t, dtype=torch.float64).cpu())
    native = {"epsilon": coef.alpha, "v_prediction": torch.ones_like(coef.alpha), "sample": coef.sigma}
    # w = c^2 / a^2,  a = alpha, 1 or sigma
    return (coef.scale / native[prediction_type]) ** 2


class DiffusionFMTimeModel(DiffusionModel):
    """Diffusion finetuning at Diff2Flow's time density (objective ``diffusion-fm-t``): t is drawn as
    Diff2Flow draws it (``t_sampling`` applies), the network sees the diffusion sample at tau(t_eff), and the
    loss is the native one, unweighted:

        tau = tau(t_eff),  z = alpha x1 + sigma eps,  o = net(z, tau),  loss = ||o - target||^2

    So it differs from ``diffusion`` in the time density only, and from ``diff2flow-unweighted`` only where t is
    clamped: there the network sees a true diffusion sample at tau = N-1 or 0 (what DDIM meets), not the FM
    sample c(t_eff) x_t, whose signal fraction is t. A diffusion model: it samples as ``diffusion``."""

    name = "diffusion-fm-t"
    samples_as = "diffusion"

    def sample_time(
        self, batch_size: int, t_sampling: str = "uniform", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """FM time t (B,), as Diff2Flow draws it (``Parametrization.sample_time``)."""
        return Parametrization.sample_time(self, batch_size, t_sampling, generator)

    def loss(self, net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond) -> LossOutput:
        """``time`` is the FM time t (B,); the native loss at tau(t_eff) (fractional); ``t`` logged as drawn."""
        t = time.to(torch.float32)
        coef = bridge_coefficients(self.schedule, _batch_times(t, data))
        return self._native_loss(net, data, noise, coef.alpha, coef.sigma, coef.tau, cond, t)


class Diff2FlowDiscreteModel(Diff2FlowModel):
    """Diff2Flow's loss at diffusion's time density (objective ``diff2flow-discrete``): the loss-only bridge
    that trainers ship. The timestep is the diffusion one, i ~ U{0..N-1}, the network sees the diffusion sample
    z = alpha_i x1 + sigma_i eps at i, and its output, read as an FM velocity, regresses u = x1 - x0:

        z = alpha_i x1 + sigma_i eps,  o = net(z, i),  loss = ||u_hat(o, z) - (x1 - eps)||^2

    This is Diff2Flow's loss at t = t(i), since c(t(i)) x_t(i) = z and tau(t(i)) = i (§4, §6), hence the
    diffusion loss weighted by w(t(i)) (``loss_weight``, §9): for an epsilon model diffusion's loss times
    1 / t(i)^2. SimpleTuner's ``diff2flow_loss`` (bghira/SimpleTuner: ``simpletuner/diff2flow/bridge.py``,
    ``DiffusionToFlowBridge.prediction_to_flow``, called from ``simpletuner/helpers/models/common.py`` on the
    batch's own noisy latents and integer timesteps) computes this, for epsilon and v models, with its
    orientation noise - latents (the same squared error); OneTrainer's pull request #1052
    (Nerogar/OneTrainer) is cited in issue #24 as the same loss-only bridge, its code not checked here.

    It never sees t < t_min, so it is sampled as a diffusion model is, from t_min (§10), with its own
    (Diff2Flow's) velocity and FM Euler."""

    name = "diff2flow-discrete"

    @property
    def t_start(self) -> float:
        """t_min: trained on diffusion's timesteps only, like ``DiffusionModel``."""
        return t_range(self.schedule)[0]

    def sample_time(
        self, batch_size: int, t_sampling: str = "uniform", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The integer timestep i ~ U{0..N-1} (B,), as floats (``DiffusionModel.sample_time``)."""
        return DiffusionModel.sample_time(self, batch_size, t_sampling, generator)

    def loss(self, net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond) -> LossOutput:
        """``time`` is the timestep i (B,); the returned ``t`` is t(i)."""
        i = time.to(torch.float64).round()
        alpha, sigma = self.schedule.alpha(i).float(), self.schedule.sigma(i).float()
        data, noise = data.float(), noise.float()
        # z = alpha_i x1 + sigma_i eps
        z = per_sample(alpha, data) * data + per_sample(sigma, data) * noise
        o = net(z, i.float().to(data.device), cond)
        # u_hat = x1_hat(o, z) - eps_hat(o, z);  u = x1 - eps
        u_hat = velocity_from_output(o.to(at_least_float32(o.dtype)), z, alpha, sigma, self.prediction_type)
        return mse(u_hat, data - noise, t_of_tau(self.schedule, i).float())


class Diff2FlowUnweightedModel(Diff2FlowModel):
    """Diff2Flow with its loss weight divided out (objective ``diff2flow-unweighted``): Diff2Flow's time
    density, input and target, each sample's squared error divided by w(t_eff) (``loss_weight``):

        loss = ||u_hat(x_t, t) - (x1 - x0)||^2 / w(t_eff)

    Inside the covered range this is the native diffusion loss at tau(t) exactly (§9); on the clamped ends it
    trains the FM velocity at t (with the weight of the end). Trained on all of [0, 1] with Diff2Flow's
    velocity: it samples as ``diff2flow``."""

    name = "diff2flow-unweighted"
    samples_as = "diff2flow"

    def loss(self, net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond) -> LossOutput:
        out = super().loss(net, data, noise, time, cond)
        w = loss_weight(self.schedule, out.t, self.prediction_type)
        # ||u_hat - u||^2 / w(t_eff)
        per_sample_loss = out.per_sample / w.to(out.per_sample.device, torch.float32)
        return LossOutput(per_sample_loss.mean(), per_sample_loss, out.t)


class Diff2FlowNoScaleModel(Diff2FlowModel):
    """Diff2Flow without the input scaling (objective ``diff2flow-no-scale``): the network sees the FM state
    x_t itself at tau(t_eff), not c(t) x_t; its output is read as Diff2Flow reads it, at the true z = c(t) x_t:

        o = net(x_t, tau(t)),  u_hat = x1_hat(o, c(t) x_t) - eps_hat(o, c(t) x_t),  loss = ||u_hat - (x1 - x0)||^2

    So it differs from ``diff2flow`` in what the network sees only (a sample whose standard deviation is
    1/c(t) of the one it was trained on, §6). Its velocity is its own (a different network input): it samples
    as itself, from t = 0."""

    name = "diff2flow-no-scale"

    def network_input(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        coef = bridge_coefficients(self.schedule, _batch_times(t, x_t))
        dtype = at_least_float32(x_t.dtype)
        # z = x_t (no c(t)),  timestep = tau(t)
        return x_t.to(dtype), coef.tau.to(x_t.device, dtype)
