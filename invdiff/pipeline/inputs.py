"""Reading measurements for `reconstruct`: invdiff and fastMRI HDF5 files and raw Siemens
data files (``.dat``) as they are, and foreign sinograms / blurred images in NPY/TIFF whose
geometry comes from the command line."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np

from invdiff.errors import InputError
from invdiff.io.hdf5 import Measurement, read_measurement
from invdiff.pipeline.geometry import GeometryOptions, operator_params

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


def _geometry_given(g: GeometryOptions) -> bool:
    return any(getattr(g, f.name) not in (None, False) for f in fields(g) if f.name != "operator_params") or bool(
        g.operator_params
    )


def _read_array(path: Path, key: str | None) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{path}: file does not exist.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty.")
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            import tifffile

            data = tifffile.imread(path)
    except Exception as exc:  # numpy/tifffile raise many types for corrupt files
        raise InputError(f"{path}: cannot be read as {path.suffix.lower()[1:].upper()} ({exc.__class__.__name__}).") from None
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    return data


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
    """A Measurement from ``path``; command-line geometry supplies or overrides the file's."""
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES + RAW_SUFFIXES:
        m = read_measurement_file(path)
        if operator is not None and operator != m.operator["name"]:
            raise InputError(f"{path}: holds a {m.operator['name']} measurement, not {operator}.")
        if geometry.operator_params:
            import json

            m.operator["params"].update(json.loads(geometry.operator_params))
        return m
    if suffix not in ARRAY_SUFFIXES:
        raise InputError(f"{path}: unsupported measurement file type '{suffix}' (use .h5, .dat (Siemens raw data), .npy or .tif).")
    if operator is None:
        raise InputError(f"{path}: a foreign {suffix} measurement needs --operator and its geometry options.")
    data = _read_array(path, key)
    if operator == "radon":
        if data.ndim != 3:
            raise InputError(f"{path}: a sinogram must be (views, detectors) or (slices, views, detectors).")
        n = image_size or int(math.floor(data.shape[2] / math.sqrt(2)))
        if geometry.views is None and geometry.angles is None:
            geometry.views = data.shape[1]
        if geometry.detectors is None:
            geometry.detectors = data.shape[2]
        hw = (n, n)
        data = data.astype(np.float32)
    elif operator == "blur":
        hw = data.shape[1:]
        data = data.astype(np.float32)
    else:
        raise InputError(f"{path}: {operator} measurements must come as HDF5 files.")
    params = operator_params(operator, hw, geometry, seed)
    params.setdefault("noise", {"kind": "none"})
    return Measurement(data=data, operator={"name": operator, "params": params}, attrs={"source": str(path)}, source=path)
