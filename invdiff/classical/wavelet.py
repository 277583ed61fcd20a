"""l1-wavelet regularised least squares by FISTA (Beck & Teboulle 2009, "A fast iterative
shrinkage-thresholding algorithm for linear inverse problems", eq. (4.1)-(4.3)):

    min_x  0.5 * sum w |A x - y|^2  +  lam * || Psi_d x ||_1,

Psi an orthonormal periodic Daubechies wavelet transform (:mod:`invdiff.classical.dwt`) and
Psi_d its detail coefficients (the coarsest approximation is not penalised, as in BART's
``-R W``). The prox of the l1 term is exact for orthonormal Psi: soft-threshold the details
at ``lam / L`` (``L = ||A^H W A||``). Complex images (C = 2) are thresholded on the magnitude
of each complex coefficient (joint over the two channels). ``lam = weight * sigma_y * ||A||``.

Cycle spinning (Coifman & Donoho 1995): each iteration draws a random circular shift before
the transform, as BART's ``pics`` does; this removes the blocky artefacts of a fixed dyadic
grid. The shifts come from a seeded generator, so results are reproducible.
"""

from __future__ import annotations

import torch

from invdiff.classical.arguments import Callback, check_iterations, check_weight, default_for, notify
from invdiff.classical.data_term import DataTerm, make_data_term
from invdiff.classical.dwt import Wavelet2D, max_levels
from invdiff.operators.base import Operator

#: Tuned on 128x128 brain slices (examples/bench_classical.py), per operator kind.
DEFAULT_WEIGHTS: dict[str, float] = {"radon": 0.1, "mri": 0.3, "blur": 0.15}
DEFAULT_WEIGHT = 0.1
DEFAULT_ITERATIONS: dict[str, int] = {"radon": 200, "mri": 100, "blur": 100}
DEFAULT_ITERATION = 100
WAVELET = "db4"
LEVELS = 4


def soft_threshold(coeffs: torch.Tensor, threshold: float, mask: torch.Tensor) -> torch.Tensor:
    """Shrink ``coeffs (B, C, H, W)`` where ``mask (H, W)`` is True by ``threshold`` in magnitude
    (joint over channels: the complex soft threshold for C = 2)."""
    magnitude = torch.sqrt((coeffs * coeffs).sum(dim=1, keepdim=True))
    shrink = torch.clamp(1.0 - threshold / magnitude.clamp(min=torch.finfo(coeffs.dtype).tiny), min=0.0)
    return torch.where(mask, coeffs * shrink, coeffs)


def wavelet_l1(wavelet: Wavelet2D, x: torch.Tensor) -> torch.Tensor:
    """``|| Psi_d x ||_1`` per batch element (joint magnitude over channels), shape ``(B,)``."""
    coeffs = wavelet.analysis(x)
    magnitude = torch.sqrt((coeffs * coeffs).sum(dim=1))
    mask = wavelet.detail_mask(*x.shape[-2:])
    return (magnitude * mask).reshape(x.shape[0], -1).sum(dim=1)


def l1_wavelet_objective(data: DataTerm, wavelet: Wavelet2D, lam: float, x: torch.Tensor) -> torch.Tensor:
    """``0.5 * sum w |A x - y|^2 + lam * ||Psi_d x||_1`` per batch element, shape ``(B,)``."""
    return data.value(x) + lam * wavelet_l1(wavelet, x)


def solve_l1_wavelet(
    data: DataTerm,
    wavelet: Wavelet2D,
    lam: float,
    iterations: int,
    *,
    x0: torch.Tensor,
    cycle_spin: bool = True,
    seed: int = 0,
    callback: Callback | None = None,
) -> torch.Tensor:
    """FISTA from ``x0 (B, C, H, W)``; returns the last iterate."""
    step = 1.0 / data.lipschitz if data.lipschitz > 0 else 0.0
    mask = wavelet.detail_mask(*x0.shape[-2:])
    height, width = x0.shape[-2:]
    shifts = torch.Generator().manual_seed(seed)
    x = x0.clone()
    z = x
    t = 1.0
    for k in range(1, iterations + 1):
        v = z - step * data.gradient(z)
        if cycle_spin:
            dy, dx = (int(s) for s in torch.randint(0, 1 << 30, (2,), generator=shifts))
            dy, dx = dy % height, dx % width
        else:
            dy = dx = 0
        v = torch.roll(v, shifts=(dy, dx), dims=(-2, -1))
        x_new = wavelet.synthesis(soft_threshold(wavelet.analysis(v), lam * step, mask))
        x_new = torch.roll(x_new, shifts=(-dy, -dx), dims=(-2, -1))
        t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t) ** 0.5)
        z = x_new + ((t - 1.0) / t_new) * (x_new - x)
        x, t = x_new, t_new
        notify(callback, k, x)
    return x


def l1_wavelet(
    operator: Operator,
    y: torch.Tensor,
    *,
    weight: float | None = None,
    iterations: int | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """l1-wavelet (``WAVELET``, up to ``LEVELS`` levels) regularised reconstruction ``(B, C, H, W)``,
    started from ``operator.direct(y)``; ``weight`` defaults to ``DEFAULT_WEIGHTS[operator kind]``."""
    lam_rel = check_weight(weight, default_for(DEFAULT_WEIGHTS, operator, DEFAULT_WEIGHT), "l1-wavelet")
    steps = check_iterations(iterations, int(default_for(DEFAULT_ITERATIONS, operator, DEFAULT_ITERATION)), "l1-wavelet")
    data = make_data_term(operator, y)
    _, height, width = operator.image_shape
    filter_length = 2 * int(WAVELET[2:])
    wavelet = Wavelet2D.create(WAVELET, max_levels(height, width, LEVELS, filter_length), device=y.device, dtype=operator.dtype)
    lam = lam_rel * data.image_norm_scale()
    return solve_l1_wavelet(data, wavelet, lam, steps, x0=operator.direct(y), callback=callback)
