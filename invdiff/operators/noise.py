"""Measurement noise models shared by all operators (DESIGN.md section 2).

Every model answers three questions a solver needs:

* ``sample(clean, generator)``: a noisy measurement from a noiseless one;
* ``variance(y)``: the per-element variance of ``y`` (per real and imaginary part for complex
  data), so every solver can weigh the data term as ``0.5 * sum((A x - y)^2 / variance)``;
* ``nll(pred, y)``: the negative log-likelihood (up to a constant) per batch element.

Models:

* ``none``: noiseless (``variance`` is a tiny floor so weights stay finite).
* ``gaussian``: additive white Gaussian noise of standard deviation ``std`` in the
  measurement's own units (per real/imaginary part).
* ``transmission``: low-dose CT, Beer-Lambert with Poisson counts. With incident photons
  ``I0`` per detector bin, ``counts ~ Poisson(I0 exp(-p))`` and the stored sinogram is
  ``-log(max(counts, 1) / I0)``. Its variance is ``1 / (I0 exp(-y))`` (the delta method), the
  weights of penalised weighted least squares (Sauer & Bouman 1993; Elbakri & Fessler 2002).
* ``poisson_gaussian``: fluorescence microscopy. ``gain`` converts photons to image units
  (``gain = peak / photons`` at simulation), ``counts ~ Poisson(b / gain)``, plus Gaussian read
  noise of ``read_std`` photons: ``y = gain * (counts + read_std * n)``. Variance
  ``gain * max(y, 0) + (gain * read_std)^2`` (Foi et al. 2008, the Poisson-Gaussian model).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from invdiff.errors import InputError

_VARIANCE_FLOOR = 1e-12


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if x.is_complex():
        real_dtype = x.real.dtype
        re = torch.randn(x.shape, generator=generator, dtype=real_dtype, device="cpu").to(x.device)
        im = torch.randn(x.shape, generator=generator, dtype=real_dtype, device="cpu").to(x.device)
        return torch.complex(re, im)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)


def _poisson(rate: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.poisson(rate.detach().cpu().double(), generator=generator).to(rate.device, rate.dtype)


def _squared_abs(r: torch.Tensor) -> torch.Tensor:
    return r.real**2 + r.imag**2 if r.is_complex() else r**2


@dataclass(frozen=True)
class NoiseModel:
    """Noise of one measurement. ``kind`` is one of none, gaussian, transmission,
    poisson_gaussian; the other fields are used by the kinds documented above."""

    kind: str = "none"
    std: float = 0.0
    photons: float = 0.0
    gain: float = 1.0
    read_std: float = 0.0

    KINDS = ("none", "gaussian", "transmission", "poisson_gaussian")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise InputError(f"unknown noise model '{self.kind}'; choose one of {', '.join(self.KINDS)}.")
        for field in ("std", "photons", "gain", "read_std"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"noise {field} must be a finite number >= 0, got {value!r}.")
        if self.kind in ("transmission", "poisson_gaussian") and self.photons <= 0:
            raise InputError("the Poisson noise model needs --photons > 0.")
        if self.kind == "poisson_gaussian" and self.gain <= 0:
            raise InputError("the Poisson-Gaussian noise model needs a positive gain.")

    # --- config ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k == "kind" or v != NoiseModel.__dataclass_fields__[k].default}

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "NoiseModel":
        if params is None:
            return cls()
        if not isinstance(params, dict):
            raise InputError("noise description must be a JSON object.")
        unknown = set(params) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown noise parameter(s): {', '.join(sorted(unknown))}.")
        return cls(**params)

    # --- behaviour ---------------------------------------------------------------------
    def sample(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy measurement drawn around the noiseless ``clean``."""
        if self.kind == "none":
            return clean.clone()
        if self.kind == "gaussian":
            return clean + self.std * _randn_like(clean, generator)
        if self.kind == "transmission":
            counts = _poisson(self.photons * torch.exp(-clean), generator)
            return -torch.log(torch.clamp(counts, min=1.0) / self.photons)
        # poisson_gaussian
        counts = _poisson(torch.clamp(clean, min=0) / self.gain, generator)
        counts = counts + self.read_std * _randn_like(counts, generator)
        return self.gain * counts

    def variance(self, y: torch.Tensor) -> torch.Tensor:
        """Per-element variance of ``y`` (a tensor broadcastable to y's real shape)."""
        real = y.real if y.is_complex() else y
        if self.kind == "none":
            return torch.full((), _VARIANCE_FLOOR, dtype=real.dtype, device=y.device)
        if self.kind == "gaussian":
            return torch.full((), max(self.std**2, _VARIANCE_FLOOR), dtype=real.dtype, device=y.device)
        if self.kind == "transmission":
            return 1.0 / (self.photons * torch.exp(-real)).clamp(min=1.0)
        return (self.gain * real.clamp(min=0) + (self.gain * self.read_std) ** 2).clamp(min=self.gain**2 * 0.25)

    def nll(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``0.5 * sum(|pred - y|^2 / variance(y))`` per batch element, shape ``(B,)``.

        For the Poisson models this is the weighted-least-squares (second order) form of
        the Poisson log-likelihood, with weights from the data."""
        r = _squared_abs(pred - y) / self.variance(y)
        return 0.5 * r.reshape(r.shape[0], -1).sum(dim=1)


def noise_from_options(
    clean: torch.Tensor,
    *,
    std: float | None = None,
    rel: float | None = None,
    photons: float | None = None,
    read_std: float = 0.0,
    poisson_kind: str | None = None,
) -> NoiseModel:
    """The NoiseModel for the command-line options of DESIGN.md section 2.

    ``--noise-std S``: std S in measurement units. ``--noise-rel R``: std = R * max|clean|.
    ``--photons N``: the operator's Poisson model (``poisson_kind``: transmission for CT,
    poisson_gaussian for microscopy with N photons at the image's peak). None of them: noiseless.
    """
    given = [name for name, v in (("--noise-std", std), ("--noise-rel", rel), ("--photons", photons)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give only one of {', '.join(given)}.")
    if read_std:
        if not (math.isfinite(read_std) and read_std > 0):
            raise InputError(f"--read-noise must be >= 0, got {read_std}.")
        if photons is None or poisson_kind != "poisson_gaussian":
            raise InputError("--read-noise is the read noise of the microscopy Poisson model; give it with --photons "
                             "and the blur operator.")
    if std is not None:
        if not (math.isfinite(std) and std >= 0):
            raise InputError(f"--noise-std must be >= 0, got {std}.")
        return NoiseModel("gaussian", std=float(std))
    if rel is not None:
        if not (math.isfinite(rel) and rel >= 0):
            raise InputError(f"--noise-rel must be >= 0, got {rel}.")
        peak = float(clean.abs().max()) if clean.numel() else 0.0
        return NoiseModel("gaussian", std=float(rel) * peak)
    if photons is not None:
        if poisson_kind is None:
            raise InputError("--photons (Poisson noise) is not available for this operator.")
        if not (math.isfinite(photons) and photons > 0):
            raise InputError(f"--photons must be > 0, got {photons}.")
        if poisson_kind == "transmission":
            return NoiseModel("transmission", photons=float(photons))
        peak = float(clean.max()) if clean.numel() else 0.0
        if peak <= 0:
            raise InputError("Poisson noise needs an image with a positive peak.")
        return NoiseModel("poisson_gaussian", photons=float(photons), gain=peak / float(photons), read_std=float(read_std))
    return NoiseModel("none")
