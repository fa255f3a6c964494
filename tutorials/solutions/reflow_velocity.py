"""Notebook 6, exercise: the velocity of the paired (reflow) coupling, by kernel regression over the pairs."""

import torch


def paired_velocity(x: torch.Tensor, t: float, pair_x0: torch.Tensor, pair_x1: torch.Tensor, h: float) -> torch.Tensor:
    """u_1(x, t) = E[x1 - x0 | x_t = x] over the pairs (x0_i, x1_i), Nadaraya-Watson with bandwidth h;
    x is (B, D), the pairs (N, D); returns (B, D)."""
    # x_t,i = t x1_i + (1 - t) x0_i: where pair i's straight line is at time t
    xt = t * pair_x1 + (1 - t) * pair_x0
    # w_i proportional to exp(-||x - x_t,i||^2 / (2 h^2)), normalised over the pairs
    w = torch.softmax(-((x[:, None, :] - xt[None]) ** 2).sum(-1) / (2 * h**2), dim=1)
    # u_1 = sum_i w_i (x1_i - x0_i): the reflow target x1 - x0, averaged over nearby pairs
    return w @ (pair_x1 - pair_x0)
