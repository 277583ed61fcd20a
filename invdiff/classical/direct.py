"""The operators' own direct reconstructions (FBP, zero-filled inverse FFT, Wiener filter)
as registry methods. They live with their operator (``operator.direct``); this wrapper only
gives them the common method signature and refuses options they do not have."""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, notify, reject_iterations, reject_weight
from invdiff.operators.base import Operator


def direct(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """``operator.direct(y)`` ``(B, C, H, W)``; weight and iterations must be None."""
    reject_weight(weight, f"{operator.name} direct reconstruction")
    reject_iterations(iterations, f"{operator.name} direct reconstruction")
    x = operator.direct(y)
    notify(callback, 1, x)
    return x
