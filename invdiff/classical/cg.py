"""Conjugate gradients for a Hermitian positive-definite system ``M x = b`` on image tensors
(Hestenes & Stiefel 1952), batched: each batch element has its own step lengths."""

from __future__ import annotations

from typing import Callable

import torch

from invdiff.classical.arguments import Callback, notify
from invdiff import linalg


def conjugate_gradient(
    apply_matrix: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    iterations: int,
    x0: torch.Tensor | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """``iterations`` CG steps on ``apply_matrix(x) = rhs`` (images ``(B, C, H, W)``) from ``x0`` (or 0)."""
    start = torch.zeros_like(rhs) if x0 is None else x0
    return linalg.conjugate_gradient(apply_matrix, rhs, start, iterations, callback=lambda k, x: notify(callback, k, x))
