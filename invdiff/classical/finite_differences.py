"""Discrete gradient and divergence for total variation (Chambolle 2004, eq. (2.1)-(2.2)).

Forward differences with Neumann boundary (the difference leaving the image is 0), the
convention of Chambolle's algorithm and of ``skimage.restoration.denoise_tv_chambolle``.
``divergence`` is minus the exact adjoint of ``gradient``: ``<grad x, p> = -<x, div p>``,
and ``||grad||^2 <= 8`` in 2-D.
"""

from __future__ import annotations

import torch

#: Upper bound of ||grad||^2 for the 2-D forward-difference gradient (Chambolle 2004).
GRADIENT_NORM_SQ = 8.0


def gradient(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, C, 2, H, W)``: (vertical, horizontal) forward differences."""
    g = torch.zeros(x.shape[:2] + (2,) + x.shape[2:], dtype=x.dtype, device=x.device)
    g[:, :, 0, :-1, :] = x[:, :, 1:, :] - x[:, :, :-1, :]
    g[:, :, 1, :, :-1] = x[:, :, :, 1:] - x[:, :, :, :-1]
    return g


def divergence(p: torch.Tensor) -> torch.Tensor:
    """``(B, C, 2, H, W)`` -> ``(B, C, H, W)``, the negative adjoint of :func:`gradient`."""
    pv, ph = p[:, :, 0], p[:, :, 1]
    d = torch.zeros_like(pv)
    d[:, :, :-1, :] += pv[:, :, :-1, :]
    d[:, :, 1:, :] -= pv[:, :, :-1, :]
    d[:, :, :, :-1] += ph[:, :, :, :-1]
    d[:, :, :, 1:] -= ph[:, :, :, :-1]
    return d


def gradient_magnitude(g: torch.Tensor) -> torch.Tensor:
    """Pointwise joint magnitude over channels and directions: ``(B, C, 2, H, W)`` -> ``(B, 1, 1, H, W)``.

    Summing over channels makes complex images (C = 2) a joint (vectorial) TV of the real and
    imaginary parts, i.e. the TV of the complex image (Blomgren & Chan 1998)."""
    return torch.sqrt((g * g).sum(dim=(1, 2), keepdim=True))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV ``sum_pixels |grad x|`` per batch element, shape ``(B,)``."""
    return gradient_magnitude(gradient(x)).reshape(x.shape[0], -1).sum(dim=1)
