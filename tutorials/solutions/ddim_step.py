"""Notebook 3, exercise 2: one DDIM step (eta = 0) written as one FM Euler step."""

import torch


def ddim_step_as_fm_euler(z: torch.Tensor, eps_hat: torch.Tensor, alpha, sigma, alpha_next, sigma_next) -> torch.Tensor:
    """The next diffusion sample z' at (alpha_next, sigma_next), from z at (alpha, sigma) and an epsilon
    prediction, by an FM Euler step."""
    # into FM coordinates: c = alpha + sigma,  x = z / c,  t = alpha / c
    c, c_next = alpha + sigma, alpha_next + sigma_next
    x, t, t_next = z / c, alpha / c, alpha_next / c_next
    # u_hat = x1_hat - eps_hat,  x1_hat = (z - sigma eps_hat) / alpha
    u_hat = (z - sigma * eps_hat) / alpha - eps_hat
    # FM Euler: x' = x + (t' - t) u_hat
    x_next = x + (t_next - t) * u_hat
    # back to diffusion coordinates: z' = c' x'
    return c_next * x_next
