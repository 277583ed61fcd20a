"""The measurement term every solver shares: weights, gradient, misfit, data-weight hook.

With the noise model's per-element variance v(y) (invdiff/operators/noise.py) the data term is

    nll(x) = 0.5 * sum |A x - y|^2 * W,     W = data_weight / v(y),

(the negative Gaussian log-likelihood for white noise, penalised weighted least squares for
the Poisson models; Sauer & Bouman 1993). Its gradient is ``A^H (W (A x - y))`` with the exact
adjoint of the operator contract. ``data_weight`` tempers the likelihood: 1 trusts the noise
model (the Bayesian posterior); ``"auto"`` chooses it at every data step from the data by the
discrepancy principle (Morozov 1966), see :func:`resolve_data_weight`.
"""

from __future__ import annotations

import math

import torch

from invdiff.errors import InputError
from invdiff.operators.base import Operator


def is_auto(value: str | float) -> bool:
    """True for ``data_weight=auto`` (the discrepancy principle)."""
    return isinstance(value, str) and value.strip().lower() == "auto"


def resolve_data_weight(value: str | float, operator: Operator, y: torch.Tensor, solver: str | None = None) -> float:
    """The likelihood multiplier from the ``data_weight`` option.

    A number is used as given (must be > 0). ``"auto"`` (Morozov's discrepancy principle: the
    data weight of every data step is chosen so that the step's result fits y to the known
    noise level, ``||A x - y||^2_{1/v} = dof``) is carried out by the proximal data step of the
    solvers registered with ``auto_data_weight=True`` (invdiff/solvers/base.py, which refuses
    it for every other solver before the run); here it gives the base weight 1, or InputError
    when ``solver`` names a solver that does not carry it out.
    """
    if is_auto(value):
        if solver is not None:
            from invdiff.solvers.base import check_auto_data_weight, get_solver

            check_auto_data_weight(get_solver(solver))
        return 1.0
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"option data_weight must be a positive number or 'auto', got '{value}'.") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"option data_weight must be a positive number or 'auto', got {value}.")
    return float(value)


def precision(operator: Operator, y: torch.Tensor, data_weight: float = 1.0) -> torch.Tensor:
    """W = data_weight / variance(y), broadcastable to y (per real/imaginary part); zero on
    the entries the operator does not measure (``operator.sampled()``, the MRI mask)."""
    return on_measured(operator, data_weight / operator.noise.variance(y))


def on_measured(operator: Operator, t: torch.Tensor) -> torch.Tensor:
    """``t`` (broadcastable to a measurement) with the entries the operator does not measure
    (outside ``operator.sampled()``, the MRI mask) set to zero; ``t`` itself when it measures all."""
    sampled = operator.sampled()
    return t if sampled is None else t * sampled.to(t.real.dtype)


def residual(operator: Operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A x - y`` ``(B, *measurement_shape)``."""
    return operator.forward(x) - y


def squared_abs(r: torch.Tensor) -> torch.Tensor:
    return r.real**2 + r.imag**2 if r.is_complex() else r**2


def data_gradient(operator: Operator, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_x 0.5 ||A x - y||_W^2 = A^H (W (A x - y)), shape of x."""
    return operator.adjoint(weight * residual(operator, x, y))


def weighted_misfit(operator: Operator, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``||A x - y||_W^2`` per batch element ``(B,)``."""
    r = squared_abs(residual(operator, x, y)) * weight
    return r.reshape(r.shape[0], -1).sum(dim=1)


def measurement_dof(operator: Operator) -> int:
    """Real degrees of freedom of one measurement (complex elements count twice), counting only
    the entries the operator measures (``operator.sampled()``)."""
    per_element = 2 if operator.measurement_is_complex else 1
    sampled = operator.sampled()
    if sampled is None:
        return math.prod(operator.measurement_shape) * per_element
    return round(float(torch.broadcast_to(sampled, operator.measurement_shape).sum())) * per_element


def expected_misfit(operator: Operator, y: torch.Tensor) -> float:
    """``E ||A x_true - y||^2`` of one measurement over the measured entries: the
    discrepancy-principle target (Morozov 1966) in measurement units. Complex data count two
    real degrees of freedom per element."""
    var = on_measured(operator, operator.noise.variance(y).expand(y.real.shape if y.is_complex() else y.shape))
    per_element = 2.0 if y.is_complex() else 1.0
    return float(per_element * var.sum() / max(y.shape[0], 1))


def measured_residual(operator: Operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A x - y`` on the measured entries, zero elsewhere ``(B, *measurement_shape)``."""
    return on_measured(operator, residual(operator, x, y))


def discrepancy_ratio(operator: Operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||A x - y||^2_{1/v} / dof`` per element ``(B,)``: about 1 when x fits y to the noise
    level (Morozov's discrepancy principle), << 1 when it over-fits the noise."""
    return weighted_misfit(operator, x, y, precision(operator, y)) / measurement_dof(operator)


def noise_std_image(operator: Operator, y: torch.Tensor, operator_norm: float) -> float:
    """Noise std carried into the image by a pseudo-inverse, along A's best-conditioned
    directions: ``sqrt(mean v(y)) / ||A||`` (used by DDNM+ and to pick the final split-Gibbs
    coupling). A float (one host synchronisation per run)."""
    var = operator.noise.variance(y)
    mean_var = float(var.mean()) if var.ndim else float(var)
    return math.sqrt(mean_var) / max(operator_norm, 1e-30)


def operator_norm(operator: Operator, iterations: int = 30) -> float:
    """``||A||_2`` by power iteration from a fixed seed (so it does not consume the caller's
    generator and is the same in every run)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(1234)
    return operator.norm(iterations=iterations, generator=gen)
