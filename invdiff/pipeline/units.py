"""From a measurement's image units to a prior's normalised units, for posterior sampling.

A solver works in "scaled units" z: the physical image is ``x = scale * z`` and it sees the
operator ``A_s z = A (scale * z)`` (invdiff/operators/base.py ``ScaledOperator``). The prior's
own units are x_n = (x_prior - lo) / (hi - lo) for a ``window`` prior, x_n = x / q for a
``percentile`` prior (invdiff/prior/data.py). How z relates to x_n:

* ``percentile`` prior: ``scale`` is the prior's percentile (``normalisation.percentile``,
  99.5 by default) of |direct reconstruction| over the volume, the same statistic the prior
  was trained with, and z = x_n.
* ``window`` prior, window (lo, hi): the image is ``x = a + b x_n``. With a window in HU, the
  image of a CT sinogram is a linear attenuation in 1/mm (line integrals over a pixel size in
  mm; what ``invdiff simulate`` makes of a CT DICOM with mu = mu_water (1 + HU / 1000),
  invdiff/io/dicom.py), so ``a = mu_water (1 + lo / 1000)`` and ``b = mu_water (hi - lo) /
  1000``; a prior in HU for any other operator is an InputError. A window in the images' own
  units is taken as it is, ``a = lo`` and ``b = hi - lo``.
  ``scale = b`` and z = x_n + a / b, so the solver is given the prior shifted by ``c = a / b``:
  ``D_c(z, sigma) = D(z - c, sigma) + c`` (:class:`ShiftedDenoiser`). A shift changes neither
  the score's noise dependence nor the operator's linearity, which is why the offset goes to
  the prior and not to the measurement (a Poisson or transmission noise model depends on y).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invdiff.errors import InputError


@dataclass(frozen=True)
class PriorUnits:
    """``x = scale * z`` (physical image from solver units) and the prior shift ``c``:
    x_n = z - shift. ``description`` says which rule of the module docstring applied."""

    scale: float
    shift: float
    description: str

    @property
    def offset(self) -> float:
        """``a`` of the module docstring: the physical value of x_n = 0."""
        return self.scale * self.shift


def window_units(normalisation, operator_name: str) -> PriorUnits:
    """:class:`PriorUnits` for a ``window`` prior and a measurement of this operator."""
    from invdiff.io.dicom import MU_WATER_PER_MM

    lo, hi = (float(v) for v in normalisation.window)
    if normalisation.units == "HU":
        if operator_name != "radon":
            raise InputError(f"the prior was trained on CT images in Hounsfield units (window {lo:g}..{hi:g} HU) "
                             f"and cannot reconstruct a {operator_name} measurement.")
        a = MU_WATER_PER_MM * (1.0 + lo / 1000.0)
        b = MU_WATER_PER_MM * (hi - lo) / 1000.0
        return PriorUnits(b, a / b, f"window {lo:g}..{hi:g} HU, image in mu per mm (mu_water {MU_WATER_PER_MM} /mm)")
    return PriorUnits(hi - lo, lo / (hi - lo), f"window {lo:g}..{hi:g} in the images' own units")


class ShiftedDenoiser:
    """``D_c(z, sigma) = D(z - c, sigma) + c``: the prior of x_n seen in units z = x_n + c.

    z ``(B, C, H, W)``, sigma ``(B,)`` or a float; the shift applies to channel 0 (the real part
    of a complex image). Holds the wrapped prior as ``.prior`` so test-time adaptation
    (invdiff/prior/lora.py) finds its network."""

    def __init__(self, prior, shift: float):
        self.prior = prior
        self.shift = float(shift)
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.sigma_data = prior.sigma_data
        self.image_shape = prior.image_shape
        self.channels = prior.channels

    def __call__(self, z: torch.Tensor, sigma) -> torch.Tensor:
        c = torch.zeros(z.shape[1], 1, 1, dtype=z.dtype, device=z.device)
        c[0] = self.shift
        return self.prior(z - c, sigma) + c
