"""Estimators with known precision, for comparing finetunes: intervals for accuracies and any statistic (the
distances between feature sets, FD and KID, are in ``d2f.distances``).
- ``wilson_interval``: the Wilson score interval of a binomial fraction k / n (better than p +- z SE near 0
  and 1, where accuracies live).
- ``bootstrap_interval``: the percentile bootstrap interval of any statistic of one or more samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the fraction successes / n.

    centre = (p + z^2 / 2n) / (1 + z^2 / n),   half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = _normal_quantile(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 and n the bounds are exactly 0 and 1 (the formula gives them only up to round-off)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def bootstrap_interval(
    statistic: Callable[..., float], *samples: torch.Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``: each sample (rows along dim 0) is resampled
    with replacement, independently, ``n_boot`` times, from a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_boot):
        resampled = [s[torch.randint(0, s.shape[0], (s.shape[0],), generator=gen)] for s in samples]
        values.append(statistic(*resampled))
    values = torch.tensor(values, dtype=torch.float64)
    tail = (1 - level) / 2
    return float(values.quantile(tail)), float(values.quantile(1 - tail))


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (inverse CDF), through torch's erfinv."""
    return float(math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1, dtype=torch.float64)))
