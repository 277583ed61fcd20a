"""Coil sensitivity maps: simulated birdcage coils and ESPIRiT estimation from k-space.

* :func:`birdcage_maps`: the analytic birdcage model of BART's ``phantom -S`` and sigpy's
  ``birdcage_maps``: coil c sits at radius ``r`` (in units of the half field of view) and
  angle ``2 pi c / coils``, its sensitivity is ``exp(i phi) / distance``, with the maps
  normalised so that ``sum_c |S_c|^2 = 1`` at every pixel.
* :func:`estimate_maps`: ESPIRiT (Uecker et al. 2014, "ESPIRiT - an eigenvalue approach to
  autocalibrating parallel MRI: where SENSE meets GRAPPA", MRM 71:990), computed in numpy:
  a calibration matrix of ``k x k`` k-space patches of all coils, its SVD, the right singular
  vectors above ``threshold * s_max`` (the signal subspace), then at each pixel the
  eigenvector of eigenvalue ~1 of the image-domain operator
  ``W(r) = (1/k^2) sum_i conj(g_i(r)) g_i(r)^T``, ``g_i(r)`` the DFT of kernel i at pixel r.

k-space conventions are those of :mod:`invdiff.operators.mri` (centred orthonormal FFT,
DC at ``(H // 2, W // 2)``, maps in the centred image grid).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from invdiff.errors import InputError

#: ESPIRiT defaults (sigpy's ``EspiritCalib``): calibration width, kernel width, singular
#: value threshold relative to the largest, eigenvalue crop (BART ``ecalib -c``).
CALIB_SIZE = 24
KERNEL_SIZE = 6
THRESHOLD = 0.02
CROP = 0.8


def birdcage_maps(coils: int, height: int, width: int, radius: float = 1.5) -> np.ndarray:
    """Birdcage coil sensitivities ``(coils, H, W)`` complex128 with ``sum_c |S_c|^2 = 1``.

    ``radius``: distance of the coils from the centre in units of the half field of view
    (> sqrt(2) keeps every coil outside the image, corners included).
    """
    if not (isinstance(coils, (int, np.integer)) and coils >= 1):
        raise InputError(f"--coils must be an integer >= 1, got {coils!r}.")
    if not (isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer)) and height >= 1 and width >= 1):
        raise InputError(f"coil maps need an image size H, W >= 1, got {height}x{width}.")
    if not (math.isfinite(radius) and radius > math.sqrt(2)):
        raise InputError(f"the birdcage coil radius must be > sqrt(2) (outside the image), got {radius!r}.")
    c, y, x = np.mgrid[:coils, :height, :width].astype(np.float64)
    angle = 2 * np.pi * c / coils
    x_rel = (x - width / 2) / (width / 2) - radius * np.cos(angle)
    y_rel = (y - height / 2) / (height / 2) - radius * np.sin(angle)
    distance = np.hypot(x_rel, y_rel)
    phase = np.arctan2(x_rel, -y_rel) - angle
    maps = np.exp(1j * phase) / distance
    return maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))


def calibration_box(kspace: np.ndarray, calib_size: int) -> tuple[slice, slice]:
    """The largest centred box, at most ``calib_size`` on each side, in which every k-space
    row and column of the box is sampled (non-zero in some coil): the fully sampled centre."""
    _, height, width = kspace.shape
    sampled = np.any(kspace != 0, axis=0)
    h, w = min(calib_size, height), min(calib_size, width)
    cy, cx = height // 2, width // 2
    while h > 0 and w > 0:
        box = (slice(cy - h // 2, cy - h // 2 + h), slice(cx - w // 2, cx - w // 2 + w))
        block = sampled[box]
        if block.all():
            return box
        # shrink across the lines that are missing: few bad columns (a line mask) -> width
        bad_cols = np.mean(~block.all(axis=0))
        bad_rows = np.mean(~block.all(axis=1))
        if bad_cols <= bad_rows:
            w -= 1
        else:
            h -= 1
    return (slice(cy, cy), slice(cx, cx))


def _calibration_matrix(calib: np.ndarray, kernel: int) -> np.ndarray:
    """Rows: every ``kernel x kernel`` patch of all coils, flattened (coil, ky, kx)."""
    coils, h, w = calib.shape
    patches = np.lib.stride_tricks.sliding_window_view(calib, (kernel, kernel), axis=(1, 2))
    # (coils, h - k + 1, w - k + 1, k, k) -> (positions, coils * k * k)
    return patches.transpose(1, 2, 0, 3, 4).reshape((h - kernel + 1) * (w - kernel + 1), coils * kernel * kernel)


def _kernel_autocorrelation(kernels: np.ndarray, width: int) -> np.ndarray:
    """``P_cc'(dy, x)``: the kernels' auto-correlation, transformed along x to the image
    columns, ``(coils, coils, 2k - 1, W)``.

    ``P_cc'(d) = sum_i sum_e conj(v_i[c, e]) v_i[c', e + d]`` over the displacements ``d`` in
    ``(-(k-1) .. k-1)^2``; the x axis is then summed against ``exp(-2 pi i dx x / W)`` with x
    the uncentred column index (``x = column - W // 2``).
    """
    _, _, k, _ = kernels.shape
    size = 2 * k - 1
    spectrum = np.fft.fft2(kernels, s=(size, size))  # zero-padded: circular = linear correlation
    corr = np.fft.ifft2(np.einsum("nayx,nbyx->abyx", spectrum.conj(), spectrum))
    shifts = np.fft.fftfreq(size, 1 / size)  # displacement of each index: 0..k-1, -(k-1)..-1
    ex = np.exp(-2j * np.pi * np.outer(shifts, np.arange(width) - width // 2) / width)  # (size, W)
    return corr @ ex


def _image_domain_operator(half: np.ndarray, rows: np.ndarray, height: int, kernel_size: int) -> np.ndarray:
    """``W(r) = (1/k^2) sum_d P(d) exp(-2 pi i d . r / N)`` on the image ``rows``:
    ``(len(rows), W, coils, coils)``, from :func:`_kernel_autocorrelation`'s ``half``."""
    size = half.shape[2]
    shifts = np.fft.fftfreq(size, 1 / size)
    ey = np.exp(-2j * np.pi * np.outer(rows - height // 2, shifts) / height)  # (rows, size)
    return np.einsum("ry,abyw->rwab", ey, half, optimize=True) / kernel_size**2


def estimate_maps(
    kspace: np.ndarray,
    calib_size: int = CALIB_SIZE,
    kernel_size: int = KERNEL_SIZE,
    threshold: float = THRESHOLD,
    crop: float = CROP,
) -> np.ndarray:
    """ESPIRiT coil maps ``(coils, H, W)`` complex64 from k-space ``(coils, H, W)``.

    The calibration region is the centred box of at most ``calib_size`` per side that is
    fully sampled (see :func:`calibration_box`), so undersampled fastMRI k-space can be
    passed as it is. Maps are unit-norm per pixel (``sum_c |S_c|^2 = 1``) where the top
    eigenvalue of ``W(r)`` is at least ``crop`` (relative to its maximum), zero elsewhere,
    with the phase of coil 0 removed (ESPIRiT leaves a per-pixel phase free).
    """
    kspace = np.asarray(kspace)
    if kspace.ndim == 2:
        kspace = kspace[None]
    if kspace.ndim != 3 or kspace.dtype.kind not in "biufc":
        raise InputError(f"coil map estimation needs k-space (coils, H, W), got shape {kspace.shape}.")
    if not np.isfinite(kspace).all():
        raise InputError("coil map estimation: the k-space contains NaN or Inf values.")
    coils, height, width = kspace.shape
    if not (0 < threshold < 1 and 0 <= crop < 1):
        raise InputError(f"ESPIRiT needs 0 < threshold < 1 and 0 <= crop < 1, got {threshold}, {crop}.")
    box = calibration_box(kspace, calib_size)
    calib = kspace[(slice(None), *box)].astype(np.complex128)
    if min(calib.shape[1:]) < kernel_size + 1:
        raise InputError(
            f"coil map estimation needs a fully sampled k-space centre of at least {kernel_size + 1}x"
            f"{kernel_size + 1}, found {calib.shape[1]}x{calib.shape[2]}; sample more centre lines."
        )
    matrix = _calibration_matrix(calib, kernel_size)
    _, singular, vh = np.linalg.svd(matrix, full_matrices=False)
    if singular[0] == 0:
        raise InputError("coil map estimation: the k-space centre is all zeros.")
    keep = int((singular >= threshold * singular[0]).sum())
    # Patches lie in the span of the rows of vh, i.e. of conj(v_i): the kernels are v_i = conj(vh_i).
    kernels = vh[:keep].conj().reshape(keep, coils, kernel_size, kernel_size)

    half = _kernel_autocorrelation(kernels, width)
    maps = np.zeros((coils, height, width), dtype=np.complex64)
    eigen = np.zeros((height, width))
    chunk = max(1, 4_000_000 // max(width * coils * coils, 1))
    for start in range(0, height, chunk):
        rows = np.arange(start, min(start + chunk, height))
        operator = torch.from_numpy(_image_domain_operator(half, rows, height, kernel_size).astype(np.complex64))
        values, vectors = torch.linalg.eigh(operator, UPLO="L")  # ascending; W(r) is Hermitian
        top = vectors[..., -1].numpy()  # (rows, W, coils)
        ref = top[..., :1]
        top = top * np.where(np.abs(ref) > 0, ref.conj() / np.maximum(np.abs(ref), 1e-30), 1)
        maps[:, rows] = top.transpose(2, 0, 1)
        eigen[rows] = values[..., -1].numpy()
    maps[:, eigen < crop * eigen.max()] = 0
    return maps
