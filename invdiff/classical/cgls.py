"""CGLS: conjugate gradients for (weighted) least squares (Hestenes & Stiefel 1952;
Paige & Saunders 1982, "LSQR", section 7.1 gives this form).

Minimises ``0.5 * || W^{1/2} (A x - y) ||^2`` with ``W`` the noise weights of
:mod:`invdiff.classical.data_term` (plain least squares for Gaussian noise, PWLS for
Poisson models). Started from x = 0, the iterates stay in range(A^H), so CGLS converges to
the minimum-norm least-squares solution; stopping early regularises (semi-convergence).
Works through forward/adjoint only; every batch element gets its own step lengths.
"""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, check_iterations, notify, reject_weight
from invdiff.classical.data_term import DataTerm, batch_dot, make_data_term, per_batch, safe_divide
from invdiff.operators.base import Operator

DEFAULT_ITERATIONS = 20


def solve_cgls(data: DataTerm, iterations: int, callback: Callback | None = None) -> torch.Tensor:
    """CGLS iterates on ``data`` from x = 0; returns ``x (B, C, H, W)`` after ``iterations`` steps."""
    sqrt_w = data.weights.sqrt()
    r = sqrt_w * data.y  # W^{1/2} (y - A x) at x = 0
    s = data.operator.adjoint(sqrt_w * r)
    x = torch.zeros_like(s)
    p = s.clone()
    gamma = batch_dot(s, s)
    for k in range(1, iterations + 1):
        q = sqrt_w * data.operator.forward(p)
        alpha = safe_divide(gamma, batch_dot(q, q))
        x = x + per_batch(alpha, x) * p
        r = r - per_batch(alpha, r) * q
        s = data.operator.adjoint(sqrt_w * r)
        gamma_new = batch_dot(s, s)
        beta = safe_divide(gamma_new, gamma)
        p = s + per_batch(beta, p) * p
        gamma = gamma_new
        notify(callback, k, x)
    return x


def cgls(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Weighted least squares by CGLS, ``DEFAULT_ITERATIONS`` steps (early stopping regularises).

    ``weight`` must be None: CGLS has no regulariser (InputError otherwise, never ignored)."""
    reject_weight(weight, "cgls")
    steps = check_iterations(iterations, DEFAULT_ITERATIONS, "cgls")
    return solve_cgls(make_data_term(operator, y), steps, callback)
