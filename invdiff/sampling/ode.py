"""Adaptive Dormand-Prince RK5(4) (dopri5) in pure torch, for the probability-flow ODE.

Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae", with the error control
and the initial-step heuristic of Hairer, Norsett & Wanner, "Solving ODEs I" (II.4), as in
scipy.integrate.solve_ivp(method="RK45"): a step is accepted when
RMS(err / (atol + rtol * max(|y|, |y_new|))) <= 1 over all elements of y.

The state stays on its device (GPU included); the only device-to-host transfer is the one
scalar error norm per step that decides acceptance. One step size is shared by the whole
tensor (as when scipy integrates the flattened batch).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from invdiff.errors import DivergenceError

# Butcher tableau (Dormand & Prince 1980, Table 2).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# Fifth- minus fourth-order weights, the last entry multiplying the FSAL stage f(t + h, y_new).
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0

OdeFunction = Callable[[float, torch.Tensor], torch.Tensor]


def _rms(v: torch.Tensor) -> float:
    return float(v.pow(2).mean().sqrt())


def _initial_step(f: OdeFunction, t0: float, y0: torch.Tensor, f0: torch.Tensor, direction: float,
                  rtol: float, atol: float) -> float:
    """Hairer et al. (II.4) starting step; costs one evaluation of f."""
    scale = atol + rtol * y0.abs()
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = f(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def dopri5(
    f: OdeFunction,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 10_000,
    on_step: Callable[[float, torch.Tensor, int], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate dy/dt = f(t, y) from t0 to t1 (either direction); return ``(y(t1), nfe)``.

    ``f(t, y)`` takes a float t and a tensor shaped like ``y0``; ``nfe`` counts calls of f.
    ``on_step(t, y, nfe)`` is called after every accepted step. Raises DivergenceError (an
    InputError: the command line reports it in one sentence, exit code 2) when ``max_steps``
    steps do not reach t1 or the state becomes non-finite.
    """
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        return y0, 0
    direction = 1.0 if t1 > t0 else -1.0
    t, y = t0, y0
    k1 = f(t, y)
    nfe = 1
    if first_step is None:
        h = _initial_step(f, t, y, k1, direction, rtol, atol)
        nfe += 1
    else:
        h = abs(float(first_step))
    steps = 0
    while direction * (t1 - t) > 0:
        if steps >= max_steps:
            raise DivergenceError(f"the ODE solver (dopri5) did not reach t={t1:.4g} in {max_steps} steps "
                                  f"(stuck at t={t:.4g}); the prior may be damaged, or loosen --rtol/--atol.")
        steps += 1
        h = min(h, abs(t1 - t))
        hs = direction * h
        k = [k1]
        for stage in range(1, 6):
            dy = sum(a * kj for a, kj in zip(_A[stage], k))
            k.append(f(t + _C[stage] * hs, y + hs * dy))
        y_new = y + hs * sum(b * kj for b, kj in zip(_B, k) if b != 0.0)
        last = t + hs if abs(t1 - (t + hs)) > 1e-12 * max(1.0, abs(t1)) else t1
        k7 = f(last, y_new)
        nfe += 6
        err = hs * sum(e * kj for e, kj in zip(_E, k + [k7]) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err_norm = _rms(err / scale)
        if not math.isfinite(err_norm):
            raise DivergenceError(f"the ODE solver (dopri5) diverged: NaN or Inf at t={t + hs:.4g}; "
                                  "the prior may be damaged.")
        if err_norm <= 1.0:
            t, y, k1 = last, y_new, k7
            factor = _MAX_FACTOR if err_norm == 0 else min(_MAX_FACTOR, _SAFETY * err_norm ** (-1 / 5))
            h *= factor
            if on_step is not None:
                on_step(t, y, nfe)
        else:
            h *= max(_MIN_FACTOR, _SAFETY * err_norm ** (-1 / 5))
    return y, nfe
