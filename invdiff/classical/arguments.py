"""The arguments every classical method takes: the progress callback and checks of weight and iterations."""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from invdiff.errors import InputError
from invdiff.operators.base import Operator, ScaledOperator

#: ``callback(iteration, x)`` after each iteration (1-based) with the current image ``(B, C, H, W)``.
Callback = Callable[[int, torch.Tensor], None]


def notify(callback: Callback | None, iteration: int, x: torch.Tensor) -> None:
    if callback is not None:
        callback(iteration, x)


def check_iterations(iterations: int | None, default: int, method: str) -> int:
    """``iterations`` or the default; InputError unless a positive integer."""
    value = default if iterations is None else iterations
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"--iterations for method '{method}' must be a positive integer, got {iterations!r}.")
    return value


def check_weight(weight: float | None, default: float, method: str) -> float:
    """``weight`` or the default; InputError unless a finite number >= 0."""
    value = default if weight is None else weight
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and value != float("inf")):
        raise InputError(f"--weight for method '{method}' must be a finite number >= 0, got {weight!r}.")
    return float(value)


def reject_weight(weight: float | None, method: str) -> None:
    """InputError when a weight is given to a method without a regulariser (never ignored silently)."""
    if weight is not None:
        raise InputError(f"method '{method}' has no regularisation weight; drop --weight.")


def reject_iterations(iterations: int | None, method: str) -> None:
    """InputError when iterations are given to a direct (non-iterative) method."""
    if iterations is not None:
        raise InputError(f"method '{method}' is not iterative; drop --iterations.")


def operator_kind(operator: Operator) -> str:
    """The registered name of the physics behind ``operator`` (a ScaledOperator shows its base)."""
    while isinstance(operator, ScaledOperator):
        operator = operator.base
    return operator.name


def default_for(table: Mapping[str, float], operator: Operator, fallback: float) -> float:
    """The tuned default for this operator kind, else ``fallback``."""
    return table.get(operator_kind(operator), fallback)
