"""Ramp filters of filtered back-projection (FBP) for parallel-beam CT.

The ramp ``|nu|`` is built, as in scikit-image's ``iradon``, from the band-limited spatial
Ram-Lak kernel sampled at the detector spacing (Kak & Slaney, *Principles of Computerized
Tomographic Imaging*, 1988, ch. 3, eq. 61):

    h[0] = 1/4,   h[n] = -1 / (pi n)^2 for odd n,   h[n] = 0 for even n != 0,

whose DFT is close to ``|nu|`` (nu in cycles per sample) without the DC bias of a sampled
``|nu|``. The apodisation windows multiply it in frequency:

* ``ramp``: none (Ram-Lak);
* ``shepp-logan``: ``sinc`` (``sin(pi nu) / (pi nu)``, Shepp & Logan 1974);
* ``cosine``: ``cos(pi nu)``;
* ``hamming`` / ``hann``: numpy's ``hamming`` / ``hanning`` window of the FFT length,
  centred on zero frequency (``~0.54 + 0.46 cos(2 pi nu)`` / ``~0.5 + 0.5 cos(2 pi nu)``).

They are the same numbers as ``skimage.transform.radon_transform._get_fourier_filter``
(scaled by 1/2: the factor 2 there is undone by its final ``pi / (2 V)``), so FBP here agrees
with ``iradon`` for the same filter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def padded_length(detectors: int) -> int:
    """FFT length for filtering a sinogram with ``detectors`` bins: the next power of two
    at least ``2 * detectors`` (and at least 64), so the circular convolution does not wrap."""
    return max(64, 2 ** math.ceil(math.log2(2 * detectors)))


def fourier_filter(length: int, name: str) -> np.ndarray:
    """Real frequency response ``(length,)`` (FFT order) of the windowed ramp ``name``.

    Units: per detector sample; multiply by ``1 / spacing`` for a detector spacing in pixels.
    Raises ValueError for an unknown name (the operator validates user input first).
    """
    if name not in FILTERS:
        raise ValueError(f"unknown FBP filter {name!r}; choose one of {', '.join(FILTERS)}")
    n = np.concatenate((np.arange(1, length // 2 + 1, 2), np.arange(length // 2 - 1, 0, -2)))
    kernel = np.zeros(length)
    kernel[0] = 0.25
    kernel[1::2] = -1.0 / (np.pi * n) ** 2
    response = np.real(np.fft.fft(kernel))  # ~ |nu|, nu in cycles per sample
    nu = np.fft.fftfreq(length)
    if name == "shepp-logan":
        response *= np.sinc(nu)
    elif name == "cosine":
        response *= np.cos(np.pi * nu)
    elif name == "hamming":
        response *= np.fft.fftshift(np.hamming(length))
    elif name == "hann":
        response *= np.fft.fftshift(np.hanning(length))
    return response


def filter_sinogram(sinogram: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Convolve every projection of ``sinogram`` ``(..., detectors)`` with a ramp filter
    given by its real-FFT response ``response`` ``(L // 2 + 1,)`` for FFT length ``L``
    (zero padding to ``L`` bins, so no wrap-around); returns ``(..., detectors)``."""
    detectors = sinogram.shape[-1]
    length = 2 * (response.shape[-1] - 1)
    spectrum = torch.fft.rfft(sinogram, n=length, dim=-1) * response
    return torch.fft.irfft(spectrum, n=length, dim=-1)[..., :detectors]
