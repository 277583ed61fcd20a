"""Operator descriptions from command-line options (shared by simulate and reconstruct).

The built-in operators have named options (DESIGN.md section 1, the operators issue):
radon: --views / --angles, --detectors, --detector-spacing, --pixel-size, --filter;
mri: --acceleration, --center-fraction, --mask, --coils, --complex;
blur: --psf, --boundary. A plug-in operator takes its params as JSON (--operator-params),
which also overrides any built-in parameter.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from invdiff.errors import InputError


@dataclass
class GeometryOptions:
    """Every operator option the CLI knows; None means "not given"."""

    views: int | None = None
    angles: str | None = None
    detectors: int | None = None
    detector_spacing: float | None = None
    pixel_size: float | None = None
    filter: str | None = None
    acceleration: float | None = None
    center_fraction: float | None = None
    mask: str | None = None
    coils: int | None = None
    complex_image: bool = False
    psf: str | None = None
    boundary: str | None = None
    operator_params: str | None = None


def parse_angles(text: str) -> list[float]:
    """Angles in degrees: a comma list ``0,10,20`` or a range ``START:STOP:N`` (N angles in
    [START, STOP), e.g. ``0:120:60`` for a limited-angle scan)."""
    try:
        if ":" in text:
            start, stop, n = text.split(":")
            n_int = int(n)
            if n_int < 1:
                raise InputError(f"--angles '{text}': the number of angles must be at least 1.")
            return list(np.linspace(float(start), float(stop), n_int, endpoint=False))
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--angles '{text}' is neither a comma list of degrees nor START:STOP:N.") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"--angles '{text}' gives no finite angles.")
    return values


def _json_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise InputError(f"--operator-params is not valid JSON ({exc}).") from None
    if not isinstance(params, dict):
        raise InputError("--operator-params must be a JSON object.")
    return params


#: GeometryOptions field -> (its command-line flag, the built-in operator it belongs to)
OPTION_OPERATOR = {
    "views": ("--views", "radon"), "angles": ("--angles", "radon"), "detectors": ("--detectors", "radon"),
    "detector_spacing": ("--detector-spacing", "radon"), "pixel_size": ("--pixel-size", "radon"),
    "filter": ("--filter", "radon"),
    "acceleration": ("--acceleration", "mri"), "center_fraction": ("--center-fraction", "mri"),
    "mask": ("--mask", "mri"), "coils": ("--coils", "mri"), "complex_image": ("--complex", "mri"),
    "psf": ("--psf", "blur"), "boundary": ("--boundary", "blur"),
}


def given_options(opts: GeometryOptions) -> list[str]:
    """The GeometryOptions fields set on the command line (``--operator-params`` aside)."""
    return [field for field in OPTION_OPERATOR if getattr(opts, field) not in (None, False)]


def check_options_fit(name: str, opts: GeometryOptions) -> None:
    """InputError for a named option of another operator (``--acceleration`` with radon):
    it would be ignored, and a run that silently ignores what it was told is wrong in a way
    nobody sees. A plug-in operator takes only ``--operator-params``."""
    for field in given_options(opts):
        flag, owner = OPTION_OPERATOR[field]
        if owner != name:
            where = f"the {name} operator" if name in ("radon", "mri", "blur") else (
                f"the plug-in operator '{name}', which takes its parameters as --operator-params JSON")
            raise InputError(f"{flag} is an option of the {owner} operator, not of {where}.")


def operator_params(name: str, image_hw: tuple[int, int], opts: GeometryOptions, seed: int) -> dict[str, Any]:
    """The ``params`` of operator ``name`` for images of size ``image_hw`` (noise excluded);
    InputError for an option of another operator (check_options_fit)."""
    check_options_fit(name, opts)
    h, w = image_hw
    if name == "radon":
        params: dict[str, Any] = {"image_shape": [1, h, w]}
        if opts.angles is not None and opts.views is not None:
            raise InputError("give either --views or --angles, not both.")
        if opts.angles is not None:
            params["angles_deg"] = parse_angles(opts.angles)
        else:
            views = 180 if opts.views is None else opts.views
            if views < 1:
                raise InputError(f"--views must be at least 1, got {views}.")
            params["angles_deg"] = list(np.linspace(0.0, 180.0, views, endpoint=False))
        for key, value in (
            ("detectors", opts.detectors),
            ("spacing", opts.detector_spacing),
            ("pixel_size", opts.pixel_size),
            ("filter", opts.filter),
        ):
            if value is not None:
                params[key] = value
    elif name == "mri":
        from invdiff.operators.masks import make_mask

        acceleration = 4.0 if opts.acceleration is None else opts.acceleration
        center = opts.center_fraction
        if center is None:
            center = 0.08 if acceleration <= 4 else 0.04
        # fastMRI's masks draw from numpy's RandomState, which takes 32-bit seeds: a larger
        # --seed is folded into that range, as train folds it for numpy (the same below 2**32)
        mask = make_mask(opts.mask or "random", (h, w), acceleration, center, seed % 2**32)
        params = {"image_shape": [2 if opts.complex_image else 1, h, w], "mask": np.asarray(mask, np.float32)}
        coils = 1 if opts.coils is None else opts.coils
        if coils < 1:
            raise InputError(f"--coils must be at least 1, got {coils}.")
        if coils > 1:
            from invdiff.operators.coils import birdcage_maps

            params["coil_maps"] = np.asarray(birdcage_maps(coils, h, w), np.complex64)
    elif name == "blur":
        from invdiff.operators.psf import parse_psf_spec

        params = {"image_shape": [1, h, w], "psf": parse_psf_spec(opts.psf or "gaussian:2")}
        if opts.boundary is not None:
            params["boundary"] = opts.boundary
    else:
        params = {"image_shape": [1, h, w]}
    params.update(_json_params(opts.operator_params))
    return params


def poisson_kind(name: str) -> str | None:
    """Which Poisson model --photons selects for an operator (None: not available)."""
    return {"radon": "transmission", "blur": "poisson_gaussian"}.get(name)
