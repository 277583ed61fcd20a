"""Image-quality metrics with fastMRI's definitions (fastmri/evaluate.py).

All take volumes ``(slices, H, W)``; the data range is the reference VOLUME's maximum unless
given (fastMRI computes PSNR over the whole volume and SSIM per slice with the volume max, then
averages SSIM over slices; getting slice-vs-volume wrong is a classic bug, so it is tested).

* NMSE = ||ref - x||^2 / ||ref||^2 over the volume.
* PSNR = 10 log10(range^2 / MSE) over the volume (skimage's peak_signal_noise_ratio).
* SSIM = mean over slices of skimage's structural_similarity(ref_s, x_s, data_range=range)
  with the default 7x7 uniform window (as fastMRI).
* coverage(k) = fraction of pixels with |x - ref| <= k * std: for calibrated Gaussian
  uncertainty about 95.4 % at k = 2 when std is the exact posterior std.
* predictive_coverage(K) = the same for the 95 % prediction interval a K-sample mean and
  std imply: |x - ref| <= t_{K-1, 0.975} * sqrt(1 + 1/K) * std. With few samples the sample
  std is itself noisy and the K-sample mean is off by std / sqrt(K), so even an exact
  posterior sampler scores only about 83 % on coverage(2) at K = 4; this interval gives 95 %
  for an exact sampler at every K >= 2 (the Student-t prediction interval).
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from invdiff.errors import InputError


def _volumes(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference)
    estimate = np.asarray(estimate)
    if np.iscomplexobj(reference) or np.iscomplexobj(estimate):
        reference, estimate = np.abs(reference), np.abs(estimate)
    reference = reference.astype(np.float64)
    estimate = estimate.astype(np.float64)
    if reference.ndim == 2:
        reference = reference[None]
    if estimate.ndim == 2:
        estimate = estimate[None]
    if reference.shape != estimate.shape:
        raise InputError(f"reference of shape {reference.shape} does not match the reconstruction's {estimate.shape}.")
    return reference, estimate


def data_range_of(reference: np.ndarray, data_range: float | None) -> float:
    """The given data range (a positive finite number), else max |reference|."""
    if data_range is not None:
        value = float(data_range)
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--data-range must be a positive finite number, got {data_range}.")
        return value
    value = float(np.max(np.abs(reference)))
    if not value > 0:
        raise InputError("the reference is all zero, so PSNR/SSIM have no data range; give --data-range.")
    return value


def nmse(reference: np.ndarray, estimate: np.ndarray) -> float:
    reference, estimate = _volumes(reference, estimate)
    denom = float(np.sum(reference**2))
    if denom == 0:
        raise InputError("the reference is all zero, so NMSE is undefined.")
    return float(np.sum((reference - estimate) ** 2) / denom)


def psnr(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    reference, estimate = _volumes(reference, estimate)
    rng = data_range_of(reference, data_range)
    if np.array_equal(reference, estimate):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, estimate, data_range=rng))


def ssim(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> float:
    reference, estimate = _volumes(reference, estimate)
    rng = data_range_of(reference, data_range)
    values = [structural_similarity(r, e, data_range=rng) for r, e in zip(reference, estimate)]
    return float(np.mean(values))


def ssim_per_slice(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> list[float]:
    reference, estimate = _volumes(reference, estimate)
    rng = data_range_of(reference, data_range)
    return [float(structural_similarity(r, e, data_range=rng)) for r, e in zip(reference, estimate)]


def psnr_per_slice(reference: np.ndarray, estimate: np.ndarray, data_range: float | None = None) -> list[float]:
    reference, estimate = _volumes(reference, estimate)
    rng = data_range_of(reference, data_range)
    return [float("inf") if np.array_equal(r, e) else float(peak_signal_noise_ratio(r, e, data_range=rng))
            for r, e in zip(reference, estimate)]


def coverage(reference: np.ndarray, estimate: np.ndarray, std: np.ndarray, k: float = 2.0) -> float:
    """Fraction of pixels whose error lies within k posterior standard deviations."""
    reference, estimate = _volumes(reference, estimate)
    std = np.asarray(std, dtype=np.float64).reshape(estimate.shape)
    return float(np.mean(np.abs(reference - estimate) <= k * std))


def predictive_coverage(reference: np.ndarray, estimate: np.ndarray, std: np.ndarray, samples: int,
                        level: float = 0.95) -> float:
    """Fraction of pixels inside the Student-t prediction interval of a K-sample posterior
    estimate: ``|ref - mean| <= t_{K-1, (1+level)/2} * sqrt(1 + 1/K) * std``, std the unbiased
    sample std of K >= 2 samples. If ref and the K samples are independent draws of one
    Gaussian, ``(ref - mean) / (std sqrt(1 + 1/K))`` is Student-t with K - 1 degrees of
    freedom, so an exact sampler scores ``level`` at any K."""
    from scipy.stats import t as student_t

    if samples < 2:
        raise InputError(f"predictive coverage needs at least 2 samples, got {samples}.")
    half = float(student_t.ppf(0.5 + level / 2, samples - 1)) * np.sqrt(1 + 1 / samples)
    return coverage(reference, estimate, std, half)


def relative_residual(measured: np.ndarray, predicted: np.ndarray) -> float:
    """Data residual ||A x - y|| / ||y|| of a reconstruction x."""
    measured = np.asarray(measured)
    denom = float(np.linalg.norm(measured.ravel()))
    if denom == 0:
        return float("nan")
    return float(np.linalg.norm((np.asarray(predicted) - measured).ravel()) / denom)
