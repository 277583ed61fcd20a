"""Simulate measurements of an image stack: y = A x + noise (the `invdiff simulate` command)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from invdiff.errors import InputError
from invdiff.io.hdf5 import Measurement
from invdiff.operators.base import Operator, build_operator
from invdiff.operators.noise import noise_from_options
from invdiff.pipeline.geometry import GeometryOptions, operator_params, poisson_kind


def image_tensor(images: np.ndarray, channels: int) -> torch.Tensor:
    """``(slices, H, W)`` real or complex -> ``(slices, channels, H, W)`` real float64."""
    if np.iscomplexobj(images):
        if channels != 2:
            raise InputError("complex images need an operator with a complex image model (e.g. mri --complex).")
        return torch.from_numpy(np.stack([images.real, images.imag], axis=1).astype(np.float64))
    x = torch.from_numpy(np.asarray(images, dtype=np.float64))[:, None]
    if channels == 2:
        x = torch.cat([x, torch.zeros_like(x)], dim=1)
    return x


def _check_fits(image_shape: Any, images: np.ndarray, operator_name: str) -> None:
    """InputError unless an operator's ``image_shape`` ``(C, H, W)`` fits the images ``(slices,
    H, W)`` (``--operator-params`` can set another size); a shape that is not three whole
    numbers is left to the operator to report."""
    try:
        channels, height, width = (int(n) for n in image_shape)
    except (TypeError, ValueError):
        return
    if (height, width) != tuple(images.shape[1:]):
        raise InputError(f"the {operator_name} operator's image_shape {[channels, height, width]} does not fit the "
                         f"{images.shape[1]}x{images.shape[2]} image; leave image_shape out of --operator-params, "
                         f"or give [C, {images.shape[1]}, {images.shape[2]}].")
    if channels not in (1, 2):
        raise InputError(f"the {operator_name} operator's images have {channels} channels; simulate makes real (1) "
                         f"or complex (2) images.")


def apply_forward(operator: Operator, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Forward-project ``(slices, C, H, W)`` in batches on the operator's device -> CPU tensor."""
    out = []
    for start in range(0, x.shape[0], batch):
        chunk = x[start : start + batch].to(operator.device, operator.dtype)
        out.append(operator.forward(chunk).cpu())
    return torch.cat(out)


def simulate(
    images: np.ndarray,
    operator_name: str,
    geometry: GeometryOptions,
    *,
    noise_std: float | None = None,
    noise_rel: float | None = None,
    photons: float | None = None,
    read_std: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    attrs: dict[str, Any] | None = None,
) -> Measurement:
    """Measurements of ``images`` ``(slices, H, W)`` (in the units the operator expects).

    The operator is described by ``geometry``; the noise by the options of DESIGN.md
    section 2 (std in measurement units, relative to the peak, or Poisson photons), drawn
    from a CPU generator seeded with ``seed``.
    """
    if images.ndim != 3:
        raise InputError(f"expected an image stack (slices, H, W), got shape {images.shape}.")
    if not np.isfinite(images).all():
        raise InputError("the image contains NaN or Inf values.")
    params = operator_params(operator_name, images.shape[1:], geometry, seed)
    _check_fits(params.get("image_shape"), images, operator_name)  # before a wrong-sized operator is built
    op = build_operator({"name": operator_name, "params": params}, device=device, dtype=torch.float64)
    _check_fits(op.image_shape, images, operator_name)
    x = image_tensor(images, op.image_shape[0])
    clean = apply_forward(op, x)
    noise = noise_from_options(
        clean, std=noise_std, rel=noise_rel, photons=photons, read_std=read_std, poisson_kind=poisson_kind(operator_name)
    )
    generator = torch.Generator().manual_seed(int(seed))
    noisy = noise.sample(clean, generator)
    sampled = op.sampled()
    if sampled is not None:
        # A scanner records nothing where it does not sample: zeros there, as in its files.
        noisy = noisy * sampled.to(noisy.real.dtype)
    params["noise"] = noise.params()
    data = noisy.numpy().astype(np.complex64 if noisy.is_complex() else np.float32)
    truth = images.astype(np.complex64 if np.iscomplexobj(images) else np.float32)
    return Measurement(data=data, operator={"name": operator_name, "params": params}, ground_truth=truth, attrs=dict(attrs or {}))
