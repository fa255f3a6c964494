"""Notebook 2, exercise: the inverse time map tau(t), one linear solve on one segment of the log-SNR table."""

import torch


def tau_from_t(lam_table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The fractional diffusion timestep tau at FM time t (float64, inside the covered range), given the
    log-SNR at the integer timesteps, ``lam_table[i] = lam(i)`` (strictly decreasing in i)."""
    # t = sigmoid(lam / 2)  =>  lam = 2 logit(t)
    lam = 2 * torch.log(t / (1 - t))
    # the segment [i, i + 1] with lam(i) >= lam >= lam(i + 1) (the table decreases: search its negative)
    i = torch.searchsorted(-lam_table, -lam).clamp(1, len(lam_table) - 1) - 1
    # lam(tau) is linear on the segment: tau = i + (lam(i) - lam) / (lam(i) - lam(i + 1))
    return i + (lam_table[i] - lam) / (lam_table[i] - lam_table[i + 1])
