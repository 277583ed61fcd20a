"""Total-variation regularised least squares by the primal-dual hybrid gradient method
(Chambolle & Pock 2011, "A first-order primal-dual algorithm for convex problems with
applications to imaging", Algorithm 1 with theta = 1):

    min_x  0.5 * sum w |A x - y|^2  +  lam * TV(x)  (+ indicator{x >= 0} for real images),

TV the isotropic total variation (:mod:`invdiff.classical.finite_differences`), joint over the
(real, imaginary) channels for complex images. K = [W^{1/2} A ; grad] is split into its two
blocks, each with its own dual step (block-diagonal preconditioning, Pock & Chambolle 2011,
"Diagonal preconditioning for first order primal-dual algorithms", Lemma 2):

    sigma_q = sigma / ||W^{1/2} A||^2,  sigma_p = sigma / 8,  tau * sigma < 1/2,

so only ``operator.norm()`` and forward/adjoint are needed. The ratio tau / sigma follows the
ratio of primal to dual magnitudes, ``STEP_RATIO * s / (sigma_y * ||A||)``, with ``s`` the
largest value of the direct reconstruction (also the starting point). ``lam = weight * sigma_y
* ||A||`` (:mod:`invdiff.classical.data_term` explains the units).
"""

from __future__ import annotations

import math

import torch

from invdiff.classical.arguments import Callback, check_iterations, check_weight, default_for, notify
from invdiff.classical.data_term import DataTerm, make_data_term, per_batch
from invdiff.classical.finite_differences import GRADIENT_NORM_SQ, divergence, gradient, gradient_magnitude, total_variation
from invdiff.operators.base import Operator

#: Tuned on 128x128 brain slices (examples/bench_classical.py), per operator kind.
DEFAULT_WEIGHTS: dict[str, float] = {"radon": 0.07, "mri": 0.7, "blur": 0.12}
DEFAULT_WEIGHT = 0.1
DEFAULT_ITERATIONS: dict[str, int] = {"radon": 300, "mri": 400, "blur": 300}
DEFAULT_ITERATION = 300
#: tau / sigma in units of (image scale) / (sigma_y * ||A||).
STEP_RATIO = 0.03


def tv_objective(data: DataTerm, lam: float, x: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum w |A x - y|^2 + lam * TV(x)`` per batch element, shape ``(B,)``."""
    return data.value(x) + lam * total_variation(x)


def solve_tv(
    data: DataTerm,
    lam: float,
    iterations: int,
    *,
    nonnegative: bool,
    x0: torch.Tensor,
    step_ratio: float = STEP_RATIO,
    callback: Callback | None = None,
    anchor: torch.Tensor | None = None,
    anchor_weight: float = 0.0,
) -> torch.Tensor:
    """Chambolle-Pock iterations from ``x0 (B, C, H, W)``; returns the last primal iterate.

    With ``anchor`` a the objective gains ``0.5 * anchor_weight * ||x - a||^2`` (the proximal
    term of a splitting solver), handled in the primal step's proximal map
    ``x = (v + tau mu a) / (1 + tau mu)``."""
    operator = data.operator
    sqrt_w = data.weights.sqrt()
    b = sqrt_w * data.y
    data_norm_sq = max(data.lipschitz, torch.finfo(x0.dtype).tiny)
    dual_scale = max(data.sigma * data.operator_norm, torch.finfo(x0.dtype).tiny)
    scale = x0.abs().reshape(x0.shape[0], -1).amax(dim=1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    rho = step_ratio * scale / dual_scale  # (B,)
    tau = per_batch(0.99 * rho / math.sqrt(2.0), x0)
    sigma = 0.99 / (rho * math.sqrt(2.0))
    sigma_q = per_batch(sigma / data_norm_sq, data.y)
    sigma_p = per_batch(sigma / GRADIENT_NORM_SQ, x0.unsqueeze(2))

    x = x0.clamp(min=0) if nonnegative else x0.clone()
    x_bar = x
    q = torch.zeros_like(data.y)
    p = torch.zeros(x.shape[:2] + (2,) + x.shape[2:], dtype=x.dtype, device=x.device)
    for k in range(1, iterations + 1):
        q = (q + sigma_q * (sqrt_w * operator.forward(x_bar) - b)) / (1.0 + sigma_q)
        if lam > 0:
            p = p + sigma_p * gradient(x_bar)
            p = p * (lam / torch.clamp(gradient_magnitude(p), min=lam))
        x_new = x - tau * (operator.adjoint(sqrt_w * q) - divergence(p))
        if anchor is not None and anchor_weight > 0:
            x_new = (x_new + (tau * anchor_weight) * anchor) / (1.0 + tau * anchor_weight)
        if nonnegative:
            x_new = x_new.clamp(min=0)
        x_bar = 2.0 * x_new - x
        x = x_new
        notify(callback, k, x)
    return x


def tv(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
    nonnegative: bool | None = None,
) -> torch.Tensor:
    """TV-regularised weighted least squares ``(B, C, H, W)``, started from ``operator.direct(y)``.

    ``weight`` defaults to ``DEFAULT_WEIGHTS[operator kind]``; ``nonnegative`` to True for real
    images (C = 1)."""
    lam_rel = check_weight(weight, default_for(DEFAULT_WEIGHTS, operator, DEFAULT_WEIGHT), "tv")
    steps = check_iterations(iterations, int(default_for(DEFAULT_ITERATIONS, operator, DEFAULT_ITERATION)), "tv")
    clip = operator.image_shape[0] == 1 if nonnegative is None else nonnegative
    data = make_data_term(operator, y)
    lam = lam_rel * data.image_norm_scale()
    return solve_tv(data, lam, steps, nonnegative=clip, x0=operator.direct(y), callback=callback)
