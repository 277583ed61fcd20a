"""Quality of a result against a reference image, and its data residual (`invdiff evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from invdiff import metrics
from invdiff.errors import InputError
from invdiff.io.hdf5 import Measurement, read_array, read_measurement, reading
from invdiff.io.images import read_images


def load_reference(path: Path, key: str | None = None, *, axis: int = 2, units: str | None = None,
                   allow_rgb: bool = False, volume: int | None = None, series: str | None = None,
                   channel: int | None = None) -> tuple[np.ndarray, Measurement | None]:
    """The reference volume ``(slices, H, W)``: a simulated measurement's ``ground_truth``,
    a fastMRI file's target (``reconstruction_esc`` single-coil, ``reconstruction_rss``
    multi-coil), an HDF5 result's ``reconstruction``, or any image file or DICOM series folder
    read by the rules of ``invdiff simulate`` (invdiff/io/images.py; ``axis`` slices a NIfTI
    volume; ``allow_rgb``, ``volume``, ``series``, ``channel`` as in `read_images`).
    ``units`` are the result's (its provenance's ``units``): for ``"mu_per_mm"`` a CT DICOM
    reference in HU is converted to linear attenuation in 1/mm (``hu_to_mu``), as simulate
    converted the image it measured. Returns the measurement too when the reference is one."""
    if path.is_file() and path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        if volume is not None or series is not None or channel is not None:
            option = "--volume" if volume is not None else "--series" if series is not None else "--channel"
            raise InputError(f"{path}: {option} picks part of a NIfTI, DICOM or colour image, not of an HDF5 file.")
        with reading(path) as f:
            is_measurement = "invdiff_operator" in f.attrs
            from invdiff.io import fastmri

            if not is_measurement and key is None and fastmri.is_fastmri(f):
                target = fastmri.reference_image(fastmri.read_fastmri(path))
                if target is None:
                    raise InputError(f"{path}: this fastMRI file holds no target (reconstruction_esc or "
                                     "reconstruction_rss) to compare with; give --reference.")
                return target, None
            if not is_measurement and key is None and "reconstruction" in f:
                data = read_array(f, "reconstruction", path)
                data = data[None] if data.ndim == 2 else data
                if data.ndim != 3:
                    raise InputError(f"{path}: dataset 'reconstruction' has shape {data.shape}; expected (slices, H, W).")
                return data, None
        if is_measurement:
            m = read_measurement(path)
            if key is not None:  # another of its datasets as the reference; still the measurement for the residual
                return read_images(path, key=key, axis=axis).data, m
            if m.ground_truth is None:
                raise InputError(f"{path}: this measurement has no 'ground_truth' dataset to compare with.")
            return m.ground_truth, m
    stack = read_images(path, key=key, axis=axis, allow_rgb=allow_rgb, volume=volume, series=series,
                        channel=channel)
    if stack.hounsfield and units == "mu_per_mm":
        from invdiff.io.dicom import hu_to_mu

        return hu_to_mu(stack.data), None
    return stack.data, None


def reference_path(result: Path, provenance: dict[str, Any], reference: Path | None) -> Path:
    """``reference`` when given, else the result's input file (a simulated measurement holds its
    ground truth); InputError when that file is gone."""
    if reference is not None:
        return reference
    source = provenance.get("input") if isinstance(provenance, dict) else None
    if source is not None and not isinstance(source, str):
        raise InputError(f"{result}: the result's provenance is damaged ('input' must be a file name, got {source!r}).")
    if not source or not Path(source).exists():
        raise InputError(f"{result}: give --reference; the result's input file is not available to take the ground truth from.")
    return Path(source)


def result_units(provenance: dict[str, Any], measurement: Measurement | None = None) -> str | None:
    """The units of a result's reconstruction: its provenance's ``units`` (recorded since
    2026-12-07), else those of the measurement it came from when that is given."""
    units = provenance.get("units") if isinstance(provenance, dict) else None
    if units is None and measurement is not None:
        units = measurement.attrs.get("units")
    return str(units) if units is not None else None


def reference_volume(reference: np.ndarray) -> np.ndarray:
    """A reference as the ``(slices, H, W)`` magnitude volume results are compared with."""
    ref = np.abs(reference) if np.iscomplexobj(reference) else reference
    return ref[None] if ref.ndim == 2 else ref


def data_residual(m: Measurement, reconstruction: np.ndarray) -> dict[str, float]:
    """||A x - y|| / ||y|| and the discrepancy ratio ||A x - y||^2 / E||noise||^2 (about 1 for a
    reconstruction that fits the data to the noise level; Morozov's discrepancy principle)."""
    from invdiff.pipeline.reconstruct import slice_operators
    from invdiff.pipeline.simulate import image_tensor
    from invdiff.solvers.likelihood import expected_misfit, measured_residual, on_measured

    op_for = slice_operators(m, "cpu", torch.float64)
    source = m.source or "measurement"
    if reconstruction.shape[0] != m.data.shape[0]:
        raise InputError(f"{source}: holds {m.data.shape[0]} slice(s) but the reconstruction has {reconstruction.shape[0]}.")
    num = den = expected = 0.0
    for i in range(m.data.shape[0]):
        op = op_for(i)
        if tuple(reconstruction.shape[1:]) != tuple(op.image_shape[1:]):
            raise InputError(f"{source}: the {op.name} operator's images are {op.image_shape[1]}x{op.image_shape[2]} "
                             f"but the reconstruction's are {reconstruction.shape[1]}x{reconstruction.shape[2]}.")
        x = image_tensor(reconstruction[i : i + 1], op.image_shape[0])
        y = torch.from_numpy(np.asarray(m.data[i : i + 1]))
        y = y.to(torch.complex128) if y.is_complex() else y.double()
        r = measured_residual(op, x, y)  # unmeasured entries (outside an MRI mask) hold no data
        num += float((r.abs() ** 2).sum())
        den += float((on_measured(op, y).abs() ** 2).sum())
        expected += expected_misfit(op, y)
    out = {"residual": float(np.sqrt(num / den)) if den > 0 else float("nan")}
    out["discrepancy_ratio"] = num / expected if expected > 1e-9 * max(num, 1e-30) else float("nan")
    return out


def evaluate(result: dict[str, Any], reference: np.ndarray, *, data_range: float | None, m: Measurement | None) -> dict[str, Any]:
    """PSNR / SSIM / NMSE (fastMRI definitions), coverage of the std, residual."""
    rec = result["reconstruction"]
    ref = reference_volume(reference)
    if ref.shape != rec.shape:
        raise InputError(f"the reference has shape {ref.shape} but the reconstruction has {rec.shape}.")
    rng = metrics.data_range_of(ref, data_range)
    out: dict[str, Any] = {
        "psnr": metrics.psnr(ref, rec, rng),
        "ssim": metrics.ssim(ref, rec, rng),
        "nmse": metrics.nmse(ref, rec),
        "data_range": rng,
        "psnr_per_slice": metrics.psnr_per_slice(ref, rec, rng),
        "ssim_per_slice": metrics.ssim_per_slice(ref, rec, rng),
    }
    if result.get("std") is not None and np.any(result["std"]):
        out["coverage_2std"] = metrics.coverage(ref, rec, result["std"], 2.0)
        prov = result.get("provenance") or {}
        k = prov.get("samples")
        # the Student-t interval is for the plain sample std; a calibrated std is scaled already
        if isinstance(k, int) and not isinstance(k, bool) and k >= 2 and not prov.get("calibration"):
            out["coverage_pred95"] = metrics.predictive_coverage(ref, rec, result["std"], k)
    if m is not None and not (result.get("provenance") or {}).get("fastmri_crop"):
        x = result.get("reconstruction_complex")
        out.update(data_residual(m, x if x is not None else rec))  # (a cropped image has no residual)
    return out
