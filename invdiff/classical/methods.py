"""The registry of classical reconstructions, the baselines of every diffusion result.

Every method has one signature::

    fn(operator, y, *, weight=None, iterations=None, callback=None) -> x (B, C, H, W)

``y`` is the measurement ``(B, *operator.measurement_shape)``; ``weight`` is the
regularisation weight in the dimensionless units of :mod:`invdiff.classical.data_term`
(None: the tuned default); ``callback(iteration, x)`` reports progress. ``--method NAME`` on
the command line lists exactly :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from invdiff.classical import cgls, cgsense, rl, sirt, tv, wavelet
from invdiff.classical.arguments import Callback, operator_kind
from invdiff.classical.direct import direct
from invdiff.errors import DivergenceError, InputError
from invdiff.operators.base import Operator

MethodFunction = Callable[..., torch.Tensor]
ANY_OPERATOR = ("*",)


@dataclass(frozen=True)
class ClassicalMethod:
    """A named classical reconstruction: ``function`` applies to the operator kinds in
    ``operators`` (``("*",)``: any); ``default_weight`` is None for methods without a
    regulariser, ``default_weights`` holds the per-operator tuned values."""

    name: str
    function: MethodFunction
    operators: tuple[str, ...]
    description: str
    default_weight: float | None = None
    default_weights: Mapping[str, float] = field(default_factory=dict)

    def applies_to(self, operator_name: str) -> bool:
        return self.operators == ANY_OPERATOR or operator_name in self.operators


def _weights_text(table: Mapping[str, float], fallback: float) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in table.items()) + f", other {fallback:g}"


METHODS: dict[str, ClassicalMethod] = {
    m.name: m
    for m in (
        ClassicalMethod("fbp", direct, ("radon",), "Filtered back-projection (the radon operator's direct reconstruction)."),
        ClassicalMethod("zero-filled", direct, ("mri",), "Inverse FFT of the zero-filled k-space (coil-combined)."),
        ClassicalMethod("wiener", direct, ("blur",), "Wiener deconvolution (the blur operator's direct reconstruction)."),
        ClassicalMethod(
            "sirt", sirt.sirt, ANY_OPERATOR,
            f"SIRT with row/column-sum weights, nonnegative for real images ({sirt.DEFAULT_ITERATIONS} iterations); "
            "projected Landweber for operators that are not nonnegative.",
        ),
        ClassicalMethod(
            "cgls", cgls.cgls, ANY_OPERATOR,
            f"CGLS on the noise-weighted least-squares problem, {cgls.DEFAULT_ITERATIONS} iterations (early stopping).",
        ),
        ClassicalMethod(
            "tv", tv.tv, ANY_OPERATOR,
            "Isotropic-TV regularised weighted least squares by Chambolle-Pock primal-dual; nonnegative for real "
            f"images, joint TV for complex ones. Weight {_weights_text(tv.DEFAULT_WEIGHTS, tv.DEFAULT_WEIGHT)}; "
            f"iterations {_weights_text(tv.DEFAULT_ITERATIONS, tv.DEFAULT_ITERATION)}.",
            tv.DEFAULT_WEIGHT, tv.DEFAULT_WEIGHTS,
        ),
        ClassicalMethod(
            "cg-sense", cgsense.cg_sense, ("mri",),
            f"CG on the normal equations with Tikhonov mu = weight * ||A^H W A|| (weight {cgsense.DEFAULT_WEIGHT:g}, "
            f"{cgsense.DEFAULT_ITERATIONS} iterations).",
            cgsense.DEFAULT_WEIGHT,
        ),
        ClassicalMethod(
            "l1-wavelet", wavelet.l1_wavelet, ANY_OPERATOR,
            f"l1 on {wavelet.WAVELET} wavelet details by FISTA with cycle spinning. Weight "
            f"{_weights_text(wavelet.DEFAULT_WEIGHTS, wavelet.DEFAULT_WEIGHT)}; iterations "
            f"{_weights_text(wavelet.DEFAULT_ITERATIONS, wavelet.DEFAULT_ITERATION)}.",
            wavelet.DEFAULT_WEIGHT, wavelet.DEFAULT_WEIGHTS,
        ),
        ClassicalMethod(
            "richardson-lucy", rl.richardson_lucy, ("blur",),
            f"Richardson-Lucy (Poisson EM, positive), {rl.DEFAULT_ITERATIONS} iterations; weight > 0 adds "
            f"the RL-TV term of Dey et al. (default {rl.DEFAULT_WEIGHT:g}).",
            rl.DEFAULT_WEIGHT,
        ),
    )
}


def method_names() -> list[str]:
    """The registered method names, in registry order."""
    return list(METHODS)


def get_method(name: str) -> ClassicalMethod:
    """The method registered as ``name``; InputError listing the names otherwise."""
    if name not in METHODS:
        raise InputError(f"Unknown classical method '{name}'; available: {', '.join(METHODS)}.")
    return METHODS[name]


def methods_for(operator_name: str) -> list[str]:
    """Names of the methods that apply to operator kind ``operator_name``."""
    return [name for name, m in METHODS.items() if m.applies_to(operator_name)]


def run_method(
    name: str,
    operator: Operator,
    y: torch.Tensor,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Check that method ``name`` applies to ``operator`` and to ``y``, run it, and check the result.

    InputError for an unknown method, an operator it does not apply to, or a measurement of
    the wrong shape; DivergenceError if the result is not finite."""
    method = get_method(name)
    kind = operator_kind(operator)
    if not method.applies_to(kind):
        raise InputError(
            f"method '{name}' does not apply to the {kind} operator; use one of: {', '.join(methods_for(kind))}."
        )
    operator.check_measurement(y)
    x = method.function(operator, y, weight=weight, iterations=iterations, callback=callback)
    if not torch.isfinite(x).all():
        raise DivergenceError(f"method '{name}' produced NaN or Inf values; try a larger --weight or fewer --iterations.")
    return x
