"""Command-line geometry options against the geometry a measurement file records.

An HDF5 or Siemens .dat file records its geometry (``invdiff_operator``, or what the fastMRI
and Siemens readers derive; DESIGN.md section 2), and ``invdiff reconstruct``'s options meet
it by one rule (invdiff.pipeline.inputs.load_measurement):

* ``--operator-params`` overrides the file's parameters deliberately (applied first);
* an option of another operator (``--acceleration`` on a CT file) is an InputError;
* an option that describes the acquisition (``--views``/``--angles``, ``--detectors``,
  ``--detector-spacing``, ``--pixel-size``; ``--acceleration``, ``--center-fraction``,
  ``--mask``, ``--coils``; ``--psf``; ``--image-size``) is checked against the file: if it
  agrees it is accepted (a batch script may pass the options it simulated with), if it
  contradicts the file it is an InputError saying both;
* an option that chooses how to reconstruct rather than what was measured (the FBP
  ``--filter``, the blur ``--boundary``, the complex image model ``--complex``) overrides the
  file's value.

A file records an MRI mask, not the options that drew it: ``--acceleration`` agrees with a
line mask whose line count is within 3.5 standard deviations (plus one line) of a random
mask's at that rate, ``--center-fraction`` with one whose centre lines are all sampled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from invdiff.errors import InputError, naming
from invdiff.io.hdf5 import Measurement, check_radon_geometry
from invdiff.pipeline.geometry import GeometryOptions, check_options_fit, parse_angles


def apply_options(path: Path, m: Measurement, geometry: GeometryOptions, image_size: int | None = None) -> None:
    """Check the geometry options against the geometry ``m`` records, and apply the ones that
    are reconstruction choices, by the rule of this module's docstring (``m.operator`` is
    changed in place). InputError for an option of another operator or one that contradicts
    the file."""
    name = m.operator["name"]
    params = m.operator["params"]
    with naming(path):
        check_options_fit(name, geometry)
    if name == "radon":
        _radon_options(path, params, geometry)
    elif name == "mri":
        _mri_options(path, params, m.data, geometry)
    elif name == "blur":
        _blur_options(path, params, geometry)
    if image_size is not None:
        _check_image_size(path, params, image_size)


def _contradiction(path: Path, recorded: str, option: str) -> InputError:
    return InputError(f"{path} records {recorded}, but {option}; drop the option to use the file's value "
                      f"(--operator-params overrides a file's parameter deliberately).")


def _image_hw(params: dict[str, Any]) -> tuple[int, int] | None:
    try:
        _, height, width = (int(v) for v in params["image_shape"])
    except (KeyError, TypeError, ValueError):
        return None
    return height, width


def _check_image_size(path: Path, params: dict[str, Any], n: int) -> None:
    hw = _image_hw(params)
    if hw is None:
        raise InputError(f"{path}: its operator description records no image_shape (C, H, W), so --image-size cannot apply.")
    if hw != (n, n):
        raise _contradiction(path, f"{hw[0]}x{hw[1]} images", f"--image-size {n} says {n}x{n}")


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)


# --- radon --------------------------------------------------------------------------------


def _angles_text(angles: np.ndarray) -> str:
    if angles.size == 1:
        return f"1 view angle ({angles[0]:g} degrees)"
    return f"{angles.size} view angles ({angles.min():g} to {angles.max():g} degrees)"


def _radon_options(path: Path, params: dict[str, Any], g: GeometryOptions) -> None:
    from invdiff.operators.radon import default_detectors

    if g.operator_params:  # read_measurement checked the file's own description
        check_radon_geometry(path, params)
    if g.views is not None and g.angles is not None:
        raise InputError("give either --views or --angles, not both.")
    angles = np.asarray(params["angles_deg"], dtype=np.float64)
    if g.views is not None or g.angles is not None:
        if g.views is not None:
            if g.views < 1:
                raise InputError(f"--views must be at least 1, got {g.views}.")
            wanted, option = np.linspace(0.0, 180.0, g.views, endpoint=False), f"--views {g.views}"
        else:
            wanted, option = np.asarray(parse_angles(g.angles), dtype=np.float64), f"--angles {g.angles}"
        if wanted.shape != angles.shape or not np.allclose(wanted, angles, rtol=0, atol=1e-4):
            raise _contradiction(path, _angles_text(angles), f"{option} says {_angles_text(wanted)}")
    _, height, width = (int(v) for v in params["image_shape"])
    recorded_detectors = params.get("detectors")
    recorded_detectors = default_detectors(height, width) if recorded_detectors is None else int(recorded_detectors)
    if g.detectors is not None and g.detectors != recorded_detectors:
        raise _contradiction(path, f"{recorded_detectors} detector bins", f"--detectors says {g.detectors}")
    for field, key, option, unit in (("detector_spacing", "spacing", "--detector-spacing", "pixels"),
                                     ("pixel_size", "pixel_size", "--pixel-size", "mm")):
        value, recorded = getattr(g, field), params.get(key, 1.0)
        if value is not None and not _close(value, recorded):
            raise _contradiction(path, f"a {option[2:].replace('-', ' ')} of {recorded:g} {unit}", f"{option} says {value:g}")
    if g.filter is not None:  # how to reconstruct: the FBP window
        params["filter"] = g.filter


# --- mri ----------------------------------------------------------------------------------


def _mri_options(path: Path, params: dict[str, Any], data: np.ndarray, g: GeometryOptions) -> None:
    if g.coils is not None:
        if g.coils < 1:
            raise InputError(f"--coils must be at least 1, got {g.coils}.")
        if data.ndim == 4 and data.shape[1] != g.coils:
            raise _contradiction(path, f"k-space from {data.shape[1]} coil(s)", f"--coils says {g.coils}")
    mask = params.get("mask")
    if isinstance(mask, np.ndarray) and mask.ndim in (1, 2) and mask.size:
        _check_mask_options(path, mask > 0, g)
    if g.complex_image:  # how to reconstruct: a complex image model
        hw = _image_hw(params)
        if hw is not None:
            params["image_shape"] = [2, *hw]


def _mask_lines(sampled: np.ndarray) -> np.ndarray | None:
    """The sampled phase-encode lines (columns) of a line mask; None for a 2-D mask."""
    if sampled.ndim == 1:
        return sampled
    if (sampled == sampled[:1]).all():
        return sampled[0]
    return None


def _check_mask_options(path: Path, sampled: np.ndarray, g: GeometryOptions) -> None:
    """--acceleration, --center-fraction and --mask against the file's mask (True: sampled)."""
    from invdiff.operators.masks import MASK_KINDS, _check_acceleration, _check_center_fraction

    lines = _mask_lines(sampled)
    if g.mask is not None:
        if g.mask not in MASK_KINDS:
            raise InputError(f"unknown --mask '{g.mask}'; choose one of {', '.join(MASK_KINDS)}.")
        if not _mask_kind_agrees(g.mask, lines):
            kind = "a 2-D (Poisson-disc) mask" if lines is None else (
                "a mask of phase-encode lines" + ("" if _evenly_spaced(lines) else " that are not evenly spaced"))
            raise _contradiction(path, kind, f"--mask says {g.mask}")
    if g.acceleration is None and g.center_fraction is None:
        return
    acceleration = None if g.acceleration is None else _check_acceleration(g.acceleration)
    center = None if g.center_fraction is None else _check_center_fraction(g.center_fraction)
    if acceleration is not None:
        default_center = 0.08 if acceleration <= 4 else 0.04
        if not _acceleration_agrees(sampled, lines, acceleration, default_center if center is None else center):
            raise _contradiction(path, _sampling_text(sampled, lines), f"--acceleration says {acceleration:g}")
    if center is not None and not _centre_agrees(sampled, lines, center):
        raise _contradiction(path, f"a mask whose centre {_centre_text(sampled, lines)}",
                             f"--center-fraction {center:g} says it is sampled over {_centre_wanted(sampled, lines, center)}")


def _mask_kind_agrees(kind: str, lines: np.ndarray | None) -> bool:
    """random: any line mask; equispaced: a line mask whose lines outside the centre are evenly
    spaced; poisson: a 2-D mask. (A random mask may happen to look evenly spaced: one mask
    cannot tell the two line kinds apart for certain.)"""
    if kind == "poisson":
        return lines is None
    return lines is not None and (kind == "random" or _evenly_spaced(lines))


def _centre_run(lines: np.ndarray) -> tuple[int, int]:
    """``[start, stop)`` of the run of sampled lines through the centre line ``W // 2``."""
    middle = lines.size // 2
    if not lines[middle]:
        return middle, middle
    start, stop = middle, middle + 1
    while start > 0 and lines[start - 1]:
        start -= 1
    while stop < lines.size and lines[stop]:
        stop += 1
    return start, stop


def _evenly_spaced(lines: np.ndarray) -> bool:
    """True when the sampled lines on each side of the centre run are evenly spaced (gaps
    within one line of each other, as fastMRI's rounded equispaced lines are)."""
    start, stop = _centre_run(lines)
    index = np.flatnonzero(lines)
    for side in (index[index < start], index[index >= stop]):
        gaps = np.diff(side)
        if gaps.size and gaps.max() - gaps.min() > 1:
            return False
    return True


def _acceleration_agrees(sampled: np.ndarray, lines: np.ndarray | None, acceleration: float, center: float) -> bool:
    """Whether the file's mask could have been drawn at ``acceleration``: a 2-D mask within
    15 % (Poisson-disc sampling meets its target within a few per cent); a line mask within
    3.5 standard deviations (plus one line) of fastMRI's random line count, whose mean is
    ``W / acceleration`` (a true acceleration falls outside about once in 2000 masks; at
    W = 128, 4x and 8x are told apart)."""
    if lines is None:
        achieved = sampled.size / max(int(sampled.sum()), 1)
        return abs(achieved - acceleration) <= 0.15 * acceleration
    from invdiff.operators.masks import center_lines

    width = lines.size
    _, num_low = center_lines(width, center)
    expected = max(width / acceleration, num_low)
    p = min(max((width / acceleration - num_low) / max(width - num_low, 1), 0.0), 1.0)
    spread = math.sqrt((width - num_low) * p * (1 - p))
    return abs(int(lines.sum()) - expected) <= 3.5 * spread + 1


def _sampling_text(sampled: np.ndarray, lines: np.ndarray | None) -> str:
    if lines is None:
        count, total = int(sampled.sum()), sampled.size
        return f"a mask that samples {count} of {total} k-space points (acceleration {total / max(count, 1):.3g})"
    count = int(lines.sum())
    return f"a mask that samples {count} of {lines.size} lines (acceleration {lines.size / max(count, 1):.3g})"


def _centre_box(shape: tuple[int, int], center: float) -> tuple[slice, slice]:
    """The fully sampled calibration box of a Poisson-disc mask (invdiff.operators.masks)."""
    height, width = shape
    ch, cw = (max(int(round(center * n)), 1 if center > 0 else 0) for n in (height, width))
    cy, cx = height // 2, width // 2
    return slice(cy - ch // 2, cy - ch // 2 + ch), slice(cx - cw // 2, cx - cw // 2 + cw)


def _centre_agrees(sampled: np.ndarray, lines: np.ndarray | None, center: float) -> bool:
    """Whether every line (or point) that ``--center-fraction`` always samples is sampled."""
    if lines is None:
        return bool(sampled[_centre_box(sampled.shape, center)].all())
    from invdiff.operators.masks import center_lines

    pad, num_low = center_lines(lines.size, center)
    return bool(lines[pad : pad + num_low].all())


def _centre_text(sampled: np.ndarray, lines: np.ndarray | None) -> str:
    if lines is None:
        return "is not fully sampled"
    start, stop = _centre_run(lines)
    return f"is fully sampled over {stop - start} of {lines.size} lines"


def _centre_wanted(sampled: np.ndarray, lines: np.ndarray | None, center: float) -> str:
    if lines is None:
        rows, cols = _centre_box(sampled.shape, center)
        return f"a {rows.stop - rows.start}x{cols.stop - cols.start} box"
    from invdiff.operators.masks import center_lines

    return f"{center_lines(lines.size, center)[1]} lines"


# --- blur ---------------------------------------------------------------------------------


def _blur_options(path: Path, params: dict[str, Any], g: GeometryOptions) -> None:
    if g.psf is not None:
        from invdiff.operators.psf import parse_psf_spec

        wanted = parse_psf_spec(g.psf)
        recorded = params.get("psf")
        if isinstance(recorded, np.ndarray) and recorded.ndim == 2 and not _same_psf(recorded, wanted):
            (h, w), (wh, ww) = recorded.shape, wanted.shape
            raise _contradiction(path, f"a {h}x{w} PSF", f"--psf {g.psf} gives a different {wh}x{ww} one")
    if g.boundary is not None:  # how to reconstruct: the model of what lies outside the image
        params["boundary"] = g.boundary


def _same_psf(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal PSFs once both sum to 1 and are zero-padded about their centres to one size."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    if not (np.isfinite(a).all() and a.sum() > 0):
        return True  # not a PSF at all: building the operator says so
    a, b = a / a.sum(), b / b.sum()
    shape = tuple(max(m, n) for m, n in zip(a.shape, b.shape))

    def pad(x: np.ndarray) -> np.ndarray:
        return np.pad(x, [((s - n) // 2, s - n - (s - n) // 2) for s, n in zip(shape, x.shape)])

    return bool(np.allclose(pad(a), pad(b), rtol=1e-3, atol=1e-6 * float(b.max())))
