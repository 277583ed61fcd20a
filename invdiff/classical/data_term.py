"""The weighted data term every classical method minimises, and its regularisation scale.

The negative log-likelihood of the operator's noise model (DESIGN.md, operators/noise.py) is
``0.5 * sum_i |(A x)_i - y_i|^2 / var_i``. Classical methods minimise it multiplied by
``sigma^2``, the mean noise variance, which keeps numbers of order one:

    D(x) = 0.5 * sum_i w_i |(A x)_i - y_i|^2,      w_i = sigma^2 / var_i,

so ``w = 1`` for Gaussian noise and the weights of penalised weighted least squares for the
Poisson models (Sauer & Bouman 1993; Fessler 1994). Noiseless data (noise kind ``none``) are
treated as if they carried Gaussian noise of ``NOISELESS_REL * max|y|``.

Regularisation scale. A regulariser R that is 1-homogeneous in the image (TV, l1-wavelet) is
weighted as ``lam * R(x)`` with

    lam = weight * sigma * ||A||,

i.e. ``NLL + weight * (||A|| / sigma) * R``: for an operator with flat spectrum ``||A||`` the
image-domain noise is ``sigma / ||A||``, so ``weight`` is the soft threshold in units of that
noise, a dimensionless number that transfers between CT, MRI and microscopy and between
image scales (scaling the image and the noise by ``s`` leaves the solution scaled by ``s``).
Quadratic (Tikhonov) regularisers use ``mu = weight * ||A||^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invdiff.operators.base import Operator, inner

#: Relative noise assumed for noiseless measurements (noise kind "none").
NOISELESS_REL = 1e-3

#: Power iterations for ||A|| and the safety margin on the estimate (power iteration under-estimates).
NORM_ITERATIONS = 30
NORM_MARGIN = 1.02


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner products ``Re <a_b, b_b>`` per batch element, shape ``(B,)``."""
    prod = (torch.conj(a) * b).real if (a.is_complex() or b.is_complex()) else a * b
    return prod.reshape(prod.shape[0], -1).sum(dim=1)


def per_batch(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> shape ``(B, 1, ..., 1)`` broadcastable against ``like``."""
    return values.reshape((values.shape[0],) + (1,) * (like.dim() - 1))


def safe_divide(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den == 0`` (per-batch CG step lengths after convergence)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, torch.ones_like(den), den))


@dataclass(frozen=True)
class DataTerm:
    """``D(x) = 0.5 * sum w |A x - y|^2`` for one batch of measurements ``y (B, *measurement_shape)``.

    ``weights`` broadcast against y's real shape (a 0-d tensor for Gaussian noise); ``sigma``
    is the mean noise standard deviation in measurement units; ``operator_norm`` is ``||A||``
    and ``lipschitz`` bounds ``||A^H W A||`` (the Lipschitz constant of grad D).
    """

    operator: Operator
    y: torch.Tensor
    weights: torch.Tensor
    sigma: float
    operator_norm: float
    lipschitz: float

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``A x - y``, shape of y."""
        return self.operator.forward(x) - self.y

    def weighted_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``A^H (w r)``: measurement-shaped r -> image ``(B, C, H, W)``."""
        return self.operator.adjoint(self.weights * r)

    def gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``grad D(x) = A^H W (A x - y)``."""
        return self.weighted_adjoint(self.residual(x))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``D(x)`` per batch element, shape ``(B,)``."""
        r = self.residual(x)
        return 0.5 * batch_dot(r, self.weights * r)

    def image_norm_scale(self) -> float:
        """``sigma * ||A||``: the scale of 1-homogeneous regularisers (module docstring)."""
        return self.sigma * self.operator_norm


def reference_sigma(operator: Operator, y: torch.Tensor) -> float:
    """Mean noise standard deviation of ``y`` in measurement units (module docstring)."""
    if operator.noise.kind == "none":
        peak = float(y.abs().max()) if y.numel() else 0.0
        return NOISELESS_REL * peak if peak > 0 else 1.0
    variance = operator.noise.variance(y).expand(y.real.shape if y.is_complex() else y.shape)
    return math.sqrt(float(variance.mean()))


def operator_norm(operator: Operator) -> float:
    """``||A||_2`` by the operator's own power iteration, from a fixed seed (reproducible)."""
    generator = torch.Generator().manual_seed(0)
    return NORM_MARGIN * operator.norm(iterations=NORM_ITERATIONS, generator=generator)


def make_data_term(operator: Operator, y: torch.Tensor) -> DataTerm:
    """The weighted data term for measurement ``y`` under ``operator``'s noise model."""
    sigma = reference_sigma(operator, y)
    if operator.noise.kind == "none":
        weights = torch.ones((), dtype=operator.dtype, device=y.device)
    else:
        weights = (sigma**2 / operator.noise.variance(y)).to(operator.dtype)
    norm = operator_norm(operator)
    if weights.numel() == 1:
        lipschitz = float(weights) * norm**2
    else:
        lipschitz = _weighted_lipschitz(operator, weights)
    return DataTerm(operator, y, weights, sigma, norm, lipschitz)


def _weighted_lipschitz(operator: Operator, weights: torch.Tensor, iterations: int = NORM_ITERATIONS) -> float:
    """``max_b ||A^H W_b A||`` by batched power iteration (non-constant weights: the PWLS case)."""
    generator = torch.Generator().manual_seed(0)
    batch = weights.shape[0] if weights.dim() > 0 else 1
    x = operator.random_image(batch, generator)
    x = x / per_batch(batch_dot(x, x).sqrt(), x)
    values = torch.zeros(batch, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        z = operator.adjoint(weights * operator.forward(x))
        values = batch_dot(z, z).sqrt()
        x = z / per_batch(values.clamp(min=torch.finfo(x.dtype).tiny), z)
    return NORM_MARGIN * float(values.max())


__all__ = ["DataTerm", "make_data_term", "batch_dot", "per_batch", "safe_divide", "inner"]
