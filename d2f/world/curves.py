"""Summaries of learning curves and of paired comparisons over training seeds, with their intervals.

A learning curve is a metric measured at several step counts of one run: ``steps`` (increasing) and
``values``. Two summaries make curves comparable as numbers:

- ``area_under_curve``: the trapezoid mean of the curve over [steps[0], steps[-1]] (the metric's average over
  training, in the metric's units): lower is better for FD / KID, higher for accuracies;
- ``steps_to_threshold``: the first step at which the curve reaches a threshold (linear interpolation
  between measured steps), or None if it never does: how fast, not only how far.

A comparison of two settings A and B trained with the same seeds is paired: seed s of A and seed s of B saw
the same data order and noise, so ``paired_difference`` takes the differences per seed and gives their mean
with a percentile bootstrap interval over seeds (with 5 seeds the interval is rough; it is still the honest
one: it says how much the answer moves with the training seed).

``resolvable_difference``: the precision of one measurement, from re-draws of the evaluation noise of one fixed
model: two models each measured once differ by more than this (95 %) only if they really differ,
1.96 * sqrt(2) * the standard deviation over re-draws.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def area_under_curve(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid mean of the curve over its step range (a single point: that value)."""
    if len(steps) != len(values) or not steps:
        raise ValueError("steps and values must be non-empty and of the same length")
    if len(steps) == 1:
        return float(values[0])
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("steps must increase")
    area = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(steps, steps[1:], values, values[1:]))
    return area / (steps[-1] - steps[0])


def steps_to_threshold(
    steps: Sequence[float], values: Sequence[float], threshold: float, lower_is_better: bool = True
) -> float | None:
    """The first step where the curve reaches ``threshold`` (<= it if ``lower_is_better``, else >=),
    interpolated linearly between the two measured steps around the crossing; None if it never does."""
    sign = 1 if lower_is_better else -1

    def reached(v: float) -> bool:
        return sign * v <= sign * threshold

    for k, (s, v) in enumerate(zip(steps, values)):
        if reached(v):
            if k == 0:
                return float(s)
            s0, v0 = steps[k - 1], values[k - 1]
            return float(s0 + (s - s0) * (v0 - threshold) / (v0 - v))
    return None


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """{"mean", "low", "high", "n", "sd"}: the mean of ``values`` and its percentile bootstrap interval."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n_boot))
    tail = (1 - level) / 2
    low, high = means[int(tail * (n_boot - 1))], means[int(math.ceil((1 - tail) * (n_boot - 1)))]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "low": low, "high": high, "n": len(values), "sd": sd}


def paired_difference(a: dict, b: dict, **kwargs) -> dict | None:
    """Mean of a[s] - b[s] over the keys (training seeds) both have, with its bootstrap interval
    (``bootstrap_mean``); None if no key is shared."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    out = bootstrap_mean([a[s] - b[s] for s in shared], **kwargs)
    out["seeds"] = shared
    return out


def resolvable_difference(redraws: Sequence[float], z: float = 1.96) -> dict:
    """{"sd", "smallest_difference"} from one model's metric under re-drawn evaluation noise."""
    if len(redraws) < 2:
        raise ValueError("need at least 2 re-draws")
    sd = statistics.stdev(redraws)
    return {"sd": sd, "smallest_difference": z * math.sqrt(2) * sd, "n_redraws": len(redraws)}
