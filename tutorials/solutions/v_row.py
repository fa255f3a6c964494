"""Notebook 3, exercise 1: the v-prediction row of the velocity table."""

import torch


def velocity_from_v(v_hat: torch.Tensor, z: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """u_hat from a v-prediction output ``v_hat`` at the diffusion sample ``z`` (alpha, sigma: per sample
    tensors broadcastable to z, or floats)."""
    # x1_hat = alpha z - sigma v_hat
    x1_hat = alpha * z - sigma * v_hat
    # eps_hat = sigma z + alpha v_hat
    eps_hat = sigma * z + alpha * v_hat
    # u_hat = x1_hat - eps_hat
    return x1_hat - eps_hat
