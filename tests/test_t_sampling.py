"""``--t-sampling near-noise`` and ``u-shaped`` draw FM times from their stated densities
(``Parametrization.sample_time``): checked in closed form on many draws, in float64, with a Kolmogorov-Smirnov test
and the first two moments.

near-noise: p(t) = 2 (1 - t) on [0, 1], so  F(s) = P(t <= s) = 1 - (1 - s)^2,  E[t] = 1/3,  E[t^2] = 1/6,
Var[t] = 1/18.

u-shaped (2-rectified flow++): p(t) = e^(a t) + e^(a (1 - t)), normalised, a = 4; its reference code draws t from
the density a e^(a t) / (e^a - 1) and flips it to 1 - t half the time. So
F(s) = (e^(a s) - e^(a (1 - s)) + e^a - 1) / (2 (e^a - 1)), and by symmetry E[t] = 1/2.
"""

from __future__ import annotations

import math

import pytest
import torch

from d2f.core.schedule import Schedule
from d2f.parametrizations import Diff2FlowModel, NaiveFMModel
from d2f.parametrizations.base import U_SHAPE_A

DRAWS = 200_000
# sqrt(n) D_n -> Kolmogorov distribution; P(sqrt(n) D_n > 1.95) ~ 0.001
KS_CRITICAL = 1.95 / math.sqrt(DRAWS)


def near_noise_cdf(s: torch.Tensor) -> torch.Tensor:
    # F(s) = 1 - (1 - s)^2
    return 1 - (1 - s) ** 2


def u_shaped_cdf(s: torch.Tensor) -> torch.Tensor:
    # the mixture of a e^(a t) / (e^a - 1) and its mirror: F(s) = (e^(a s) - 1 + e^a - e^(a (1 - s))) / (2 (e^a - 1))
    a = U_SHAPE_A
    return (torch.exp(a * s) - 1 + math.exp(a) - torch.exp(a * (1 - s))) / (2 * (math.exp(a) - 1))


def ks_statistic(t: torch.Tensor, cdf) -> float:
    """sup_s |F_n(s) - F(s)| of the sample ``t`` (float64): the largest gap on either side of each jump."""
    t = t.double().sort().values
    n = len(t)
    f = cdf(t)
    above = torch.arange(1, n + 1, dtype=torch.float64) / n - f
    below = f - torch.arange(0, n, dtype=torch.float64) / n
    return float(torch.maximum(above, below).max())


@pytest.mark.parametrize("model", [Diff2FlowModel, NaiveFMModel])
def test_near_noise_has_density_two_one_minus_t(model):
    t = model(Schedule.preset("sd15")).sample_time(DRAWS, "near-noise", torch.Generator().manual_seed(0))
    assert t.shape == (DRAWS,) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1
    assert ks_statistic(t, near_noise_cdf) < KS_CRITICAL
    t = t.double()
    # E[t] = 1/3 with standard error sqrt(Var / n), Var = 1/18
    assert abs(t.mean().item() - 1 / 3) < 5 * math.sqrt(1 / 18 / DRAWS)
    # E[t^2] = 1/6; Var[t^2] = E[t^4] - E[t^2]^2 = 1/15 - 1/36 = 7/180
    assert abs((t**2).mean().item() - 1 / 6) < 5 * math.sqrt(7 / 180 / DRAWS)


def test_the_ks_check_tells_uniform_from_near_noise():
    """The same statistic rejects uniform times, whose CDF s is at most 1/4 away from 1 - (1 - s)^2."""
    t = Diff2FlowModel(Schedule.preset("sd15")).sample_time(DRAWS, "uniform", torch.Generator().manual_seed(0))
    assert ks_statistic(t, near_noise_cdf) > 0.2
    assert ks_statistic(t, lambda s: s) < KS_CRITICAL


def test_near_noise_is_seeded():
    sample = lambda seed: NaiveFMModel(Schedule.preset("sd15")).sample_time(  # noqa: E731
        16, "near-noise", torch.Generator().manual_seed(seed)
    )
    assert torch.equal(sample(3), sample(3)) and not torch.equal(sample(3), sample(4))


@pytest.mark.parametrize("model", [Diff2FlowModel, NaiveFMModel])
def test_u_shaped_is_2_rectified_flow_plus_plus_density(model):
    t = model(Schedule.preset("sd15")).sample_time(DRAWS, "u-shaped", torch.Generator().manual_seed(0))
    assert t.shape == (DRAWS,) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1
    assert ks_statistic(t, u_shaped_cdf) < KS_CRITICAL
    t = t.double()
    # E[t] = 1/2 by symmetry; Var[t] < 1/4 bounds the standard error
    assert abs(t.mean().item() - 0.5) < 5 * math.sqrt(0.25 / DRAWS)
    # more at the ends than in the middle: p(0) / p(1/2) = (1 + e^a) / (2 e^(a/2)) = 3.76 for a = 4
    ends, middle = ((t < 0.1) | (t > 0.9)).double().mean(), ((t > 0.4) & (t < 0.6)).double().mean()
    assert ends > 2.5 * middle


def test_the_ks_check_tells_uniform_from_u_shaped():
    """Uniform times are rejected: at s = 1/4, F(s) = (e - 1 + e^4 - e^3) / (2 (e^4 - 1)) = 0.338, not 0.25."""
    t = Diff2FlowModel(Schedule.preset("sd15")).sample_time(DRAWS, "uniform", torch.Generator().manual_seed(0))
    assert ks_statistic(t, u_shaped_cdf) > 0.08
