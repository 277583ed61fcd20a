"""Orthonormal 2-D discrete wavelet transform in pure PyTorch (periodic boundary).

Mallat's pyramid (Mallat 1989) with Daubechies filters (Daubechies 1988) taken from
PyWavelets, periodised so the transform is an orthogonal matrix: ``synthesis`` is both the
inverse and the adjoint of ``analysis``, the property the l1-wavelet prox relies on. The
coefficients are those of ``pywt.wavedec2(x, wavelet, mode="periodization")`` packed into
one image-shaped tensor, the layout of ``pywt.coeffs_to_array``: at each level the
approximation block ``[:h, :w]`` is split into ``[[LL, LH], [HL, HH]]``.

Runs on any device; images ``(B, C, H, W)`` with H and W divisible by ``2**levels``
(:func:`max_levels` gives the deepest admissible pyramid).
"""

from __future__ import annotations

from dataclasses import dataclass

import pywt
import torch
import torch.nn.functional as F

from invdiff.errors import InputError


def max_levels(height: int, width: int, requested: int, filter_length: int) -> int:
    """The largest ``J <= requested`` with H, W divisible by ``2**J`` and coarsest side >= filter length / 2."""
    levels = 0
    h, w = height, width
    while levels < requested and h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= max(filter_length // 2, 1):
        h, w, levels = h // 2, w // 2, levels + 1
    return levels


@dataclass(frozen=True)
class Wavelet2D:
    """An orthonormal periodic 2-D DWT with ``levels`` levels of ``name`` (e.g. "db4")."""

    name: str
    levels: int
    filters: torch.Tensor  # (2, 1, L): reversed decomposition low-pass and high-pass

    @classmethod
    def create(cls, name: str, levels: int, *, device: torch.device | str, dtype: torch.dtype) -> "Wavelet2D":
        try:
            wavelet = pywt.Wavelet(name)
        except ValueError:
            raise InputError(f"unknown wavelet '{name}'; use a PyWavelets name such as db4.") from None
        if not wavelet.orthogonal:
            raise InputError(f"wavelet '{name}' is not orthogonal; use a Daubechies or Symlet wavelet.")
        filters = torch.tensor([wavelet.dec_lo[::-1], wavelet.dec_hi[::-1]], dtype=dtype).unsqueeze(1)
        return cls(name, levels, filters.to(device))

    @property
    def filter_length(self) -> int:
        return self.filters.shape[-1]

    # --- one level along the last axis --------------------------------------------------
    def _analysis_1d(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(..., N)`` -> low, high ``(..., N/2)``: c[k] = sum_j h[j] x[(2k + L/2 - j) mod N]."""
        shape, n = x.shape[:-1], x.shape[-1]
        length = self.filter_length
        left = length // 2 - 1
        flat = x.reshape(-1, 1, n)
        padded = _circular_pad(flat, left, length - 1 - left)
        out = F.conv1d(padded, self.filters, stride=2)
        return out[:, 0].reshape(*shape, n // 2), out[:, 1].reshape(*shape, n // 2)

    def _synthesis_1d(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Adjoint (= inverse) of :meth:`_analysis_1d`."""
        shape, half = low.shape[:-1], low.shape[-1]
        n = 2 * half
        length = self.filter_length
        left = length // 2 - 1
        stacked = torch.stack([low.reshape(-1, half), high.reshape(-1, half)], dim=1)
        full = F.conv_transpose1d(stacked, self.filters, stride=2)  # (M, 1, n + length - 2)
        full = F.pad(full, (0, n + length - 1 - full.shape[-1]))
        out = full[..., left : left + n].clone()
        out[..., n - left :] += full[..., :left]
        tail = full[..., left + n :]
        out[..., : tail.shape[-1]] += tail
        return out.reshape(*shape, n)

    # --- the 2-D pyramid ----------------------------------------------------------------
    def analysis(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` -> packed coefficients of the same shape."""
        coeffs = x.clone()
        h, w = x.shape[-2:]
        for _ in range(self.levels):
            block = coeffs[..., :h, :w]
            lo, hi = self._analysis_1d(block)  # along W
            ll, lh = self._analysis_1d(lo.transpose(-1, -2))  # along H
            hl, hh = self._analysis_1d(hi.transpose(-1, -2))
            top = torch.cat([ll.transpose(-1, -2), hl.transpose(-1, -2)], dim=-1)
            bottom = torch.cat([lh.transpose(-1, -2), hh.transpose(-1, -2)], dim=-1)
            coeffs[..., :h, :w] = torch.cat([top, bottom], dim=-2)
            h, w = h // 2, w // 2
        return coeffs

    def synthesis(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Packed coefficients -> image; the inverse and the adjoint of :meth:`analysis`."""
        x = coeffs.clone()
        h, w = coeffs.shape[-2] >> self.levels, coeffs.shape[-1] >> self.levels
        for _ in range(self.levels):
            ll, hl = x[..., :h, :w], x[..., :h, w : 2 * w]
            lh, hh = x[..., h : 2 * h, :w], x[..., h : 2 * h, w : 2 * w]
            lo = self._synthesis_1d(ll.transpose(-1, -2), lh.transpose(-1, -2)).transpose(-1, -2)
            hi = self._synthesis_1d(hl.transpose(-1, -2), hh.transpose(-1, -2)).transpose(-1, -2)
            x[..., : 2 * h, : 2 * w] = self._synthesis_1d(lo, hi)
            h, w = 2 * h, 2 * w
        return x

    def detail_mask(self, height: int, width: int) -> torch.Tensor:
        """``(H, W)`` bool: True on detail coefficients, False on the coarsest approximation."""
        mask = torch.ones((height, width), dtype=torch.bool, device=self.filters.device)
        mask[: height >> self.levels, : width >> self.levels] = False
        return mask


def _circular_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Periodic extension of ``(M, 1, N)`` along the last axis (pads may exceed N)."""
    n = x.shape[-1]
    index = torch.arange(-left, n + right, device=x.device) % n
    return x[..., index]
