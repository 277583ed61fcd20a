"""Batched conjugate gradients (Hestenes & Stiefel 1952) shared by classical methods and
posterior solvers.

Solves ``apply(x) = rhs`` independently for every batch element, for a symmetric positive
(semi)definite ``apply`` under the real inner product ``<a, b> = sum(a * b)``. A fixed number
of iterations runs without host synchronisation (no ``.item()``), so the loop stays on the
GPU; converged or zero-curvature elements are frozen by masking instead of breaking out.
"""

from __future__ import annotations

from typing import Callable

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-batch-element real inner product ``(B,)``."""
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def conjugate_gradient(
    apply: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor,
    iterations: int,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """``iterations`` CG steps on ``apply(x) = rhs`` from ``x0``, batched over dim 0.

    apply: a symmetric positive semidefinite map ``(B, ...) -> (B, ...)`` acting per element.
    rhs, x0: ``(B, ...)`` real. Returns x ``(B, ...)``. Elements whose relative residual
    ``||r|| / ||rhs||`` falls below 10 machine epsilons, or whose curvature is zero, stop moving.
    ``callback(k, x)`` is called after iteration k.
    """
    x = x0
    if iterations <= 0:
        return x
    r = rhs - apply(x)
    p = r
    rs = _dot(r, r)
    # converged elements (relative residual below ~10 eps) freeze: on a singular system (a
    # pseudo-inverse) further steps would divide round-off by round-off.
    tol2 = (10 * torch.finfo(r.dtype).eps) ** 2 * _dot(rhs, rhs)
    for k in range(1, iterations + 1):
        ap = apply(p)
        curvature = _dot(p, ap)
        ok = (curvature > 0) & (rs > tol2)
        alpha = torch.where(ok, rs / torch.where(ok, curvature, torch.ones_like(curvature)), torch.zeros_like(rs))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * ap
        rs_new = _dot(r, r)
        nonzero = rs > 0
        beta = torch.where(nonzero, rs_new / torch.where(nonzero, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + _bcast(beta, p) * p
        rs = rs_new
        if callback is not None:
            callback(k, x)
    return x
