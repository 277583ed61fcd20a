"""Averaging the diffusion posterior with a classical estimate (the classical safety term).

A prior trained on a few volumes can be confidently wrong on images unlike them, while a
classical regulariser (TV) is wrong in a different, well understood way. invdiff hedges
between the two models as Bayesian model averaging does (Hoeting et al. 1999, eq. 1-2):
with weight beta on the classical estimate x_c (a point mass) and 1 - beta on the diffusion
posterior with mean m and variance s^2 per pixel, the averaged posterior has

    mean     = (1 - beta) m + beta x_c
    variance = (1 - beta) s^2 + beta (1 - beta) |m - x_c|^2.

The second term of the variance is the models' disagreement: where TV and the prior disagree
the reported uncertainty grows, which is where the errors are. beta = 0 is the diffusion
posterior alone. The samples themselves (``--keep-samples``) are the diffusion samples.
"""

from __future__ import annotations

import torch

from invdiff.errors import InputError


def check_weight(beta: float) -> float:
    """``beta`` as a float in [0, 1] (InputError otherwise)."""
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise InputError(f"option classical_weight must lie between 0 and 1, got {beta:g}.")
    return beta


def posterior_moments(samples: torch.Tensor, classical: torch.Tensor | None = None, beta: float = 0.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel mean and standard deviation ``(H, W)`` of K samples ``(K, H, W)`` (real or
    complex; the std of a complex image is sqrt(E|z - m|^2)), averaged with the classical
    estimate ``(H, W)`` by weight ``beta`` (module docstring). Every pixel is independent, so
    a stack works the same: ``(K, n, H, W)`` and ``(n, H, W)`` give ``(n, H, W)``. The sample variance is the
    unbiased one (K - 1 in the denominator); it is 0 for K = 1."""
    beta = check_weight(beta)
    k = samples.shape[0]
    mean = samples.mean(0)
    var = (samples - mean).abs().pow(2).sum(0) / (k - 1) if k > 1 else torch.zeros_like(mean.real)
    if classical is None or beta == 0.0:
        return mean, var.sqrt()
    classical = classical.to(mean.dtype)
    return (1 - beta) * mean + beta * classical, ((1 - beta) * var + beta * (1 - beta) * (mean - classical).abs().pow(2)).sqrt()
