"""Richardson-Lucy deconvolution (Richardson 1972; Lucy 1974), the EM algorithm for Poisson
data (Shepp & Vardi 1982), with the optional total-variation term of Dey et al. 2006
("Richardson-Lucy algorithm with total variation regularization for 3D confocal microscope
deconvolution", eq. (6)):

    x <- x * A^T( c / (A x / g + r^2) ) / ( A^T 1 - weight * div( grad x / |grad x| ) ),

with ``c = max(y / g + r^2, 0)`` the measurement in photon counts shifted by the read-noise
variance (the shifted-Poisson approximation of the Poisson-Gaussian model, Snyder et al.
1993), ``g`` the gain and ``r`` the read-noise std of :class:`~invdiff.operators.noise.NoiseModel`
(``g = 1, r = 0`` for the other noise models). Every iterate stays nonnegative; with
``weight = 0`` and ``A^T 1 = 1`` each iterate has the flux of ``c``. Needs a nonnegative A.
"""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, check_iterations, check_weight, notify
from invdiff.classical.finite_differences import divergence, gradient, gradient_magnitude
from invdiff.operators.base import Operator

DEFAULT_WEIGHT = 0.0
DEFAULT_ITERATIONS = 30
#: Denominators below this fraction of the mean model value count as zero.
RATIO_FLOOR = 1e-6


def photon_model(operator: Operator, y: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(c, g, r^2)``: the shifted counts, gain and read-noise variance of the module docstring."""
    noise = operator.noise
    if noise.kind == "poisson_gaussian":
        gain, read_var = noise.gain, noise.read_std**2
    else:
        gain, read_var = 1.0, 0.0
    return (y / gain + read_var).clamp(min=0), gain, read_var


def poisson_log_likelihood(model: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``sum(c log m - m)`` per batch element, shape ``(B,)`` (the Poisson log-likelihood up to a constant)."""
    m = model.clamp(min=torch.finfo(model.dtype).tiny)
    return (counts * torch.log(m) - m).reshape(m.shape[0], -1).sum(dim=1)


def richardson_lucy(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Richardson-Lucy ``(B, 1, H, W)`` from a flat image with the measured flux; ``weight`` is
    the dimensionless RL-TV weight of Dey et al. (default 0: plain RL)."""
    lam = check_weight(weight, DEFAULT_WEIGHT, "richardson-lucy")
    steps = check_iterations(iterations, DEFAULT_ITERATIONS, "richardson-lucy")
    counts, gain, read_var = photon_model(operator, y)
    ones = torch.ones((1, *operator.measurement_shape), dtype=operator.dtype, device=y.device)
    sensitivity = operator.adjoint(ones)  # A^T 1, (1, C, H, W)
    flux = (counts - read_var).clamp(min=0).reshape(y.shape[0], -1).sum(dim=1) * gain
    flat = flux / sensitivity.sum().clamp(min=torch.finfo(operator.dtype).tiny)
    x = flat.reshape(-1, 1, 1, 1) * torch.ones((y.shape[0], *operator.image_shape), dtype=operator.dtype, device=y.device)
    for k in range(1, steps + 1):
        model = operator.forward(x) / gain + read_var
        floor = RATIO_FLOOR * model.abs().mean()
        ratio = counts / model.clamp(min=floor)
        denominator = sensitivity
        if lam > 0:
            g = gradient(x)
            eps = RATIO_FLOOR * x.abs().mean()
            denominator = sensitivity - lam * divergence(g / (gradient_magnitude(g) + eps))
        x = x * operator.adjoint(ratio) / denominator.clamp(min=RATIO_FLOOR)
        notify(callback, k, x)
    return x
