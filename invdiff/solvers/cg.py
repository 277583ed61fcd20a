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
