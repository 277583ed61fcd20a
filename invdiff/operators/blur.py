"""Microscopy blur: ``y = crop(psf * pad(x))``, with an exact adjoint and Wiener deconvolution.

The image ``x`` ``(B, 1, H, W)`` is extended past its border by the boundary rule, convolved
with the PSF and cropped back to ``(B, H, W)``:

* ``reflect`` (default): half-sample symmetric extension ``d c b a | a b c d | d c b a``
  (``scipy.ndimage`` mode "reflect"); the adjoint folds the padded border back onto the image;
* ``periodic``: wrap-around (mode "wrap"), i.e. circular convolution;
* ``zero``: zeros outside the image (mode "constant"); the adjoint crops.

The PSF ``(h, w)`` (``h <= H``, ``w <= W``) is normalised to sum 1, and its pixel
``(h // 2, w // 2)`` is the origin, so ``forward`` equals
``scipy.ndimage.convolve(x, psf, mode=...)``. Convolution is done by real FFTs on a grid of
at least ``(H + h - 1, W + w - 1)`` (no wrap-around reaches the kept pixels), rounded up to a
2-3-5-smooth size, so big images and big PSFs stay fast on CPU and GPU. ``direct`` is a
Wiener filter whose regularisation comes from the noise model (see its docstring).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

from invdiff.errors import InputError
from invdiff.operators.base import Operator, check_params
from invdiff.operators.noise import NoiseModel

BOUNDARIES = ("reflect", "periodic", "zero")

#: Smallest Wiener regularisation ``lambda``: keeps a noiseless deconvolution stable against
#: round-off and boundary mismatch (gain at most ``1 / (2 sqrt(lambda)) = 50``).
WIENER_MIN_REGULARISATION = 1e-4


def normalise_psf(psf: Any, image_hw: tuple[int, int]) -> np.ndarray:
    """``psf`` as float64 ``(h, w)`` summing to 1; InputError if it is not a finite 2-D array
    with a positive sum that fits in the image ``image_hw = (H, W)``."""
    try:
        raw = np.asarray(psf.detach().cpu().numpy() if isinstance(psf, torch.Tensor) else psf)
        if np.iscomplexobj(raw):  # casting would drop the imaginary part without a word
            raise InputError("the PSF must be real (an intensity PSF), not complex.")
        array = raw.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError("the PSF must be a 2-D array of numbers.") from None
    if array.ndim != 2 or array.size == 0:
        raise InputError(f"the PSF must be a 2-D array, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise InputError("the PSF contains NaN or Inf values.")
    total = array.sum()
    if not total > 0:
        raise InputError(f"the PSF must have a positive sum, got {total:.4g}.")
    if array.shape[0] > image_hw[0] or array.shape[1] > image_hw[1]:
        raise InputError(
            f"the PSF ({array.shape[0]}x{array.shape[1]}) is larger than the image ({image_hw[0]}x{image_hw[1]}); "
            "crop the PSF or use a bigger image."
        )
    if abs(total - 1.0) <= 1e-12:  # already normalised: dividing again would drift by an ulp on
        return array  # every to_config/from_config round trip, and the rebuilt operator must be identical
    return array / total


def boundary_index(n: int, before: int, after: int, boundary: str) -> torch.Tensor:
    """Source index of each of ``before + n + after`` extended samples of a length-``n`` axis.

    Index ``n`` means "zero" (the caller appends one zero sample). Reflect is half-sample
    symmetric with period ``2n``; periodic has period ``n``. Returns int64 ``(before+n+after,)``.
    """
    p = torch.arange(-before, n + after)
    if boundary == "reflect":
        m = torch.remainder(p, 2 * n)
        return torch.where(m < n, m, 2 * n - 1 - m)
    if boundary == "periodic":
        return torch.remainder(p, n)
    return torch.where((p >= 0) & (p < n), p, torch.full_like(p, n))


def extend(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``(..., H, W) -> (..., len(rows), len(cols))`` by the index maps of :func:`boundary_index`."""
    x = F.pad(x, (0, 1, 0, 1))  # the zero sample at index H / W
    return x.index_select(-2, rows).index_select(-1, cols)


def extend_adjoint(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`extend`: add every extended sample back onto its source pixel."""
    height, width = hw
    lead = z.shape[:-2]
    folded_cols = z.new_zeros((*lead, z.shape[-2], width + 1)).index_add_(z.dim() - 1, cols, z)
    folded = z.new_zeros((*lead, height + 1, width + 1)).index_add_(z.dim() - 2, rows, folded_cols)
    return folded[..., :height, :width]


def psf_otf(psf: np.ndarray, grid: tuple[int, int], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Real-FFT transfer function ``(N, M // 2 + 1)`` of ``psf`` with its pixel
    ``(h // 2, w // 2)`` moved to the grid origin (circular convolution on an ``N x M`` grid)."""
    h, w = psf.shape
    kernel = np.zeros(grid, dtype=np.float64)
    kernel[:h, :w] = psf
    kernel = np.roll(kernel, (-(h // 2), -(w // 2)), axis=(0, 1))
    return torch.fft.rfft2(torch.as_tensor(kernel, dtype=dtype, device=device))


class BlurOperator(Operator):
    """Widefield microscopy blur ``y = crop(psf * pad(x))``: ``(B, 1, H, W) -> (B, H, W)``.

    ``image_shape``: ``(1, H, W)``. ``psf``: ``(h, w)`` array with ``h <= H, w <= W``
    (normalised to sum 1 here; pixel ``(h // 2, w // 2)`` is the optical axis). ``boundary``:
    reflect, periodic or zero (see the module docstring). ``noise``: the measurement's
    :class:`NoiseModel`, used by :meth:`direct`.
    """

    name = "blur"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        psf: Any,
        boundary: str = "reflect",
        noise: NoiseModel | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.image_shape = _check_image_shape(image_shape)
        _, height, width = self.image_shape
        if boundary not in BOUNDARIES:
            raise InputError(f"unknown blur boundary '{boundary}'; choose one of {', '.join(BOUNDARIES)}.")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"the blur operator works in float32 or float64, not {dtype}.")
        self.psf = normalise_psf(psf, (height, width))
        self.boundary = boundary
        self.noise = NoiseModel() if noise is None else noise
        if not isinstance(self.noise, NoiseModel):
            raise InputError("the blur operator's noise must be a NoiseModel.")
        self.device = torch.device(device)
        self.dtype = dtype
        self.measurement_shape = (height, width)
        self.measurement_is_complex = False

        h, w = self.psf.shape
        # Extension before/after each axis: output pixel j needs input pixels j - (h-1-h//2) .. j + h//2.
        self._pad = ((h - 1 - h // 2, h // 2), (w - 1 - w // 2, w // 2))
        self._rows = boundary_index(height, *self._pad[0], boundary).to(self.device)
        self._cols = boundary_index(width, *self._pad[1], boundary).to(self.device)
        self._extended = (height + h - 1, width + w - 1)
        self._grid = (next_fast_len(self._extended[0], real=True), next_fast_len(self._extended[1], real=True))
        self._otf = psf_otf(self.psf, self._grid, self.device, dtype)
        # Zero boundary: the fraction of the PSF that falls inside the image, (H, W) in (0, 1].
        ones = torch.ones((1, *self.image_shape), dtype=dtype, device=self.device)
        self._edge_gain = self.forward(ones)[0].clamp(min=1e-3) if boundary == "zero" else None
        # Wiener deconvolution grid: (H, W) for periodic, else the mirror extension (2H, 2W).
        self._mirror_rows = boundary_index(height, 0, height, "reflect").to(self.device)
        self._mirror_cols = boundary_index(width, 0, width, "reflect").to(self.device)
        wiener_grid = (height, width) if boundary == "periodic" else (2 * height, 2 * width)
        self._wiener_otf = psf_otf(self.psf, wiener_grid, self.device, dtype)

    # --- the linear map -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W) -> (B, H, W)``: ``crop(psf * extend(x))``."""
        self._check_image(x)
        extended = extend(x[:, 0], self._rows, self._cols)
        blurred = torch.fft.irfft2(torch.fft.rfft2(extended, s=self._grid) * self._otf, s=self._grid)
        (top, _), (left, _) = self._pad
        _, height, width = self.image_shape
        return blurred[..., top : top + height, left : left + width]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, H, W) -> (B, 1, H, W)``: ``extend^T(correlate(psf, embed(y)))``, exact."""
        (top, _), (left, _) = self._pad
        _, height, width = self.image_shape
        grid_h, grid_w = self._grid
        embedded = F.pad(y, (left, grid_w - width - left, top, grid_h - height - top))
        correlated = torch.fft.irfft2(torch.fft.rfft2(embedded) * self._otf.conj(), s=self._grid)
        correlated = correlated[..., : self._extended[0], : self._extended[1]]
        return extend_adjoint(correlated, self._rows, self._cols, (height, width)).unsqueeze(1)

    def direct(self, y: torch.Tensor) -> torch.Tensor:
        """Wiener deconvolution ``(B, H, W) -> (B, 1, H, W)`` (Wiener 1949; Gonzalez & Woods,
        *Digital Image Processing*, section 5.8):

            X(f) = conj(K(f)) Y(f) / (|K(f)|^2 + lambda),    lambda = sigma^2 / P_s,

        with ``K`` the PSF's transfer function, ``sigma^2`` the mean noise variance of ``y``
        from the noise model, and ``P_s = max(var(y) - sigma^2, sigma^2)`` the signal power
        per pixel (a white-spectrum estimate). ``lambda`` is at least
        ``WIENER_MIN_REGULARISATION``. Computed per batch element. The filter runs on a
        circular grid: ``H x W`` for a periodic boundary (exact), else the ``2H x 2W`` mirror
        extension ``[y, flip(y)]`` (exact for reflect with a symmetric PSF, no border
        ringing). For a zero boundary ``y`` is first divided by the PSF mass that falls
        inside the image, ``A 1`` (normalised convolution, Knutsson & Westin 1993), which
        undoes the dark frame before mirroring.
        """
        _, height, width = self.image_shape
        y = y.to(self.dtype)
        noise_var = self.noise.variance(y).expand(y.shape).mean(dim=(-2, -1))
        signal_var = (y.var(dim=(-2, -1), correction=0) - noise_var).maximum(noise_var)
        lam = (noise_var / signal_var).clamp(min=WIENER_MIN_REGULARISATION)[:, None, None]

        if self.boundary == "zero":
            y = y / self._edge_gain
        if self.boundary != "periodic":  # mirror extension to (2H, 2W)
            y = extend(y, self._mirror_rows, self._mirror_cols)
        otf = self._wiener_otf
        spectrum = torch.fft.rfft2(y) * otf.conj() / (otf.abs() ** 2 + lam)
        x = torch.fft.irfft2(spectrum, s=y.shape[-2:])
        return x[:, None, :height, :width]

    # --- configuration -----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "psf": self.psf.copy(),
            "boundary": self.boundary,
            "noise": self.noise.params(),
        }

    @classmethod
    def from_config(
        cls, params: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "BlurOperator":
        check_params("blur", params, {"image_shape", "psf", "boundary", "noise"}, ("image_shape", "psf"))
        return cls(
            image_shape=params["image_shape"],
            psf=params["psf"],
            boundary=params.get("boundary", "reflect"),
            noise=NoiseModel.from_params(params.get("noise")),
            device=device,
            dtype=dtype,
        )

    @classmethod
    def example(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "BlurOperator":
        """A 24x20 image, an asymmetric 5x4 PSF (odd and even sides), reflect boundary,
        Gaussian noise of std 0.01: the instance the operator contract tests run on."""
        psf = np.outer([1.0, 3.0, 5.0, 2.0, 1.0], [1.0, 4.0, 2.0, 1.0])
        return cls((1, 24, 20), psf, "reflect", NoiseModel("gaussian", std=0.01), device=device, dtype=dtype)

    # --- helpers -------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"blur: expected images (B, {expected}), got {tuple(x.shape)}")


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in image_shape)
        valid = len(shape) == 3 and all(float(a) == b for a, b in zip(image_shape, shape))
    except (TypeError, ValueError):
        valid = False
    if not valid or shape[0] != 1 or min(shape) < 1:
        raise InputError(f"the blur operator needs an image shape (1, H, W) with H, W >= 1, got {image_shape!r}.")
    return shape
