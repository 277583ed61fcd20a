"""Cartesian MRI: ``y_c = M F (S_c x)``, the SENSE forward model with a sampling mask.

Pruessmann et al. 1999, "SENSE: Sensitivity encoding for fast MRI"; fastMRI's conventions
(Zbontar et al. 2018) for the transform: ``F`` is the centred orthonormal 2-D DFT
``fftshift(fft2(ifftshift(z), norm="ortho"))``, so ``||F z|| = ||z||`` and the k-space centre
(DC) sits at ``(H // 2, W // 2)``. ``M`` is a 0/1 mask ``(H, W)``, ``S_c`` the coil
sensitivities ``(coils, H, W)`` (one coil of ones without maps).

* image ``(B, C, H, W)`` real: C = 1 real image, C = 2 complex image as (re, im) channels;
* k-space ``(B, coils, H, W)`` complex (complex64 for float32, complex128 for float64).

The adjoint is ``A^H y = Re/ReIm( sum_c conj(S_c) F^H (M y_c) )``; the normal operator
``A^H A`` applies the mask once (M^2 = M). ``direct`` is the zero-filled, coil-combined
reconstruction ``sum_c conj(S_c) F^H(M y_c) / sum_c |S_c|^2`` (0 where no coil sees a pixel),
which for maps with ``sum_c |S_c|^2 = 1`` is the adjoint, and with a full mask returns x.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invdiff.errors import InputError
from invdiff.operators.base import Operator, check_params, to_channels, to_complex
from invdiff.operators.masks import random_line_mask
from invdiff.operators.noise import NoiseModel

_PARAMS = {"image_shape", "mask", "coil_maps", "noise"}


def fft2c(z: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D DFT over the last two axes (fastMRI's ``fft2c``)."""
    z = torch.fft.ifftshift(z, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(z, norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (and its adjoint, the transform being unitary)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """complex64 for float32, complex128 for float64."""
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class MRIOperator(Operator):
    """Masked (multi-coil) Cartesian MRI ``(B, C, H, W) -> (B, coils, H, W)`` complex.

    ``image_shape``: ``(C, H, W)`` with C in {1, 2}. ``mask``: ``(H, W)`` (or ``(W,)`` lines,
    broadcast over rows) of 0/1. ``coil_maps``: ``(coils, H, W)`` complex, or None for one
    coil of ones. ``noise``: the k-space noise (std per real and imaginary part).
    """

    name = "mri"
    measurement_is_complex = True

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        mask: Any,
        coil_maps: Any = None,
        noise: NoiseModel | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.image_shape = _check_image_shape(image_shape)
        channels, height, width = self.image_shape
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"the mri operator works in float32 or float64, not {dtype}.")
        self.noise = NoiseModel() if noise is None else noise
        if not isinstance(self.noise, NoiseModel):
            raise InputError("the mri operator's noise must be a NoiseModel.")
        if self.noise.kind not in ("none", "gaussian"):
            raise InputError(f"the mri operator supports Gaussian k-space noise only, not '{self.noise.kind}'.")
        self.device = torch.device(device)
        self.dtype = dtype
        self.cdtype = complex_dtype(dtype)
        self._mask_np = _check_mask(mask, height, width)
        self._maps_np = _check_coil_maps(coil_maps, height, width)
        coils = 1 if self._maps_np is None else self._maps_np.shape[0]
        self.measurement_shape = (coils, height, width)

        self.mask = torch.as_tensor(self._mask_np, dtype=dtype, device=self.device)
        if self._maps_np is None:
            self.coil_maps = None
            self._combine_weight = None
        else:
            self.coil_maps = torch.as_tensor(self._maps_np, device=self.device).to(self.cdtype)
            power = self.coil_maps.abs().pow(2).sum(dim=0)
            self._combine_weight = torch.where(power > 0, 1 / power.clamp(min=torch.finfo(dtype).tiny), 0)

    # --- the linear map -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` real -> ``(B, coils, H, W)``: ``M F(S_c x)``."""
        self._check_image(x)
        z = to_complex(x.to(self.dtype))
        if self.coil_maps is not None:
            z = z * self.coil_maps
        return self.mask * fft2c(z)

    def sampled(self) -> torch.Tensor:
        """The mask ``(H, W)``: unsampled k-space holds no data."""
        return self.mask

    def _coil_images(self, y: torch.Tensor) -> torch.Tensor:
        """``F^H (M y_c)`` per coil, ``(B, coils, H, W)`` complex."""
        return ifft2c(self.mask * y.to(self.cdtype))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, coils, H, W) -> (B, C, H, W)``: ``sum_c conj(S_c) F^H (M y_c)``, real channels."""
        z = self._coil_images(y)
        if self.coil_maps is not None:
            z = (self.coil_maps.conj() * z).sum(dim=1, keepdim=True)
        return to_channels(z, self.image_shape[0])

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` with one mask application (M^2 = M) and no measurement allocation kept."""
        self._check_image(x)
        z = to_complex(x.to(self.dtype))
        if self.coil_maps is None:
            return to_channels(ifft2c(self.mask * fft2c(z)), self.image_shape[0])
        z = ifft2c(self.mask * fft2c(z * self.coil_maps))
        return to_channels((self.coil_maps.conj() * z).sum(dim=1, keepdim=True), self.image_shape[0])

    def direct(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-filled reconstruction ``(B, coils, H, W) -> (B, C, H, W)``, coil-combined with
        the maps: ``sum_c conj(S_c) F^H(M y_c) / sum_c |S_c|^2`` (Roemer et al. 1990's
        optimal combination for white noise)."""
        z = self._coil_images(y)
        if self.coil_maps is not None:
            z = (self.coil_maps.conj() * z).sum(dim=1, keepdim=True) * self._combine_weight
        return to_channels(z, self.image_shape[0])

    # --- configuration -----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "mask": self._mask_np.copy(),
            "coil_maps": None if self._maps_np is None else self._maps_np.copy(),
            "noise": self.noise.params(),
        }

    @classmethod
    def from_config(
        cls, params: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "MRIOperator":
        check_params("mri", params, _PARAMS, ("image_shape", "mask"))
        return cls(
            image_shape=params["image_shape"],
            mask=params["mask"],
            coil_maps=params.get("coil_maps"),
            noise=NoiseModel.from_params(params.get("noise")),
            device=device,
            dtype=dtype,
        )

    @classmethod
    def example(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "MRIOperator":
        """A complex 16x16 image (C = 2), 4 birdcage coils, a fastMRI random line mask
        (acceleration 3, 4 centre lines), Gaussian noise std 0.01."""
        from invdiff.operators.coils import birdcage_maps

        mask = random_line_mask((16, 16), 3.0, 0.25, seed=0)
        maps = birdcage_maps(4, 16, 16)
        return cls((2, 16, 16), mask, maps, NoiseModel("gaussian", std=0.01), device=device, dtype=dtype)

    # --- helpers -------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape or x.is_complex():
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"mri: expected real images (B, {expected}), got {tuple(x.shape)} {x.dtype}")


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in image_shape)
        valid = len(shape) == 3 and all(float(a) == b for a, b in zip(image_shape, shape))
    except (TypeError, ValueError):
        valid = False
    if not valid or shape[0] not in (1, 2) or min(shape[1:]) < 1:
        raise InputError(
            f"the mri operator needs an image shape (C, H, W) with C = 1 (real) or 2 (complex), got {image_shape!r}."
        )
    return shape


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_mask(mask: Any, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 0/1 from an ``(H, W)`` or ``(W,)`` array of 0/1 (or booleans)."""
    try:
        array = _as_numpy(mask)
        if array.dtype == object or np.iscomplexobj(array):
            raise ValueError
        array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise InputError("the mri mask must be an array of 0/1 values.") from None
    if array.ndim == 1 and array.shape == (width,):
        array = np.broadcast_to(array, (height, width))
    if array.shape != (height, width):
        raise InputError(f"the mri mask has shape {array.shape}, but the k-space is {height}x{width} (or ({width},) lines).")
    if not np.isin(array, (0.0, 1.0)).all():
        raise InputError("the mri mask must hold only 0 and 1.")
    if not array.any():
        raise InputError("the mri mask samples no k-space point.")
    return array.astype(np.float32)


def _check_coil_maps(maps: Any, height: int, width: int) -> np.ndarray | None:
    """``(coils, H, W)`` complex64/complex128 or None; a string (e.g. "estimate") must be
    resolved before the operator is built."""
    if maps is None:
        return None
    if isinstance(maps, str):
        raise InputError(f"coil_maps '{maps}' must be resolved to arrays (estimate them from the k-space) first.")
    try:
        array = _as_numpy(maps)
        if array.dtype == object:
            raise ValueError
        precise = array.dtype in (np.float64, np.complex128)
        array = array.astype(np.complex128 if precise else np.complex64)
    except (TypeError, ValueError):
        raise InputError("the mri coil maps must be a complex array (coils, H, W).") from None
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (height, width) or array.shape[0] < 1:
        raise InputError(f"the mri coil maps have shape {array.shape}, expected (coils, {height}, {width}).")
    if not np.isfinite(array).all():
        raise InputError("the mri coil maps contain NaN or Inf values.")
    return array
