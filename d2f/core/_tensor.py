"""Small tensor helpers shared by the math core: dtypes and per-sample broadcasting.

The bridge never computes in half precision: schedules are float64 tables, conversions run in
float32 or better (docs/math.md §13).
"""

from __future__ import annotations

import torch


def as_float64(x) -> tuple[torch.Tensor, torch.dtype]:
    """(x in float64, the dtype to answer in): the input's floating dtype, float64 for ints and floats."""
    x = torch.as_tensor(x)
    return x.to(torch.float64), (x.dtype if x.is_floating_point() else torch.float64)


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """The dtype the bridge computes in: float64 for float64 inputs, float32 for everything else (never half)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (B,) (or a scalar) to broadcast over x (B, ...)."""
    coef = torch.as_tensor(coef).to(x.device)
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim())) if coef.dim() else coef
