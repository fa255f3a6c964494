"""Estimators with known precision, for comparing finetunes: KID, and intervals for accuracies and any statistic.

- ``kid``: the kernel inception distance (Binkowski et al. 2018, "Demystifying MMD GANs") on feature rows,
  the unbiased estimator of the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3:

      KID = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i, j} k(x_i, y_j)

  Unbiased at every sample size (it can be slightly negative when the two sets come from one distribution),
  so, unlike the Frechet distance, KIDs measured at different n can be compared.
- ``wilson_interval``: the Wilson score interval of a binomial fraction k / n (better than p +- z SE near 0
  and 1, where accuracies live).
- ``bootstrap_interval``: the percentile bootstrap interval of any statistic of one or more samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def kid(feats_x: torch.Tensor, feats_y: torch.Tensor) -> float:
    """Unbiased squared MMD (cubic polynomial kernel) between feature rows (m, d) and (n, d), in float64."""
    x, y = feats_x.double(), feats_y.double()
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2 or y.shape[1] != d:
        raise ValueError("kid needs at least 2 rows on each side, with the same feature width")
    # k(a, b) = (a.b / d + 1)^3
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    # the diagonals (i = j) are left out of the within-set sums: that is what makes the estimator unbiased
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


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
