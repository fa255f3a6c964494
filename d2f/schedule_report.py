"""A schedule and its time map as a table and a figure: what ``d2f inspect-schedule`` prints and plots.

Rows are (tau, t, alpha, sigma, scale c, log-SNR, clamped). A row asked for by FM time t keeps the
asked t and shows the tau it maps to (after the clamp of docs/math.md §5).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from d2f.core.schedule import Schedule
from d2f.core.timemap import is_clamped, t_of_tau, t_range, tau_of_t
from d2f.errors import UserError


def _row(schedule: Schedule, tau: float, t: float | None = None) -> dict:
    tau_t = torch.tensor(tau, dtype=torch.float64)
    alpha, sigma = float(schedule.alpha(tau_t)), float(schedule.sigma(tau_t))
    asked_t = t is not None
    t = t if asked_t else float(t_of_tau(schedule, tau_t))
    return {
        "tau": tau,
        "t": t,
        "alpha": alpha,
        "sigma": sigma,
        "scale": alpha + sigma,
        "log_snr": float(schedule.log_snr(tau_t)),
        "clamped": bool(is_clamped(schedule, torch.tensor(t))) if asked_t else False,
    }


def scale_max(schedule: Schedule) -> tuple[float, float]:
    """(max c, the tau where it is): c = alpha + sigma peaks at sqrt(2) where abar = 1/2, i.e. lam = 0."""
    lam = schedule.log_snr_table
    n = schedule.num_train_timesteps
    if lam[0] >= 0 >= lam[-1]:
        # lam(tau) is piecewise linear: the tau with lam = 0 is exact
        tau = float(tau_of_t(schedule, torch.tensor(0.5, dtype=torch.float64)))
    else:  # the whole schedule is on one side of abar = 1/2: c peaks at the end nearer to it
        tau = 0.0 if lam[0] < 0 else float(n - 1)
    tau64 = torch.tensor(tau, dtype=torch.float64)
    return float(schedule.alpha(tau64) + schedule.sigma(tau64)), tau


def schedule_report(schedule: Schedule, rows: int = 11, taus: list[float] = (), ts: list[float] = ()) -> dict:
    """The JSON object of ``d2f inspect-schedule --json``. Raises ``UserError`` for a tau outside
    [0, N-1] or a t outside [0, 1]."""
    n = schedule.num_train_timesteps
    for tau in taus:
        if not 0 <= tau <= n - 1:
            raise UserError(f"--tau {tau} is outside [0, {n - 1}]; diffusion time runs from 0 (data) to N-1 (noise)")
    for t in ts:
        if not 0 <= t <= 1:
            raise UserError(f"--t {t} is outside [0, 1]; FM time runs from 0 (noise) to 1 (data)")
    if rows < 0:
        raise UserError(f"--rows {rows} is negative; give 0 or more")
    grid = [round(k * (n - 1) / (rows - 1), 6) for k in range(rows)] if rows > 1 else [0.0] * rows
    table = [_row(schedule, tau) for tau in sorted(set(grid) | set(map(float, taus)))]
    table += [_row(schedule, float(tau_of_t(schedule, torch.tensor(t, dtype=torch.float64))), t) for t in ts]
    t_min, t_max = t_range(schedule)
    c_max, c_tau = scale_max(schedule)
    return {
        "num_train_timesteps": n,
        "prediction_type": schedule.prediction_type,
        "beta_schedule": schedule.beta_schedule,
        "zero_terminal_snr": schedule.zero_terminal_snr,
        "t_min": t_min,
        "t_max": t_max,
        "scale_max": c_max,
        "scale_max_tau": c_tau,
        "rows": table,
    }


def plot_schedule(schedule: Schedule, path: str | Path, title: str = "") -> Path:
    """One figure, four panels: alpha and sigma over tau; t(tau); c(t) over t; log-SNR over tau. The FM
    times that no diffusion timestep covers are shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = schedule.num_train_timesteps
    tau = torch.linspace(0, n - 1, 2001, dtype=torch.float64)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    t_min, t_max = t_range(schedule)
    tau_t = tau_of_t(schedule, t)
    c = schedule.alpha(tau_t) + schedule.sigma(tau_t)
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].plot(tau, schedule.alpha(tau), label="alpha (signal)")
    ax[0, 0].plot(tau, schedule.sigma(tau), label="sigma (noise)")
    ax[0, 0].set(xlabel="diffusion time tau", title="alpha, sigma")
    ax[0, 0].legend()
    ax[0, 1].plot(tau, t_of_tau(schedule, tau))
    ax[0, 1].axhspan(0, t_min, color="grey", alpha=0.3, label="not covered (clamped)")
    ax[0, 1].axhspan(t_max, 1, color="grey", alpha=0.3)
    ax[0, 1].set(
        xlabel="diffusion time tau", ylabel="FM time t", ylim=(0, 1), title="time map t = alpha / (alpha + sigma)"
    )
    ax[0, 1].legend()
    ax[1, 0].plot(t, c)
    for lo, hi in ((0, t_min), (t_max, 1)):
        ax[1, 0].axvspan(lo, hi, color="grey", alpha=0.3)
    ax[1, 0].axhline(math.sqrt(2), ls=":", color="k", lw=0.8)
    ax[1, 0].set(xlabel="FM time t (0 = noise, 1 = data)", title="scale c(t) = alpha + sigma (z = c x_t)")
    lam = schedule.log_snr(tau)
    ax[1, 1].plot(tau[torch.isfinite(lam)], lam[torch.isfinite(lam)])
    ax[1, 1].set(xlabel="diffusion time tau", title="log-SNR lam = log(abar / (1 - abar))")
    fig.suptitle(title or repr(schedule))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
