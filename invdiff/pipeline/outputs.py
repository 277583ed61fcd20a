"""Writing a reconstruction: HDF5 result, optional DICOM series and PNG preview, provenance."""

from __future__ import annotations

import contextlib
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

import invdiff
from invdiff.io.hdf5 import Measurement, write_result
from invdiff.operators.base import config_to_json


def provenance(m: Measurement, info: dict[str, Any], *, seed: int, device: str, prior=None) -> dict[str, Any]:
    """The ``invdiff_provenance`` record (DESIGN.md section 2)."""
    text, arrays = config_to_json(m.operator)
    import json

    record = {
        "invdiff_version": invdiff.__version__,
        "command_line": shlex.join(["invdiff", *sys.argv[1:]]),
        "input": str(m.source) if m.source else None,
        "operator": _summarised(json.loads(text), arrays),
        # the reconstruction's units (the measurement's attrs): "mu_per_mm" for a CT DICOM in HU
        # that simulate converted, which evaluate needs to compare with that DICOM
        "units": str(m.attrs.get("units", "image")),
        "seed": seed,
        "device": device,
        "python": platform.python_version(),
        **info,
    }
    if prior is not None:
        path = getattr(prior, "path", None)
        record["prior"] = {"path": str(path) if path else "", "checksum": getattr(prior, "checksum", None),
                           "network_dtype": getattr(prior, "network_dtype", "float32")}
    return record


def _summarised(config: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``config`` (from `config_to_json`) with each ``{"$array": path}`` reference replaced by
    the array's summary ``{"array": path, "shape", "dtype", "sha256"}``: the result file holds
    no copy of the operator's arrays (a mask, a PSF, coil maps), so the provenance must not
    point at datasets it lacks; the checksum still identifies the array used."""
    import hashlib

    if isinstance(config, dict):
        if set(config) == {"$array"} and config["$array"] in arrays:
            a = np.ascontiguousarray(arrays[config["$array"]])
            return {"array": config["$array"], "shape": list(a.shape), "dtype": str(a.dtype),
                    "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
        return {k: _summarised(v, arrays) for k, v in config.items()}
    if isinstance(config, list):
        return [_summarised(v, arrays) for v in config]
    return config


def dicom_modality(operator_name: str) -> str:
    return {"radon": "CT", "mri": "MR"}.get(operator_name, "OT")


def write_outputs(
    m: Measurement,
    reconstruction: np.ndarray,
    std: np.ndarray | None,
    samples: np.ndarray | None,
    record: dict[str, Any],
    *,
    out: Path,
    dicom_dir: Path | None = None,
    png: Path | None = None,
) -> None:
    """Write the HDF5 result with its optional DICOM series and PNG preview, all or none.

    The PNG and the HDF5 result are written to temporary files first, then the DICOM series
    (atomically, on its own), and only then are the PNG and, last, the result renamed into
    place, so a result file on disk means the whole job finished. A failure at any point
    leaves none of this run's outputs: the temporaries are removed, and so is a DICOM series
    written before a failing rename (see `_remove_series`). A fastMRI input's results are the
    centre of the image at its targets' size (``fastmri_crop``, invdiff/io/fastmri.py), as a
    fastMRI submission is; the provenance records the crop. A DICOM source's carried attributes
    that are not valid DICOM are left out of the series (invdiff.io.dicom_meta.left_out); the
    provenance names them (``dicom_source_left_out``: keyword -> why)."""
    from invdiff.io.atomic import atomic_paths

    crop = m.attrs.get("fastmri_crop")
    if crop:
        from invdiff.io.fastmri import center_crop

        shape = (int(crop[0]), int(crop[1]))
        reconstruction = center_crop(reconstruction, shape)
        std = None if std is None else center_crop(std, shape)
        samples = None if samples is None else center_crop(samples, shape)
        record["fastmri_crop"] = list(shape)
    if dicom_dir is not None:
        from invdiff.io.dicom_meta import left_out

        dropped = left_out(m.attrs.get("source_dicom"))
        if dropped:
            record["dicom_source_left_out"] = dropped
    dicom_existed = dicom_dir is not None and dicom_dir.exists()
    written: list[Path] = []
    try:
        with atomic_paths([*([png] if png is not None else []), out]) as temps:
            if png is not None:
                _write_png(temps[0], m, reconstruction, std)
            write_result(temps[-1], reconstruction, std=std, samples=samples, provenance=record)
            if dicom_dir is not None:
                written = _write_dicom(dicom_dir, m, reconstruction, record)
    except BaseException:
        _remove_series(dicom_dir, written, dicom_existed)
        raise


def _write_png(path: Path, m: Measurement, reconstruction: np.ndarray, std: np.ndarray | None) -> None:
    """The PNG preview: the reconstruction (magnitude), its std and the ground truth if known."""
    from invdiff.io.png import save_preview

    image = np.abs(reconstruction) if np.iscomplexobj(reconstruction) else reconstruction
    reference = m.ground_truth
    if reference is not None and np.iscomplexobj(reference):
        reference = np.abs(reference)
    save_preview(path, image, std=std, reference=reference)


def _write_dicom(dicom_dir: Path, m: Measurement, reconstruction: np.ndarray, record: dict[str, Any]) -> list[Path]:
    """The reconstruction as a DICOM series in ``dicom_dir`` (HU for a CT input in HU); returns its files."""
    from invdiff.io.dicom import mu_to_hu, write_dicom_series
    from invdiff.io.dicom_meta import meta_from_json

    image = np.abs(reconstruction) if np.iscomplexobj(reconstruction) else reconstruction
    modality = dicom_modality(m.operator["name"])
    units = "HU" if m.attrs.get("hounsfield") else "arbitrary"
    if units == "HU":
        image = mu_to_hu(image)
    pixel = m.operator["params"].get("pixel_size")
    spacing = m.attrs.get("spacing_mm") or [None, None, None]
    if spacing[1] and spacing[2]:  # the source image's (row, column) spacing
        pixel_spacing = (spacing[1], spacing[2])
    else:
        pixel_spacing = (pixel, pixel) if pixel else None
    return write_dicom_series(
        dicom_dir,
        image,
        modality=modality,
        source_meta=meta_from_json(m.attrs.get("source_dicom")),
        description=f"invdiff {record.get('solver') or record.get('method')}",
        units=units,
        pixel_spacing=pixel_spacing,
        slice_spacing=spacing[0],  # from the source's slice positions; its thickness comes with source_meta
        overwrite=True,
    )


def _remove_series(dicom_dir: Path | None, written: list[Path], existed: bool) -> None:
    """Undo a DICOM series this run wrote: remove its files, and the folder if this run made it
    and nothing else is in it (best effort; nothing else is touched)."""
    if dicom_dir is None or not written:
        return
    for path in written:
        with contextlib.suppress(OSError):
            path.unlink()
    if not existed:
        with contextlib.suppress(OSError):
            dicom_dir.rmdir()
