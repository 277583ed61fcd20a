"""Conjugate gradients for a Hermitian positive-definite system ``M x = b`` on image tensors
(Hestenes & Stiefel 1952), batched: each batch element has its own step lengths."""

from __future__ import annotations

from typing import Callable

import torch

from invdiff.classical.arguments import Callback, notify
from invdiff.classical.data_term import batch_dot, per_batch, safe_divide


def conjugate_gradient(
    apply_matrix: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    iterations: int,
    x0: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """``iterations`` CG steps on ``apply_matrix(x) = rhs`` (images ``(B, C, H, W)``) from ``x0`` (or 0)."""
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply_matrix(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = batch_dot(r, r)
    for k in range(1, iterations + 1):
        mp = apply_matrix(p)
        alpha = safe_divide(rr, batch_dot(p, mp))
        x = x + per_batch(alpha, x) * p
        r = r - per_batch(alpha, r) * mp
        rr_new = batch_dot(r, r)
        p = r + per_batch(safe_divide(rr_new, rr), p) * p
        rr = rr_new
        notify(callback, k, x)
    return x
