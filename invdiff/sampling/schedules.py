"""Noise-level schedules: decreasing sigmas from sigma_max to sigma_min, then 0.

Each returns a 1D tensor of length n + 1 whose last entry is 0 (the clean image), as in
k-diffusion's ``get_sigmas_*``. Samplers and solvers take any such tensor.
"""

from __future__ import annotations

import math

import torch


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM schedule (Karras et al. 2022, eq. 5):
    sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
    if n < 1:
        raise ValueError("need at least one step")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def geometric_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Geometric (log-linear) VE schedule of Song & Ermon 2019 / Song et al. 2021."""
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64))
    return torch.cat([sigmas, sigmas.new_zeros(1)])
