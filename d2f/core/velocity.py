"""The FM velocity from a diffusion network's output, and back (docs/math.md §7).

Let ``o`` be the network output at the diffusion sample ``z = alpha * x1 + sigma * eps`` and timestep
tau. Each prediction type gives a data estimate x1_hat and a noise estimate eps_hat:

    prediction_type   x1_hat                     eps_hat
    epsilon           (z - sigma * o) / alpha    o
    v_prediction      alpha * z - sigma * o      sigma * z + alpha * o      (v = alpha*eps - sigma*x1)
    sample            o                          (z - alpha * o) / sigma

and the FM velocity (t = 0 noise, t = 1 data) is

    u_hat = x1_hat - eps_hat

u_hat is affine in o, so classifier-free guidance on the raw output, o_u + w (o_c - o_u), equals
guidance on the velocity, u_u + w (u_c - u_u).

The inverse: given a velocity u and z, the pair (x1, eps) is fixed by z = alpha x1 + sigma eps and
u = x1 - eps:

    x1 = (z + sigma * u) / (alpha + sigma),     eps = (z - alpha * u) / (alpha + sigma)

from which the native target (eps, v or x1) follows.

diffusers' FlowMatchEulerDiscreteScheduler is oriented the other way: its sigma = 1 - t is the noise
level and its model predicts noise - data = -u. ``to_flowmatch``/``from_flowmatch`` convert.

Computation is in float32 or better (float64 for float64 inputs) and the answer comes back in the
dtype of the network output. alpha and sigma are per-sample, shape (B,) (or scalars).
"""

from __future__ import annotations

import torch

from d2f.core._tensor import at_least_float32, per_sample
from d2f.core.schedule import Schedule, check_prediction_type
from d2f.core.timemap import bridge_coefficients
from d2f.errors import UserError


def check_bridge(schedule: Schedule, prediction_type: str) -> None:
    """Refuse combinations whose velocity is undefined somewhere on [0, 1] (§5): an epsilon
    model on a zero-terminal-SNR schedule has alpha_{N-1} = 0, and x1_hat = (z - sigma o) / alpha
    divides by zero at the noise end."""
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon" and float(schedule.alphas_cumprod[-1]) == 0.0:
        raise UserError(
            "an epsilon-prediction model is undefined at the noise end of a zero-terminal-SNR "
            "schedule (alpha = 0 there); use v_prediction, or turn zero terminal SNR off"
        )


def estimates(
    output: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x1_hat, eps_hat) from the network output ``o`` at z (shapes (B, ...)); computed in float32+."""
    check_prediction_type(prediction_type)
    dtype = at_least_float32(output.dtype)
    o, z = output.to(dtype), z.to(dtype)
    alpha, sigma = per_sample(torch.as_tensor(alpha), o).to(dtype), per_sample(torch.as_tensor(sigma), o).to(dtype)
    if prediction_type == "epsilon":
        # x1_hat = (z - sigma o) / alpha,  eps_hat = o
        return (z - sigma * o) / alpha, o
    if prediction_type == "v_prediction":
        # x1_hat = alpha z - sigma o,  eps_hat = sigma z + alpha o
        return alpha * z - sigma * o, sigma * z + alpha * o
    # sample: x1_hat = o,  eps_hat = (z - alpha o) / sigma
    return o, (z - alpha * o) / sigma


def velocity_from_output(
    output: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """u_hat = x1_hat - eps_hat, in the dtype of ``output``."""
    data, noise = estimates(output, z, alpha, sigma, prediction_type)
    return (data - noise).to(output.dtype)


def output_from_velocity(
    velocity: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The network output (eps, v or x1) that has FM velocity ``velocity`` at z; inverse of
    ``velocity_from_output``."""
    check_prediction_type(prediction_type)
    dtype = at_least_float32(velocity.dtype)
    u, z = velocity.to(dtype), z.to(dtype)
    alpha, sigma = per_sample(torch.as_tensor(alpha), u).to(dtype), per_sample(torch.as_tensor(sigma), u).to(dtype)
    # x1 = (z + sigma u) / (alpha + sigma),  eps = (z - alpha u) / (alpha + sigma)
    data = (z + sigma * u) / (alpha + sigma)
    noise = (z - alpha * u) / (alpha + sigma)
    native = {"epsilon": noise, "v_prediction": alpha * noise - sigma * data, "sample": data}[prediction_type]
    return native.to(velocity.dtype)


def fm_velocity(
    schedule: Schedule, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str | None = None
) -> torch.Tensor:
    """The whole bridge at FM time t: the velocity of the output of ``net(c(t) x_t, tau(t))``.

    ``t`` has shape (B,) (or is a scalar); it is clamped to [t_min, t_max], so the result is finite on
    all of [0, 1]. ``prediction_type`` defaults to the schedule's.
    """
    prediction_type = prediction_type or schedule.prediction_type
    check_bridge(schedule, prediction_type)
    coef = bridge_coefficients(schedule, t)
    # z = c(t) x_t, in float32 or better
    dtype = at_least_float32(output.dtype)
    z = per_sample(coef.scale, x_t).to(dtype) * x_t.to(dtype)
    return velocity_from_output(output, z, coef.alpha, coef.sigma, prediction_type)


def to_flowmatch(t: torch.Tensor, velocity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d2f (t, u) -> diffusers FlowMatch (sigma, model output):  sigma = 1 - t,  output = -u = noise - data."""
    return 1 - t, -velocity


def from_flowmatch(sigma: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers FlowMatch (sigma, model output) -> d2f (t, u):  t = 1 - sigma,  u = -output."""
    return 1 - sigma, -output
