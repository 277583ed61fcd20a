"""Pooling the per-pixel posterior variance over a neighbourhood (``--std-window W``).

The std of K samples estimates each pixel's posterior standard deviation from K - 1 degrees of
freedom: at K = 4 it is itself so noisy that an exact sampler's errors fall within 2 of its
stds only 83 % of the time (BENCHMARKS.md, "Why 2-std coverage stays below 90 %"). Where the
posterior variance changes slowly across the image, averaging the variance over a W x W window
(W odd) pools up to W^2 (K - 1) degrees of freedom into each estimate:

    std_W(p) = sqrt( mean_{q in W x W window around p} std(q)^2 ),

edges reflected (``scipy.ndimage.uniform_filter``). W = 1 is the plain per-pixel sample std.
The price is spatial detail in the uncertainty map, at the scale of the window.
"""

from __future__ import annotations

import numpy as np

from invdiff.errors import InputError


def check_window(window: int) -> int:
    """``window`` as an odd int >= 1 (InputError otherwise)."""
    if int(window) != window or window < 1 or window % 2 == 0:
        raise InputError(f"--std-window must be an odd whole number of pixels (1, 3, 5, ...), got {window}.")
    return int(window)


def pooled_std(std: np.ndarray, window: int) -> np.ndarray:
    """``std (H, W)`` -> the same shape, the variance averaged over ``window x window`` pixels."""
    window = check_window(window)
    if window == 1:
        return std
    from scipy.ndimage import uniform_filter

    var = uniform_filter(np.asarray(std, dtype=np.float64) ** 2, size=window, mode="reflect")
    return np.sqrt(np.maximum(var, 0.0)).astype(std.dtype)
