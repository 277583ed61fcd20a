"""CG-SENSE: conjugate gradients on the regularised normal equations (Pruessmann et al. 2001,
"Advances in sensitivity encoding with arbitrary k-space trajectories", with the small
Tikhonov term of its later practice):

    (A^H W A + mu I) x = A^H W y,      mu = weight * ||A^H W A||,

with W the noise weights (:mod:`invdiff.classical.data_term`; W = I for Gaussian noise, so
with an orthonormal FFT ``||A^H W A|| <= 1`` and ``mu = weight``). Started from x = 0;
stopping after a few iterations regularises too. For multi-coil MRI the coil sensitivities
live inside A, so this is SENSE; for one coil it is a Tikhonov-regularised zero-filled fit.
"""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, check_iterations, check_weight
from invdiff.classical.cg import conjugate_gradient
from invdiff.classical.data_term import make_data_term
from invdiff.operators.base import Operator

DEFAULT_WEIGHT = 0.01
DEFAULT_ITERATIONS = 15


def cg_sense(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """CG-SENSE ``(B, C, H, W)``: ``weight`` (default ``DEFAULT_WEIGHT``) scales mu, ``iterations`` CG steps."""
    mu_rel = check_weight(weight, DEFAULT_WEIGHT, "cg-sense")
    steps = check_iterations(iterations, DEFAULT_ITERATIONS, "cg-sense")
    data = make_data_term(operator, y)
    mu = mu_rel * data.lipschitz

    def normal_matrix(x: torch.Tensor) -> torch.Tensor:
        return data.weighted_adjoint(operator.forward(x)) + mu * x

    return conjugate_gradient(normal_matrix, data.weighted_adjoint(y), steps, callback=callback)
