"""Batched conjugate gradients on the operator's (regularised, weighted) normal equations.

Solves, independently for every batch element b,

    (A^H W A + rho_b I) x_b = rhs_b

where W is the inverse noise variance of the measurement (a tensor broadcastable to y) and
rho_b >= 0. The matrix is symmetric positive (semi)definite for the real inner product
``<a, b> = sum(a * b)`` on images, so plain CG applies (Hestenes & Stiefel 1952). With
rho = 0 and a zero start the iterates stay in range(A^H), so CG converges to the minimum-norm
least-squares solution (CGNR): that is the pseudo-inverse DDNM uses.

A fixed number of iterations is run without any host synchronisation (no ``.item()``), so the
loop stays on the GPU; converged or zero-residual elements are frozen by masking, not by
breaking out of the loop.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from invdiff.linalg import _bcast, conjugate_gradient  # conjugate_gradient is re-exported
from invdiff.operators.base import Operator


def normal_matvec(
    operator: Operator, weight: torch.Tensor, rho: torch.Tensor | float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map ``x -> A^H (W * A x) + rho x`` (rho a float or ``(B,)`` tensor)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        out = operator.adjoint(weight * operator.forward(x))
        if isinstance(rho, torch.Tensor):
            return out + _bcast(rho.to(x.dtype), x) * x
        return out + rho * x if rho else out

    return apply


def solve_data_proximal(
    operator: Operator,
    y: torch.Tensor,
    weight: torch.Tensor,
    anchor: torch.Tensor,
    rho: torch.Tensor | float,
    iterations: int,
) -> torch.Tensor:
    """argmin_x 0.5 ||A x - y||_W^2 + 0.5 rho ||x - anchor||^2, by CG started at ``anchor``.

    Normal equations ``(A^H W A + rho I) x = A^H W y + rho anchor``. anchor ``(B, C, H, W)``,
    y ``(B, *measurement_shape)``, rho a float or ``(B,)``. With few iterations this is the
    early-stopped Krylov data step of DDS (Chung et al. 2024); solved fully it is the proximal
    step of DiffPIR (Zhu et al. 2023) and of split Gibbs sampling.
    """
    rho_b = rho if isinstance(rho, torch.Tensor) else torch.full((anchor.shape[0],), float(rho), dtype=anchor.dtype, device=anchor.device)
    rhs = operator.adjoint(weight * y) + _bcast(rho_b.to(anchor.dtype), anchor) * anchor
    return conjugate_gradient(normal_matvec(operator, weight, rho_b), rhs, anchor, iterations)


def pseudo_inverse(
    operator: Operator, residual: torch.Tensor, weight: torch.Tensor, iterations: int
) -> torch.Tensor:
    """Weighted minimum-norm solution ``u = A^+ r`` of ``A^H W A u = A^H W r`` (CGNR from 0).

    residual ``(B, *measurement_shape)`` -> ``(B, C, H, W)``. For a constant W this is the
    Moore-Penrose pseudo-inverse applied to r, whatever the scale of W.
    """
    rhs = operator.adjoint(weight * residual)
    return conjugate_gradient(normal_matvec(operator, weight), rhs, torch.zeros_like(rhs), iterations)


def solve_discrepancy_proximal(
    operator: Operator,
    y: torch.Tensor,
    weight: torch.Tensor,
    anchor: torch.Tensor,
    rho: float,
    iterations: int,
    dof: int,
    target: float = 1.0,
    searches: int = 12,
    span: float = 1e6,
) -> torch.Tensor:
    """The data step with its weight chosen by Morozov's discrepancy principle (Morozov 1966).

    Among the proximal points ``x(r) = argmin 0.5 ||A x - y||_W^2 + 0.5 r ||x - anchor||^2``
    (W = 1/variance), take the one closest to the anchor (largest r) whose misfit does not
    exceed the noise level, ``||A x - y||_W^2 <= target * dof`` (dof = real measurement degrees
    of freedom, the expected misfit of the true image). The misfit of x(r) grows with r, so r
    is found per batch element by bisection on log r over ``[rho / span, rho * span]``
    (``searches`` CG solves of ``iterations`` steps; resolution ``2 ln(span) / 2^searches`` in
    log r), without host synchronisation. An anchor that already fits is returned unchanged
    (the data would only add noise); when no r in the bracket fits, the smallest r is used.
    Relative to the fixed step ``r = rho`` this is a data weight rho / r chosen per step.
    """
    from invdiff.solvers.likelihood import weighted_misfit

    if not rho > 0:
        return solve_data_proximal(operator, y, weight, anchor, rho, iterations)
    batch = anchor.shape[0]
    limit = target * dof
    anchor_fits = weighted_misfit(operator, anchor, y, weight) <= limit
    lo = torch.full((batch,), math.log(rho / span), dtype=anchor.dtype, device=anchor.device)
    hi = torch.full((batch,), math.log(rho * span), dtype=anchor.dtype, device=anchor.device)
    best = solve_data_proximal(operator, y, weight, anchor, lo.exp(), iterations)
    for _ in range(searches):
        mid = 0.5 * (lo + hi)
        x = solve_data_proximal(operator, y, weight, anchor, mid.exp(), iterations)
        ok = weighted_misfit(operator, x, y, weight) <= limit
        best = torch.where(_bcast(ok, x), x, best)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return torch.where(_bcast(anchor_fits, best), anchor, best)
