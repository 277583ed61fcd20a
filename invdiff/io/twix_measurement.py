"""A raw Siemens data file (``meas_*.dat``) as an invdiff MRI measurement, read as it is.

``invdiff reconstruct meas.dat --method cg-sense`` works on the scanner's own file: the
k-space and the sampled phase-encode lines come from :func:`invdiff.io.twix.read_twix`
(``(slices, coils, H, W)``, raw ADC units, readout oversampling removed), the coil maps are
estimated per slice by ESPIRiT from the fully sampled centre (``coil_maps: "estimate"``; a
single-coil file has none), and the noise std per real and imaginary part, in the same raw
units, from:

* the noise-adjust readouts, when the file has them (their receiver bandwidth may differ from
  the imaging readouts', so this is an estimate), else
* the k-space corners (``CORNER`` of each side): ``median(|Re|, |Im|) / 0.6745``, the robust
  Gaussian std (Donoho & Johnstone 1994), an upper bound where the object still has signal.

The image model is complex (2 channels). The reconstruction is in the raw units of the data
(a prior's percentile normalisation finds its own scale, invdiff/pipeline/units.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from invdiff.io.hdf5 import Measurement
from invdiff.io.twix import read_twix

CORNER = 1 / 8
"""Fraction of each k-space side whose corners give the noise estimate without noise scans."""

SUFFIXES = (".dat",)


def noise_std(kspace: np.ndarray, noise: np.ndarray | None) -> tuple[float, str]:
    """Noise std per real/imaginary part of ``kspace`` ``(..., H, W)``, and where it came from."""
    if noise is not None and noise.size:
        return float(np.sqrt(np.mean([noise.real.var(), noise.imag.var()]))), "noise-adjust readouts"
    h, w = kspace.shape[-2:]
    ch, cw = max(int(h * CORNER), 1), max(int(w * CORNER), 1)
    corners = np.concatenate([kspace[..., rows, cols].ravel() for rows in (slice(0, ch), slice(h - ch, h))
                              for cols in (slice(0, cw), slice(w - cw, w))])
    parts = np.concatenate([corners.real, corners.imag])
    return float(np.median(np.abs(parts)) / 0.6745), f"k-space corners ({CORNER:.3g} of each side)"


def measurement_from_twix(path: str | Path) -> Measurement:
    """The imaging scan of a Siemens raw data file as a Measurement (see the module docstring);
    InputError naming the file for anything it cannot read."""
    path = Path(path)
    raw = read_twix(path)
    kspace = np.asarray(raw["kspace"], np.complex64)
    std, std_source = noise_std(kspace, raw["noise"])
    params = {
        "image_shape": [2, *kspace.shape[-2:]],
        "mask": np.asarray(raw["mask"], np.float32),
        "coil_maps": "estimate" if kspace.shape[1] > 1 else None,
        "noise": {"kind": "gaussian", "std": std},
    }
    header = {k: v for k, v in raw["header"].items() if isinstance(v, (str, int, float, bool))}
    attrs = {"source_format": "siemens_twix", "twix_header": header, "noise_std_source": std_source}
    return Measurement(data=kspace, operator={"name": "mri", "params": params}, attrs=attrs, source=path)
