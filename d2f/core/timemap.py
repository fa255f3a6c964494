"""The time map between diffusion time tau and flow-matching time t, and interpolant alignment.

Dividing a diffusion sample by (alpha + sigma) gives a point on the straight FM path (docs/math.md §4):

    z / (alpha + sigma) = t * x1 + (1 - t) * eps        with   t = alpha / (alpha + sigma)

so a diffusion state at tau is the FM state at

    t(tau) = alpha / (alpha + sigma) = sigmoid(lam(tau) / 2)

(divide numerator and denominator by sigma: alpha/sigma = exp(lam/2)). The inverse goes
lam = 2 * logit(t), then tau = the piecewise-linear inverse of lam(tau); both directions are exact and
t decreases strictly as tau grows. Conventions: **t = 0 is noise, t = 1 is data**.

The schedule only covers t in [t_min, t_max] = [t(N-1), t(0)] (SD: [0.0640, 0.9717]). Outside it no
diffusion timestep exists, and d2f clamps (§5): t_eff = clip(t, t_min, t_max) is used for tau,
the scale c, alpha and sigma alike, so everything is finite on all of [0, 1].

Alignment (§6): the network sees  z = c(t) * x_t  with  c(t) = alpha(tau(t)) + sigma(tau(t)),
c in [1, sqrt(2)], at the fractional timestep tau(t).

All functions take tensors (any shape, broadcast against each other), compute in float64 and answer in
the dtype and on the device of their first tensor argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d2f.core._tensor import as_float64, at_least_float32, per_sample
from d2f.core.schedule import Schedule


def t_of_tau(schedule: Schedule, tau: torch.Tensor) -> torch.Tensor:
    """t(tau) = sigmoid(lam(tau) / 2) = alpha / (alpha + sigma); tau clamped to [0, N-1]."""
    tau64, dtype = as_float64(tau)
    return torch.sigmoid(schedule.log_snr(tau64) / 2).to(dtype)


def t_range(schedule: Schedule) -> tuple[float, float]:
    """(t_min, t_max) = (t(N-1), t(0)): the FM times a diffusion timestep covers."""
    n = schedule.num_train_timesteps
    ends = t_of_tau(schedule, torch.tensor([n - 1.0, 0.0], dtype=torch.float64))
    return float(ends[0]), float(ends[1])


def clamp_t(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """t_eff = clip(t, t_min, t_max) (§5)."""
    t_min, t_max = t_range(schedule)
    return torch.as_tensor(t).clamp(t_min, t_max)


def is_clamped(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """True where t lies outside [t_min, t_max], i.e. where the bridge uses the clamped time."""
    t_min, t_max = t_range(schedule)
    t = torch.as_tensor(t)
    return (t < t_min) | (t > t_max)


def tau_of_t(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """tau(t): the exact inverse of t(tau) on the covered range; t is clamped to [t_min, t_max] first.

    lam = 2 * logit(t_eff),   tau = i + (lam - lam_i) / (lam_{i+1} - lam_i)   for lam_{i+1} <= lam <= lam_i
    """
    t64, dtype = as_float64(t)
    t64 = clamp_t(schedule, t64)
    table = schedule.log_snr_table.to(t64.device)
    n = schedule.num_train_timesteps
    # lam = 2 logit(t)
    lam = 2 * (t64.log() - torch.log1p(-t64))
    # the segment [i, i+1] with lam_{i+1} <= lam <= lam_i; -table is increasing, so search it
    i = (torch.searchsorted(-table, -lam.reshape(-1).contiguous()).reshape(lam.shape) - 1).clamp(0, n - 2)
    lo, hi = table[i], table[i + 1]
    tau = i + (lam - lo) / (hi - lo)
    if schedule.zero_terminal_snr:
        # last segment is linear in t (see schedule.py): t = t_{N-2} * (1 - w)  =>  w = 1 - t / t_{N-2}
        t_lo = torch.sigmoid(lo / 2)
        tau = torch.where(torch.isinf(hi), i + 1 - t64 / t_lo, tau)
    return tau.clamp(0, n - 1).to(dtype)


def scale(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """c(t) = alpha(tau(t)) + sigma(tau(t)), with t clamped; in [1, sqrt(2)]."""
    t64, dtype = as_float64(t)
    tau = tau_of_t(schedule, t64)
    return (schedule.alpha(tau) + schedule.sigma(tau)).to(dtype)


@dataclass(frozen=True)
class BridgeCoefficients:
    """Everything the bridge needs at FM time t, each of shape (B,) (or scalar), float64:

    ``t_eff`` = clip(t, t_min, t_max), ``tau`` = tau(t_eff), ``alpha`` and ``sigma`` at that tau, and
    ``scale`` = c(t) = alpha + sigma. One lookup for all, so they always agree on the clamp (§5)."""

    t_eff: torch.Tensor
    tau: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    scale: torch.Tensor


def bridge_coefficients(schedule: Schedule, t: torch.Tensor) -> BridgeCoefficients:
    """The ``BridgeCoefficients`` at FM time(s) t (docs/math.md §5-§6)."""
    t64, _ = as_float64(t)
    t_eff = clamp_t(schedule, t64)
    tau = tau_of_t(schedule, t_eff)
    alpha, sigma = schedule.alpha(tau), schedule.sigma(tau)
    # c(t) = alpha(tau(t)) + sigma(tau(t))
    return BridgeCoefficients(t_eff=t_eff, tau=tau, alpha=alpha, sigma=sigma, scale=alpha + sigma)


def fm_to_diffusion(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, tau) for the FM sample x_t at time t (shape (B,) or broadcastable to x_t's leading dim):

        z = c(t) * x_t,   tau = tau(t)          (t clamped to the covered range)

    ``z`` keeps the dtype of ``x_t``; ``tau`` is float32-or-better (diffusers' UNet takes float timesteps).
    """
    coef = bridge_coefficients(schedule, t)
    # z = c(t) x_t
    z = per_sample(coef.scale, x_t) * x_t.to(torch.float64)
    return z.to(x_t.dtype), coef.tau.to(at_least_float32(x_t.dtype))


def diffusion_to_fm(schedule: Schedule, z: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t) for the diffusion sample z at timestep tau:  x_t = z / (alpha + sigma),  t = t(tau)."""
    tau64, _ = as_float64(tau)
    c = schedule.alpha(tau64) + schedule.sigma(tau64)
    x_t = z.to(torch.float64) / per_sample(c, z)
    return x_t.to(z.dtype), t_of_tau(schedule, tau64).to(at_least_float32(z.dtype))
