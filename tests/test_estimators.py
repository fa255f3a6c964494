"""KID, Wilson and bootstrap intervals (``d2f.world.estimators``) against closed forms and brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from d2f.distances import kid
from d2f.world.estimators import bootstrap_interval, wilson_interval


def brute_force_kid(x, y):
    """The unbiased MMD^2 written out term by term (cubic polynomial kernel)."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    xy = sum(k(a, b) for a in x for b in y) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_written_out():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(7, 5, generator=g, dtype=torch.float64),
        torch.randn(6, 5, generator=g, dtype=torch.float64) + 0.5,
    )
    assert kid(x, y) == pytest.approx(brute_force_kid(x, y), rel=1e-12)


def test_kid_is_unbiased_and_sees_a_shift():
    """Same distribution: the mean over many small draws is 0 within its standard error (a biased estimator,
    like the Frechet distance, would sit clearly above 0 at n = 8). A mean shift gives a clearly positive KID."""
    g = torch.Generator().manual_seed(1)
    same = torch.tensor([kid(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)) for _ in range(2000)])
    assert abs(float(same.mean())) < 3 * float(same.std()) / 2000**0.5
    shifted = kid(torch.randn(256, 4, generator=g), torch.randn(256, 4, generator=g) + 1.0)
    assert shifted > 20 * float(same.std()) / 2000**0.5


def test_wilson_interval_closed_form():
    low, high = wilson_interval(45, 50)  # p = 0.9, z = 1.96: (0.786, 0.957)
    assert (low, high) == (pytest.approx(0.7864, abs=1e-3), pytest.approx(0.9565, abs=1e-3))
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(20, 20)[0] > 0.8  # unlike p +- z SE, not a zero-width interval at p = 1
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_bootstrap_interval_of_a_mean_is_the_normal_interval():
    """For the mean of 400 draws the percentile bootstrap interval is close to mean +- 1.96 s / sqrt(n)."""
    g = torch.Generator().manual_seed(2)
    sample = 3.0 + torch.randn(400, generator=g, dtype=torch.float64)
    low, high = bootstrap_interval(lambda s: float(s.mean()), sample, n_boot=2000)
    mean, se = float(sample.mean()), float(sample.std()) / 400**0.5
    assert low < mean < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.2 * se)


def test_world_kid_tells_the_domains_apart():
    from d2f.world.metrics import kid_score, reference_images
    from d2f.world.shapes import all_prompts

    prompts = all_prompts() * 4  # 96 images: real vs real measured -267, base vs target 4017 (raw 64-d features)
    base = reference_images(prompts, "base", seed=1)
    same, other = kid_score(base, prompts, "base"), kid_score(base, prompts, "target")
    assert abs(same) < 0.15 * other and other > 0
