"""The small VE-diffusion steps that the solvers share (Karras et al. 2022 notation).

A state at noise level sigma is ``x = x0 + sigma * n``. From the denoised estimate
``x0hat = D(x, sigma)`` and the implied noise ``eps = (x - x0hat) / sigma`` one step to
``sigma_next`` is the DDIM / ancestral update (Song, Meng & Ermon 2021, eq. 12, in VE form;
k-diffusion's ``get_ancestral_step``):

    sigma_up   = eta * sigma_next * sqrt(1 - sigma_next^2 / sigma^2)
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x_next     = x0hat + sigma_down * eps + sigma_up * z,    z ~ N(0, I)

eta = 0 is deterministic DDIM, eta = 1 the ancestral (DDPM-like) sampler. Random numbers are
drawn on the CPU from the caller's generator and moved to the device, so a seed gives the same
draws on every device.
"""

from __future__ import annotations

import math

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like real ``x``, drawn on the CPU and moved to x's device."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, *, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=dtype, device="cpu").to(device)


def randn_measurement_like(y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Unit noise shaped like a measurement; complex y gets N(0, 1) real AND imaginary parts
    (the noise models' convention: variance per real and imaginary part)."""
    if y.is_complex():
        real = y.real
        return torch.complex(randn_like(real, generator), randn_like(real, generator))
    return randn_like(y, generator)


def measurement_noise(y: torch.Tensor, weight: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A draw of e ~ N(0, W^-1) shaped like y for the precision W (broadcastable to y); zero
    where W = 0, the entries the operator does not measure."""
    std = torch.where(weight > 0, weight.clamp(min=1e-300).rsqrt(), torch.zeros_like(weight))
    return randn_measurement_like(y, generator) * std


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of one step from sigma to sigma_next (floats, sigma > 0)."""
    if sigma_next <= 0:
        return 0.0, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(max(1.0 - sigma_next**2 / sigma**2, 0.0)))
    sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def ddim_step(
    x0hat: torch.Tensor,
    eps: torch.Tensor,
    sigma_down: float,
    sigma_up: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``x0hat + sigma_down * eps + sigma_up * z`` (z drawn only when sigma_up > 0)."""
    x = x0hat + sigma_down * eps if sigma_down > 0 else x0hat
    if sigma_up > 0:
        x = x + sigma_up * randn_like(x0hat, generator)
    return x
