"""SIRT, the simultaneous iterative reconstruction technique (Gilbert 1972; in the
row/column-sum form of Gregor & Benson 2008, eq. (2), as in the ASTRA toolbox):

    x <- P( x + C A^T R (y - A x) ),   R = diag(1 / A 1),  C = diag(1 / A^T 1),

which converges to the least-squares solution in the R-weighted norm. P clips negative
values for real images (ASTRA's MinConstraint). The sums need a nonnegative operator (CT,
blur); for any other operator (e.g. MRI, whose measurements are complex) SIRT falls back to
its unit-weight special case, projected Landweber iteration (Landweber 1951) with step
``1.9 / ||A^H W A||``. Runs through forward/adjoint only.
"""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, check_iterations, notify, reject_weight
from invdiff.classical.data_term import make_data_term
from invdiff.operators.base import Operator

DEFAULT_ITERATIONS = 100
LANDWEBER_STEP = 1.9
#: Row/column sums below this fraction of their maximum count as zero (rays missing the image).
SUM_FLOOR = 1e-6


def sirt_weights(operator: Operator) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(R, C)`` of the module docstring, or None when ``operator`` is not nonnegative."""
    if operator.measurement_is_complex:
        return None
    ones_image = torch.ones((1, *operator.image_shape), dtype=operator.dtype, device=operator.device)
    ones_data = torch.ones((1, *operator.measurement_shape), dtype=operator.dtype, device=operator.device)
    row = operator.forward(ones_image)
    col = operator.adjoint(ones_data)
    weights = []
    for sums in (row, col):
        peak = float(sums.max())
        if peak <= 0 or float(sums.min()) < -SUM_FLOOR * peak:
            return None
        inverse = torch.where(sums > SUM_FLOOR * peak, 1.0 / sums.clamp(min=SUM_FLOOR * peak), torch.zeros_like(sums))
        weights.append(inverse)
    return weights[0], weights[1]


def sirt(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
    nonnegative: bool | None = None,
) -> torch.Tensor:
    """SIRT from x = 0 for ``iterations`` (default ``DEFAULT_ITERATIONS``) steps -> ``(B, C, H, W)``.

    ``nonnegative`` defaults to True for real images (C = 1). ``weight`` must be None."""
    reject_weight(weight, "sirt")
    steps = check_iterations(iterations, DEFAULT_ITERATIONS, "sirt")
    clip = operator.image_shape[0] == 1 if nonnegative is None else nonnegative
    sums = sirt_weights(operator)
    x = torch.zeros((y.shape[0], *operator.image_shape), dtype=operator.dtype, device=y.device)
    if sums is None:
        data = make_data_term(operator, y)
        step = LANDWEBER_STEP / data.lipschitz if data.lipschitz > 0 else 0.0
    for k in range(1, steps + 1):
        if sums is None:
            x = x - step * data.gradient(x)
        else:
            row_inverse, col_inverse = sums
            x = x + col_inverse * operator.adjoint(row_inverse * (y - operator.forward(x)))
        if clip:
            x = x.clamp(min=0)
        notify(callback, k, x)
    return x
