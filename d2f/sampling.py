"""Samplers for the flow-matching ODE  dx/dt = u(x, t),  from t = 0 (noise) to t = 1 (data).

In the spirit of k-diffusion's ``sampling.py``: pure functions with one shared signature

    sample_xxx(velocity_fn, x, ts, callback=None) -> x at ts[-1]

where ``velocity_fn(x, t) -> u`` is any FM velocity field (``Parametrization.velocity`` of a network, see
``d2f.parametrizations``, with guidance from ``d2f.guidance``), ``x`` is the state at ``ts[0]`` and
``ts`` is an increasing 1-D grid of FM times. ``t`` is passed to ``velocity_fn`` as a Python float
(one time for the whole batch). ``callback(dict(i, t, t_next, x, velocity))`` is called after every step.
(u is the FM velocity, noise -> data, docs/math.md §1; ``v`` is reserved for the v-prediction target.)

The grids (docs/math.md §10):

- ``time_grid(steps, shift, t_start)``: uniform on [t_start, 1] (the default); ``shift > 1`` spends more of
  the budget near the noise end (SD3's time shift, kept inside [t_start, 1]). ``t_start`` is 0 for models
  trained on all of [0, 1] and t_min for an untouched diffusion model (``Parametrization.t_start``).
- ``ddim_grid(schedule, steps)``: the FM times of DDIM's timesteps, for ``sample_ddim``.

Network calls: Euler and DDIM one per step; Heun two per step and one on the last (2K - 1 for K steps).
Nothing here imports diffusers; the schedule is needed only to build the DDIM grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from d2f.core.schedule import Schedule
from d2f.core.timemap import t_of_tau
from d2f.errors import UserError

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[dict], None] | None


# --------------------------------------------------------------------------------------- grids


def time_grid(steps: int, shift: float = 1.0, t_start: float = 0.0, t_end: float = 1.0) -> torch.Tensor:
    """``steps + 1`` increasing FM times from ``t_start`` to ``t_end`` (float64), docs/math.md §10.

    Uniform for ``shift = 1``. Otherwise the position of each point inside [t_start, t_end] is warped as
    SD3's time shift (Esser et al. 2024, eq. 23) warps the noise level s = 1 - t on [0, 1]: with
    r = (t_end - t) / (t_end - t_start) the fraction of the interval still to go,

        r' = shift * r / (1 + (shift - 1) * r),      t' = t_end - r' * (t_end - t_start)

    which keeps both ends fixed (the grid never leaves [t_start, t_end]) and, for shift > 1, puts more
    steps near the noise end. On [0, 1] this is exactly SD3's shift.
    """
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise UserError(f"shift must be positive, got {shift}")
    if not 0.0 <= t_start < t_end <= 1.0:
        raise UserError(f"need 0 <= t_start < t_end <= 1, got t_start={t_start}, t_end={t_end}")
    if shift == 1.0:
        return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    r = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    # r' = shift r / (1 + (shift - 1) r)
    r = shift * r / (1 + (shift - 1) * r)
    ts = t_end - r * (t_end - t_start)
    ts[0], ts[-1] = t_start, t_end  # exact ends, whatever the rounding
    return ts


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """DDIM's timesteps with diffusers' ``timestep_spacing="trailing"`` (Lin et al. 2024, table 2), computed
    exactly as diffusers computes them (numpy's arange and round):  round(arange(N, 0, -N/K)) - 1, e.g.
    N = 1000, K = 50: 999, 979, ..., 19. Starts at tau = N-1, the noise end."""
    if not 1 <= steps <= num_train_timesteps:
        raise UserError(f"DDIM steps must be in [1, {num_train_timesteps}], got {steps}")
    taus = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    return torch.from_numpy(taus).to(torch.float64)


def ddim_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """The FM times of DDIM's trailing timesteps, then t = 1:  ts = [t(tau_0), ..., t(tau_{K-1}), 1].

    Each step lands on the next timestep of the list, as in Song et al. (2021), whose DDIM steps between
    consecutive elements of the timestep sub-sequence. The last step goes to abar = 1 (diffusers'
    ``set_alpha_to_one=True``): it lands on the data estimate x1_hat. diffusers' ``DDIMScheduler`` instead
    lands each step at tau - N // K and evaluates the next step at the next listed timestep; the two agree
    when the list is evenly spaced (K = 1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, ... for N = 1000) and
    differ slightly otherwise (``tests/test_sampling.py`` checks both statements)."""
    taus = ddim_timesteps(schedule.num_train_timesteps, steps)
    return torch.cat([t_of_tau(schedule, taus), torch.ones(1, dtype=torch.float64)])


def _check_grid(ts) -> list[float]:
    ts = [float(t) for t in torch.as_tensor(ts, dtype=torch.float64).flatten()]
    if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:])):
        raise UserError("the time grid must have at least 2 strictly increasing times (t = 0 noise, t = 1 data)")
    return ts


# ------------------------------------------------------------------------------------ samplers


@torch.no_grad()
def sample_euler(
    velocity_fn: VelocityFn, x: torch.Tensor, ts: Sequence[float], callback: Callback = None
) -> torch.Tensor:
    """FM Euler (docs/math.md §10): one network call per step.

    x_{k+1} = x_k + (t_{k+1} - t_k) * u(x_k, t_k)
    """
    ts = _check_grid(ts)
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        u = velocity_fn(x, t)
        # x <- x + (t_{k+1} - t_k) u(x, t_k)
        x = x + (t_next - t) * u
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x, "velocity": u})
    return x


@torch.no_grad()
def sample_heun(
    velocity_fn: VelocityFn, x: torch.Tensor, ts: Sequence[float], callback: Callback = None
) -> torch.Tensor:
    """FM Heun (Karras et al. 2022, Algorithm 1, in FM time): the trapezoidal rule with an Euler
    predictor; two network calls per step, one on the last step (which is Euler, as k-diffusion's
    ``sample_heun`` does at sigma = 0), so 2K - 1 calls for K steps.

        u_k      = u(x_k, t_k)
        x_euler  = x_k + h u_k,                             h = t_{k+1} - t_k
        x_{k+1}  = x_k + h (u_k + u(x_euler, t_{k+1})) / 2   (last step: x_{k+1} = x_euler)
    """
    ts = _check_grid(ts)
    last = len(ts) - 2
    for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
        h = t_next - t
        u = velocity_fn(x, t)
        # x_euler = x_k + h u_k
        x_euler = x + h * u
        if i == last:
            x = x_euler
        else:
            # x_{k+1} = x_k + h (u_k + u(x_euler, t_{k+1})) / 2
            u = (u + velocity_fn(x_euler, t_next)) / 2
            x = x + h * u
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t_next, "x": x, "velocity": u})
    return x


@torch.no_grad()
def sample_ddim(
    velocity_fn: VelocityFn, x: torch.Tensor, ts: Sequence[float], callback: Callback = None
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with eta = 0), written in FM coordinates; use it on ``ddim_grid``.

    DDIM re-noises its two estimates at the next timestep:  z' = alpha' x1_hat + sigma' eps_hat.
    Divided by c' = alpha' + sigma' this reads  x' = t' x1_hat + (1 - t') eps_hat, and the estimates at
    (x, t) are x1_hat = x + (1 - t) u, eps_hat = x - t u (docs/math.md §7). Substituting,

        x_{k+1} = t_{k+1} (x_k + (1 - t_k) u) + (1 - t_{k+1}) (x_k - t_k u) = x_k + (t_{k+1} - t_k) u

    so DDIM *is* FM Euler, on DDIM's grid (uniform in tau, not in t): the two samplers differ only by
    where they place their steps. This function is therefore ``sample_euler``; it exists so that the
    sampler names match the CLI, and ``tests/test_sampling.py`` checks it against diffusers'
    ``DDIMScheduler`` (trailing spacing, ``set_alpha_to_one=True``) on a real pipeline.
    The identity needs every evaluated t inside the covered range [t_min, t_max] (where t_eff = t),
    which holds on ``ddim_grid``.
    """
    return sample_euler(velocity_fn, x, ts, callback)


SAMPLERS = {"euler": sample_euler, "heun": sample_heun, "ddim": sample_ddim}


def get_sampler(name: str):
    """The sampler function for ``euler``, ``heun`` or ``ddim``; ``UserError`` for another name."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def network_calls(sampler: str, steps: int) -> int:
    """Network evaluations (per guided batch) of ``steps`` steps: K for Euler and DDIM, 2K - 1 for Heun."""
    get_sampler(sampler)
    return 2 * steps - 1 if sampler == "heun" else steps


def sampler_grid(
    sampler: str, steps: int, t_start: float = 0.0, shift: float = 1.0, schedule: Schedule | None = None
) -> torch.Tensor:
    """The grid a sampler runs on: DDIM's trailing timesteps for ``ddim`` (needs ``schedule``), else
    ``time_grid(steps, shift, t_start)``. ``t_start`` is where the model's sampling starts: 0 for models
    trained on all of [0, 1], t_min for a diffusion model (``Parametrization.t_start``, docs/math.md §10)."""
    get_sampler(sampler)
    if sampler != "ddim":
        return time_grid(steps, shift, t_start=t_start)
    if schedule is None:
        raise ValueError("the DDIM grid needs the model's schedule")
    return ddim_grid(schedule, steps)
