"""The three training objectives of d2f (math page, section 6), one function each, one signature.

Every objective takes the same arguments and costs one forward and one backward of the same network
on the same batch; only the input the network sees, its timestep and the target differ:

    objective(net, data, noise, time, cond, schedule, prediction_type) -> LossOutput

- ``net(z, timestep, cond) -> o``: the diffusion network (a UNet), timestep a float tensor (B,)
- ``data``  x1  (B, C, H, W): clean latents (already times the VAE's scaling factor)
- ``noise`` x0  (B, C, H, W): standard Gaussian noise (called eps in the diffusion formulas)
- ``time``  (B,): what ``sample_time`` drew for this objective: FM time t in [0, 1] for
  ``diff2flow`` and ``fm``, the integer diffusion timestep i in {0..N-1} (as floats) for ``diffusion``
- ``cond``: the text encoder's hidden states, passed through to ``net``

Each returns ``LossOutput(loss, per_sample, t)``: the scalar loss (the mean over the batch of the
per-sample mean squared error), the per-sample losses (B,) and every sample's FM time t (B,) (for
``diffusion`` the t(i) of its timestep), so the trainer can log the loss in t-bins on one axis for all
three objectives.

Conventions: **t = 0 is noise, t = 1 is data**. Precision: whatever the network computes in (it may run
under fp16/bf16 autocast), the bridge, the targets and the loss are computed in float32 (the schedule
itself in float64), as the math page asks.

The naive FM baseline feeds the network the *unscaled* x_t at the timestep (1 - t) * (N - 1): t mapped
linearly onto the timestep range the network was trained on (t = 1, data, is timestep 0; t = 0, noise,
is timestep N - 1). The paper's code passes the raw t in [0, 1) instead; d2f's choice is the fairer
baseline and is the one every benchmark in this project reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from d2f.errors import UserError
from d2f.schedule import Schedule
from d2f.timemap import per_sample, bridge_coefficients, t_of_tau
from d2f.velocity import check_bridge, check_prediction_type, velocity_from_output

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
T_SAMPLINGS = ("uniform", "logit-normal")


@dataclass
class LossOutput:
    """``loss``: scalar, differentiable; ``per_sample``: (B,) mean squared error of each sample;
    ``t``: (B,) FM time of each sample (for t-binned logging)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> LossOutput:
    # per-sample ||prediction - target||^2, averaged over the C*H*W elements, then over the batch
    per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return LossOutput(per_sample.mean(), per_sample, torch.empty(0))


def diff2flow(net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond,
              schedule: Schedule, prediction_type: str) -> LossOutput:
    """Diff2Flow: the diffusion network, aligned to the FM path, regresses the FM velocity.

    ``time`` is the FM time t (B,). t outside the covered range [t_min, t_max] is clamped for tau, c,
    alpha and sigma alike (section 5); the interpolant x_t and the target use the drawn t.
    """
    check_bridge(schedule, prediction_type)
    t = time.to(torch.float32)
    coef = bridge_coefficients(schedule, t)
    c, tau = coef["scale"].float(), coef["tau"].float()
    alpha, sigma = coef["alpha"].float(), coef["sigma"].float()
    data, noise = data.float(), noise.float()
    tt = per_sample(t, data)
    # x_t = t*x1 + (1-t)*x0
    x_t = tt * data + (1 - tt) * noise
    # z = c(t) * x_t,  c = alpha(tau(t)) + sigma(tau(t))
    z = per_sample(c, data) * x_t
    # o = net(c(t)*x_t, tau(t), cond), tau fractional
    o = net(z, tau, cond).float()
    # v_hat = x1_hat(o) - eps_hat(o)   (section 4, by prediction type)
    v_hat = velocity_from_output(o, z, alpha, sigma, prediction_type)
    # u = x1 - x0;  loss = mean ||v_hat - u||^2
    out = _mse(v_hat, data - noise)
    out.t = t
    return out


def fm(net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond,
       schedule: Schedule, prediction_type: str) -> LossOutput:
    """Naive flow matching (baseline): the raw network output is taken as the velocity, with no
    alignment and no conversion. ``time`` is the FM time t (B,); the network's timestep is
    (1 - t) * (N - 1) (see the module doc). ``prediction_type`` is ignored (it has none)."""
    t = time.to(torch.float32)
    data, noise = data.float(), noise.float()
    tt = per_sample(t, data)
    # x_t = t*x1 + (1-t)*x0
    x_t = tt * data + (1 - tt) * noise
    # timestep = (1 - t) * (N - 1): t = 1 (data) -> 0, t = 0 (noise) -> N-1
    timestep = (1 - t) * (schedule.num_train_timesteps - 1)
    o = net(x_t, timestep, cond).float()
    # loss = mean ||o - (x1 - x0)||^2
    out = _mse(o, data - noise)
    out.t = t
    return out


def diffusion(net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond,
              schedule: Schedule, prediction_type: str) -> LossOutput:
    """The model's native diffusion objective (baseline). ``time`` is the integer timestep i (B,).

    The target is eps, v = alpha_i*eps - sigma_i*x1, or x1, by ``prediction_type``."""
    check_prediction_type(prediction_type)
    i = time.to(torch.float64).round()
    alpha, sigma = schedule.alpha(i).float(), schedule.sigma(i).float()
    data, noise = data.float(), noise.float()
    a, s = per_sample(alpha, data), per_sample(sigma, data)
    # z = alpha_i*x1 + sigma_i*eps
    z = a * data + s * noise
    o = net(z, i.float(), cond).float()
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        # v = alpha_i*eps - sigma_i*x1
        target = a * noise - s * data
    else:
        target = data
    out = _mse(o, target)
    # the FM time of timestep i, t(i) = alpha_i / (alpha_i + sigma_i), for t-binned logging
    out.t = t_of_tau(schedule, i).float()
    return out


OBJECTIVES: dict[str, Callable[..., LossOutput]] = {"diff2flow": diff2flow, "fm": fm, "diffusion": diffusion}
SAMPLERS = {"diff2flow": "euler", "fm": "euler", "diffusion": "ddim"}  # how each trained model samples


def get_objective(name: str) -> Callable[..., LossOutput]:
    """The objective function called ``name``; ``UserError`` for an unknown name."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def check_t_sampling(t_sampling: str) -> str:
    if t_sampling not in T_SAMPLINGS:
        raise UserError(f"unknown t sampling {t_sampling!r}; use one of {', '.join(T_SAMPLINGS)}")
    return t_sampling


def sample_time(objective: str, batch_size: int, schedule: Schedule, t_sampling: str = "uniform",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the ``time`` argument of ``objective`` for a batch, on the CPU (float32, shape (B,)).

    - ``diff2flow``, ``fm``: t ~ U[0, 1] (``uniform``) or t = sigmoid(n), n ~ N(0, 1) (``logit-normal``,
      Esser et al. 2024: more samples in the middle of the path)
    - ``diffusion``: i ~ U{0..N-1}
    """
    get_objective(objective)
    if objective == "diffusion":
        # i ~ U{0, ..., N-1}
        return torch.randint(0, schedule.num_train_timesteps, (batch_size,), generator=generator).float()
    if check_t_sampling(t_sampling) == "uniform":
        # t ~ U[0, 1]
        return torch.rand(batch_size, generator=generator)
    # t = sigmoid(n),  n ~ N(0, 1)
    return torch.sigmoid(torch.randn(batch_size, generator=generator))
