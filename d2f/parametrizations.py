"""From a network to a velocity field ``velocity_fn(x, t) -> v`` for ``d2f.sampling``.

Two parametrisations (math page, section 6), chosen by the run's ``objective``:

- **Diff2Flow** (``diff2flow``, and any untouched diffusion model, ``diffusion``): the network is the
  diffusion model. At FM time t it is called on the aligned sample at the fractional timestep,

      o = net(c(t) * x, tau(t), cond),      v = x1_hat(o) - eps_hat(o)     (sections 3 and 4)

  with t clamped to [t_min, t_max] (section 5).
- **Naive FM** (``fm``): the network itself is the velocity, called on the unscaled sample at the
  timestep that t maps to linearly:   v = net(x, (1 - t) * (N - 1), cond).

Classifier-free guidance is applied to the raw output, o = o_u + w (o_c - o_u); v is affine in o, so
this equals guidance on v (section 4). With guidance w = 1 the unconditional branch is skipped; with a
text batch of B prompts the network runs once per call on 2B samples ([uncond; cond], as diffusers'
pipelines batch it), so a sampler step costs exactly one network call.

``net(z, tau, cond)`` is any callable returning the raw output; ``unet_forward(unet)`` adapts a
diffusers ``UNet2DConditionModel`` (``cond`` = the text encoder's hidden states).
"""

from __future__ import annotations

from typing import Callable

import torch

from d2f.errors import UserError
from d2f.schedule import Schedule
from d2f.timemap import per_sample, bridge_coefficients
from d2f.velocity import check_bridge, velocity_from_output

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
OBJECTIVES = ("diff2flow", "fm", "diffusion")


def unet_forward(unet) -> Net:
    """``net(z, tau, cond)`` for a diffusers UNet: ``unet(z, tau, encoder_hidden_states=cond).sample``,
    with the fractional timestep tau passed as float (not rounded) and z cast to the UNet's dtype."""
    def net(z: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return unet(z.to(unet.dtype), tau, encoder_hidden_states=cond, return_dict=False)[0]
    return net


def guided_output(net: Net, z: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """The raw network output with classifier-free guidance (Ho & Salimans 2022):

        o = o_u + w (o_c - o_u)

    computed in one call on the batch [uncond; cond]; ``uncond`` None or ``w = 1`` gives just o_c."""
    if uncond is None or guidance == 1.0:
        return net(z, tau, cond)
    o_u, o_c = net(torch.cat([z, z]), torch.cat([tau, tau]), torch.cat([uncond, cond])).chunk(2)
    # o = o_u + w (o_c - o_u)
    return o_u + guidance * (o_c - o_u)


def diff2flow_velocity(net: Net, schedule: Schedule, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                       guidance: float = 1.0, prediction_type: str | None = None):
    """The velocity field of a diffusion network through the Diff2Flow bridge:

        z = c(t) x,   o = guided net(z, tau(t), cond),   v = x1_hat(o, z) - eps_hat(o, z)

    ``prediction_type`` defaults to the schedule's. Returns ``velocity_fn(x, t)``."""
    prediction_type = prediction_type or schedule.prediction_type
    check_bridge(schedule, prediction_type)

    def velocity_fn(x: torch.Tensor, t: float) -> torch.Tensor:
        coef = bridge_coefficients(schedule, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        # z = c(t) x   (in float32 or better, the bridge is never computed in half precision)
        z = per_sample(coef["scale"], x).to(x.device, torch.float32) * x.float()
        # o = net(z, tau(t), cond), fractional tau
        o = guided_output(net, z, coef["tau"].to(x.device, torch.float32), cond, uncond, guidance)
        # v = x1_hat - eps_hat
        v = velocity_from_output(o.float(), z, coef["alpha"].float(), coef["sigma"].float(), prediction_type)
        return v.to(x.dtype)

    return velocity_fn


def naive_fm_velocity(net: Net, num_train_timesteps: int, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                guidance: float = 1.0):
    """The velocity field of a naive-FM network (objective ``fm``): the raw output at timestep
    (1 - t)(N - 1) on the unscaled x is the velocity.

        v = guided net(x, (1 - t) (N - 1), cond)
    """
    def velocity_fn(x: torch.Tensor, t: float) -> torch.Tensor:
        # tau = (1 - t)(N - 1): t = 0 (noise) -> N - 1, t = 1 (data) -> 0
        tau = torch.full((x.shape[0],), (1 - float(t)) * (num_train_timesteps - 1), dtype=torch.float32,
                         device=x.device)
        return guided_output(net, x, tau, cond, uncond, guidance).to(x.dtype)

    return velocity_fn


def velocity_for(objective: str, net: Net, schedule: Schedule, cond: torch.Tensor,
                 uncond: torch.Tensor | None = None, guidance: float = 1.0):
    """``naive_fm_velocity`` for ``fm``, ``diff2flow_velocity`` for ``diff2flow`` and ``diffusion`` (a diffusion
    model samples through the bridge: its FM ODE is its DDIM ODE, math page section 8)."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if objective == "fm":
        return naive_fm_velocity(net, schedule.num_train_timesteps, cond, uncond, guidance)
    return diff2flow_velocity(net, schedule, cond, uncond, guidance)
