"""``--t-sampling near-noise`` draws FM times with density 2 (1 - t) (``Parametrization.sample_time``): checked in
closed form on many draws, in float64, with a Kolmogorov-Smirnov test and the first two moments.

Density p(t) = 2 (1 - t) on [0, 1], so  F(s) = P(t <= s) = 1 - (1 - s)^2,  E[t] = 1/3,  E[t^2] = 1/6,
Var[t] = 1/18.
"""

from __future__ import annotations

import math

import pytest
import torch

from d2f.core.schedule import Schedule
from d2f.parametrizations import Diff2FlowModel, NaiveFMModel

DRAWS = 200_000
# sqrt(n) D_n -> Kolmogorov distribution; P(sqrt(n) D_n > 1.95) ~ 0.001
KS_CRITICAL = 1.95 / math.sqrt(DRAWS)


def near_noise_cdf(s: torch.Tensor) -> torch.Tensor:
    # F(s) = 1 - (1 - s)^2
    return 1 - (1 - s) ** 2


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
