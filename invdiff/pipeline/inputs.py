"""Reading measurements for `reconstruct`: invdiff and fastMRI HDF5 files and raw Siemens
data files (``.dat``) as they are, and foreign sinograms / blurred images in NPY/TIFF whose
geometry comes from the command line."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from invdiff.errors import InputError, naming
from invdiff.io.hdf5 import Measurement, check_radon_geometry, read_measurement
from invdiff.pipeline.file_geometry import apply_options
from invdiff.pipeline.geometry import GeometryOptions, _json_params, operator_params

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ARRAY_SUFFIXES = (".npy", ".tif", ".tiff")
RAW_SUFFIXES = (".dat",)

def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the measurement files directly inside them."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in HDF5_SUFFIXES + ARRAY_SUFFIXES + RAW_SUFFIXES)
            if not found:
                raise InputError(f"{p}: folder holds no .h5/.dat/.npy/.tif measurement files.")
            out.extend(found)
        else:
            out.append(p)
    return out


def read_measurement_file(path: Path) -> Measurement:
    """The measurement in an invdiff/fastMRI HDF5 file or a Siemens raw data file (``.dat``)."""
    if path.suffix.lower() in RAW_SUFFIXES:
        from invdiff.io.twix_measurement import measurement_from_twix

        return measurement_from_twix(path)
    return read_measurement(path)


def load_measurement(
    path: Path,
    *,
    operator: str | None,
    geometry: GeometryOptions,
    image_size: int | None = None,
    key: str | None = None,
    seed: int = 0,
) -> Measurement:
    """A Measurement from ``path``; command-line geometry supplies or overrides the file's.

    A foreign .npy/.tif sinogram or blurred image has no geometry of its own: ``operator``
    and the geometry options describe it.

    An HDF5 or .dat file records its geometry; the options are checked against it, and
    those that are reconstruction choices applied, by the rule of
    invdiff.pipeline.file_geometry.

    ``key`` is accepted for symmetry with the image readers; NPY/TIFF measurements have none.
    """
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES + RAW_SUFFIXES:
        m = read_measurement_file(path)
        if operator is not None and operator != m.operator["name"]:
            raise InputError(f"{path}: holds a {m.operator['name']} measurement, not {operator}.")
        m.operator["params"].update(_json_params(geometry.operator_params))
        apply_options(path, m, geometry, image_size)
        return m
    if suffix not in ARRAY_SUFFIXES:
        raise InputError(f"{path}: unsupported measurement file type '{suffix}' (use .h5, .dat (Siemens raw data), .npy or .tif).")
    if operator is None:
        raise InputError(f"{path}: a foreign {suffix} measurement needs --operator and its geometry options.")
    return _foreign_measurement(path, operator, geometry, image_size, seed)


# ---------------------------------------------------------------------------------------
# foreign .npy / .tif measurements
# ---------------------------------------------------------------------------------------

#: what a foreign measurement of each operator is, and the layouts it may come in
_FOREIGN = {
    "radon": ("sinogram", "(views, detectors) or (slices, views, detectors)"),
    "blur": ("blurred image", "(H, W) or a stack (slices, H, W)"),
}


def _foreign_measurement(
    path: Path, operator: str, geometry: GeometryOptions, image_size: int | None, seed: int
) -> Measurement:
    """A sinogram or blurred image from an NPY/TIFF file, its geometry from the options."""
    if operator not in _FOREIGN:
        from invdiff.operators.base import get_operator_class

        with naming(path):
            get_operator_class(operator)  # an unknown name: say so, with the choices
        raise InputError(f"{path}: {operator} measurements must come as HDF5 files.")
    from invdiff.io.images import read_array

    what, layout = _FOREIGN[operator]
    data = read_array(path)
    if np.iscomplexobj(data):
        raise InputError(f"{path}: holds complex values, but a {what} for the {operator} operator is real.")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise InputError(f"{path}: a {what} must be {layout}; got shape {data.shape}.")
    if data.size == 0:
        raise InputError(f"{path}: the {what} is empty (shape {data.shape}).")
    if operator == "blur" and geometry.psf is None and "psf" not in _json_params(geometry.operator_params):
        raise InputError(f"{path}: a blurred image in a {path.suffix.lower()} file carries no PSF; give the one it was "
                         "blurred with, --psf gaussian:SIGMA_PX, airy:WAVELENGTH_NM,NA,PIXEL_NM or FILE.tif.")
    if operator == "radon":
        n = image_size or int(math.floor(data.shape[2] / math.sqrt(2)))
        if n < 1:
            raise InputError(f"{path}: {data.shape[2]} detector bin(s) are too few to infer the image size; give --image-size.")
        views = data.shape[1] if geometry.views is None and geometry.angles is None else geometry.views
        detectors = data.shape[2] if geometry.detectors is None else geometry.detectors
        geometry = replace(geometry, views=views, detectors=detectors)  # the caller's stays as given (a batch shares it)
        hw = (n, n)
    else:
        hw = data.shape[1:]
        if image_size is not None and (image_size, image_size) != hw:
            raise InputError(f"{path}: --image-size {image_size} does not fit the {hw[0]}x{hw[1]} {what}.")
    params = operator_params(operator, hw, geometry, seed)
    if operator == "radon":
        check_radon_geometry(path, params)
    params.setdefault("noise", {"kind": "none"})
    data = data.astype(np.float32)
    return Measurement(data=data, operator={"name": operator, "params": params}, attrs={"source": str(path)}, source=path)
