"""``invdiff info``: what a measurement, result, prior, DICOM file or series folder, or image file
holds (a folder of several DICOM series: which; a 4-D NIfTI: how many volumes); and what
operators, solvers and classical methods are registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from invdiff.cli.app import app
from invdiff.cli.common import AcceptedDeviceOpt, AcceptedSeedOpt, JsonOpt, QuietOpt, check_device, emit_json
from invdiff.errors import InputError


def _array_summary(a: np.ndarray) -> dict[str, Any]:
    """Shape, dtype, finiteness and range: ``min``/``max`` of real data (signed: HU go down to
    -1000), ``abs_min``/``abs_max`` of the magnitude of complex data (k-space)."""
    out: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size and np.issubdtype(a.dtype, np.number):
        finite = bool(np.isfinite(a).all())
        if np.iscomplexobj(a):
            mag = np.abs(a)
            out.update(abs_min=float(np.nanmin(mag)), abs_max=float(np.nanmax(mag)), finite=finite)
        else:
            out.update(min=float(np.nanmin(a)), max=float(np.nanmax(a)), finite=finite)
    return out


def describe_file(path: Path) -> dict[str, Any]:
    """A JSON-able description of ``path`` (InputError when it is none of the known kinds)."""
    if not path.exists():
        raise InputError(f"{path}: file does not exist.")
    if path.is_dir() and (path / "config.json").exists():
        from invdiff.prior.store import load_prior

        prior = load_prior(path, device="cpu")
        return {"kind": "prior", "path": str(path), "checksum": prior.checksum, "config": prior.config}
    if path.is_dir():
        from invdiff.io.images import is_dicom_folder

        if not is_dicom_folder(path):
            raise InputError(f"{path}: folder is neither a prior (no config.json) nor a DICOM series (no DICOM files).")
        from invdiff.io import dicom
        from invdiff.io.images import dicom_files

        groups = dicom.group_dicom_series(dicom_files(path))
        if len(groups) > 1:  # what --series can pick
            return {"kind": "DICOM folder of several series (pick one with --series)", "path": str(path),
                    "series": [dicom.series_summary(files) for files in groups]}
    suffix = path.suffix.lower()
    if suffix == ".json":
        import dataclasses

        from invdiff.pipeline.calibration import read_calibration

        return {"kind": "calibration", "path": str(path), **dataclasses.asdict(read_calibration(path))}
    if suffix in (".h5", ".hdf5", ".hdf"):
        from invdiff.io.hdf5 import read_measurement, read_result, reading

        with reading(path) as f:
            keys = sorted(f.keys())
            is_measurement = "invdiff_operator" in f.attrs or "kspace" in f
            is_result = "reconstruction" in f and "kspace" not in f
        if is_result:
            r = read_result(path)
            out = {"kind": "result", "path": str(path), "datasets": keys, "provenance": r["provenance"]}
            out["reconstruction"] = _array_summary(r["reconstruction"])
            return out
        if is_measurement:
            return _describe_measurement(path, read_measurement(path))
        return {"kind": "hdf5", "path": str(path), "datasets": keys}
    from invdiff.pipeline.inputs import RAW_SUFFIXES, read_measurement_file

    if suffix in RAW_SUFFIXES:  # Siemens raw data (twix): what `invdiff reconstruct` would read from it
        return _describe_measurement(path, read_measurement_file(path))
    from invdiff.io.images import nifti_volumes, read_images

    volumes = nifti_volumes(path)
    stack = read_images(path, volume=0 if volumes > 1 else None)
    out = {"kind": f"image ({stack.kind})", "path": str(path), "data": _array_summary(stack.data)}
    if volumes > 1:  # a 4-D NIfTI: the first volume is described; --volume picks one elsewhere
        out.update(volumes=volumes, data_of="volume 0 (pick one with --volume)")
    if stack.hounsfield:
        out["units"] = "HU"
    if stack.spacing is not None:  # (between slices or None, rows, columns) in mm
        out["spacing_mm"] = list(stack.spacing)
    if stack.dicom_meta is not None:
        ds = stack.dicom_meta
        out["dicom"] = {k: str(ds.get(k)) for k in ("Modality", "SOPClassUID", "Rows", "Columns", "SeriesDescription") if k in ds}
    return out


def _describe_measurement(path: Path, m) -> dict[str, Any]:
    """The operator, data and attributes of a measurement, after the checks reconstruct makes."""
    from invdiff.operators.base import config_to_json
    from invdiff.pipeline.reconstruct import check_data, slice_operators

    check_data(m)  # finite and not all zero, as reconstruct needs it
    slice_operators(m, "cpu")(0)  # the geometry must be possible and fit the data
    text, arrays = config_to_json(m.operator)
    return {
        "kind": "measurement",
        "path": str(path),
        "operator": json.loads(text),
        "operator_arrays": {k: list(v.shape) for k, v in arrays.items()},
        "data": _array_summary(m.data),
        "ground_truth": None if m.ground_truth is None else _array_summary(m.ground_truth),
        "attrs": m.attrs,
    }


def solver_details(name: str) -> dict[str, Any]:
    """What ``--solver NAME`` does and accepts: description, whether it samples the exact
    posterior, what --guidance sets, whether it accepts ``data_weight=auto``, every ``--option`` with its default, and the tuned
    per-operator defaults ('*' = any other operator)."""
    import dataclasses

    from invdiff.solvers.base import get_solver

    solver = get_solver(name)
    return {
        "description": solver.description,
        "exact": solver.exact,
        "guidance": solver.guidance_meaning,
        "data_weight_auto": solver.auto_data_weight,
        "options": {f.name: f.default for f in dataclasses.fields(solver.options_type)},
        "tuned_defaults": solver.defaults,
    }


@app.command(epilog="Examples:\n\n  invdiff info sino.h5\n\n  invdiff info recon.h5 --json\n\n  invdiff info --solvers")
def info(
    file: Annotated[Optional[Path], typer.Argument(help="Measurement, result, prior folder, calibration (.json), DICOM file or series folder (a folder of several series: their numbers and UIDs, for --series), or image file (a 4-D NIfTI: its volume count, for --volume).")] = None,
    operators: Annotated[bool, typer.Option("--operators", help="List registered operators.")] = False,
    solvers: Annotated[bool, typer.Option("--solvers", help="List registered posterior solvers, their --option names with defaults and their tuned per-operator defaults.")] = False,
    methods: Annotated[bool, typer.Option("--methods", help="List classical methods.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: AcceptedDeviceOpt = "auto",
    seed: AcceptedSeedOpt = 0,
) -> None:
    """Describe FILE, or list what is registered."""
    check_device(device)
    out: dict[str, Any] = {}
    if operators:
        from invdiff.operators.base import OPERATORS

        out["operators"] = OPERATORS.names()
    if solvers:
        from invdiff.solvers.base import SOLVERS

        out["solvers"] = SOLVERS.names()
        out["solver_details"] = {name: solver_details(name) for name in SOLVERS.names()}
    if methods:
        from invdiff.classical.methods import METHODS

        out["methods"] = {name: list(m.operators) for name, m in METHODS.items()}
    if file is not None:
        out.update(describe_file(file))
    if not out:
        raise InputError("give a FILE to describe, or --operators / --solvers / --methods.")
    if json_out:
        emit_json(out)
    elif not quiet:  # --quiet: only the exit code says whether FILE could be read
        typer.echo(json.dumps(out, indent=2, default=str))
