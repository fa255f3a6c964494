"""Classifier-free guidance on the raw network output (Ho & Salimans 2022):

    o = o_u + w (o_c - o_u)

The FM velocity is affine in o for every parametrisation (docs/math.md §7), so this equals guidance on the
velocity, v_u + w (v_c - v_u). As diffusers' pipelines do, both branches run in one network call on the
batch [uncond; cond], so a guided sampler step still costs one call.
"""

from __future__ import annotations

import torch

from d2f.parametrizations import Net


def guided(net: Net, uncond: torch.Tensor | None, guidance: float) -> Net:
    """``net`` with guidance ``w`` against the unconditional embeddings ``uncond`` (B, L, D). With
    ``uncond`` None or w = 1 it is ``net`` itself: only the conditional branch runs."""
    if uncond is None or guidance == 1.0:
        return net

    def guided_net(z: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        o_u, o_c = net(torch.cat([z, z]), torch.cat([timestep, timestep]), torch.cat([uncond, cond])).chunk(2)
        # o = o_u + w (o_c - o_u)
        return o_u + guidance * (o_c - o_u)

    return guided_net
