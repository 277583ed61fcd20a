"""The one call every sampler and solver makes into a prior: a denoiser D(x, sigma).

Karras et al. 2022 (EDM), eq. 3: x = x0 + sigma * n with n ~ N(0, I); D(x, sigma) estimates
E[x0 | x] and the score is grad log p(x; sigma) = (D(x, sigma) - x) / sigma^2 (Tweedie).
All samplers and solvers work in this variance-exploding sigma parametrisation; a
variance-preserving network is wrapped by its preconditioning (precond.py) to the same form.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma)``: x ``(B, C, H, W)``, sigma ``(B,)`` (or a float) -> ``(B, C, H, W)``.

    Attributes: ``sigma_min`` and ``sigma_max`` (the noise range the prior was trained on, in
    its normalised image units), ``sigma_data`` (std of the normalised training images),
    ``image_shape`` ``(C, H, W)`` (H, W may be ``None`` for fully convolutional priors).
    """

    sigma_min: float
    sigma_max: float
    sigma_data: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor: ...


def as_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a float or ``(B,)`` sigma to a ``(B,)`` tensor on x's device/dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(x.shape[0])


def score(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """grad_x log p(x; sigma) = (D(x, sigma) - x) / sigma^2 (EDM eq. 3)."""
    s = as_sigma(sigma, x).view(-1, *([1] * (x.ndim - 1)))
    return (denoiser(x, s.flatten()) - x) / s**2
