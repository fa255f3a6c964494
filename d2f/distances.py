"""Distances between two sets of feature rows, (N, D) and (M, D), in float64: how far samples are from real images.

- ``frechet_distance``: the Frechet distance between Gaussians fitted to the two sets (FID's formula, on any
  features). Biased upward at small n: compare FDs only at the same n.
- ``kid``: the kernel inception distance (Binkowski et al. 2018, "Demystifying MMD GANs"), the unbiased estimator
  of the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3:

      KID = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j) - 2/(mn) sum_{i, j} k(x_i, y_j)

  Unbiased at every sample size (it can be slightly negative when the two sets come from one distribution),
  so, unlike the Frechet distance, KIDs measured at different n can be compared.

The built-in world's metrics (``d2f.world.metrics``) use them on its evaluator's features, ``d2f train`` on the VAE
encoder's features of a user's held-out images (``d2f.training.holdout``).
"""

from __future__ import annotations

import torch


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D), in float64:

        FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr( (S_a^1/2 S_b S_a^1/2)^1/2 )

    The last trace equals tr((S_a S_b)^1/2) of the usual formula but is the root of a symmetric PSD
    matrix, so ``eigh`` computes it stably (no scipy, no complex parts)."""
    if feats_a.ndim != 2 or feats_b.ndim != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples per set (covariances)")
    a, b = feats_a.double(), feats_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)

    def psd_sqrt(m: torch.Tensor) -> torch.Tensor:
        # symmetric square root; round-off can make tiny eigenvalues negative: clamp them to 0
        w, v = torch.linalg.eigh((m + m.T) / 2)
        return (v * w.clamp_min(0).sqrt()) @ v.T

    root_a = psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(fd.item(), 0.0)


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
