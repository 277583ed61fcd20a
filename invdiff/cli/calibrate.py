"""``invdiff calibrate``: fit the std scale of a prior's results on images with known truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (AcceptedDeviceOpt, AcceptedSeedOpt, JsonOpt, QuietOpt, check_device, check_output,
                                emit_json, refuse_clobbering, require_file)
from invdiff.errors import InputError


@app.command(
    epilog=(
        "Conformal risk control (Angelopoulos et al., ICLR 2024): the scale is the smallest that leaves, on "
        "average over the calibration slices, at most ALPHA of the pixels outside Z calibrated stds, with the "
        "finite-sample correction that makes this hold in expectation for a new slice of the same kind. Each "
        "slice is one calibration image; at least 1/ALPHA - 1 are needed (9 at ALPHA = 0.1).\n\n"
        "Examples:\n\n"
        "  invdiff simulate refs.npy --operator mri --acceleration 8 --noise-std 0.005 --out cal_kspace.h5   (20+ slices)\n\n"
        "  invdiff reconstruct cal_kspace.h5 --samples 4 --calibration none --out cal.h5\n\n"
        "  invdiff calibrate cal.h5 --alpha 0.1 --out mri8x.json\n\n"
        "  invdiff reconstruct new.h5 --samples 4 --calibration mri8x.json --out recon.h5"
    )
)
def calibrate(
    results: Annotated[list[Path], typer.Argument(help="Result files of `invdiff reconstruct` (with a prior) or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Calibration file to write (.json).")],
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Reference image for a single result (default: the ground truth of each result's simulated input).")] = None,
    alpha: Annotated[float, typer.Option("--alpha", help="Target miscoverage: the expected fraction of pixels outside Z calibrated stds.")] = 0.1,
    z: Annotated[float, typer.Option("--z", help="Interval half-width in calibrated stds.")] = 2.0,
    key: Annotated[Optional[str], typer.Option("--key", help="Dataset name inside an HDF5/NPZ reference.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: AcceptedDeviceOpt = "auto",
    seed: AcceptedSeedOpt = 0,
) -> None:
    """Calibrate the posterior std of a prior, solver and operator on images whose truth is known."""
    check_device(device)
    import invdiff
    from invdiff.io.atomic import atomic_write_text
    from invdiff.io.hdf5 import read_result
    from invdiff.pipeline.calibration import (Calibration, calibrate as fit, check_alpha, check_calibration, mean_settings,
                                              operator_settings, pipeline_difference, pipeline_of)
    from invdiff.pipeline.evaluate import load_reference, reference_path, reference_volume, result_units
    from invdiff.pipeline.inputs import HDF5_SUFFIXES

    check_alpha(alpha)
    check_output(out)
    files: list[Path] = []
    for p in results:
        files.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in HDF5_SUFFIXES) if p.is_dir() else [p])
    if not files:
        raise InputError(f"{results[0]}: folder holds no .h5 result files.")
    seen: dict[Path, Path] = {}
    for path in files:  # the same slices counted twice would make the bound falsely tight
        other = seen.setdefault(path.resolve(), path)
        if other is not path:
            also = "" if str(other) == str(path) else f" (also as {other})"
            raise InputError(f"{path}: given twice{also}; each result may count once.")
    refuse_clobbering(files + ([reference] if reference is not None else []), [out])
    if reference is not None and len(files) > 1:
        raise InputError("--reference is for one result; results of simulated inputs take each input's ground truth.")
    images, first, settings = [], None, []
    for path in files:
        require_file(path, "result")
        res = read_result(path)
        prov = res["provenance"]
        pipeline = pipeline_of(prov, str(path))
        summary = prov.get("operator_settings")
        if not isinstance(summary, dict):  # a result of an invdiff that did not record them
            summary = operator_settings(prov.get("operator") or {})
        settings.append(summary)
        if first is None:
            first = pipeline
        elif pipeline != first:
            this, that = pipeline_difference(pipeline, first)
            raise InputError(f"{path}: made with {this}, {files[0]} with {that}; calibrate one pipeline at a time.")
        if res["std"] is None:
            raise InputError(f"{path}: holds no 'std'; reconstruct with a prior and --samples 2 or more.")
        ref_path = require_file(reference_path(path, prov, reference), "reference", allow_folder=True)
        truth = reference_volume(load_reference(ref_path, key, units=result_units(prov))[0])
        if truth.shape != res["reconstruction"].shape:
            raise InputError(f"{ref_path}: the reference has shape {truth.shape} but the reconstruction in {path} has "
                             f"{res['reconstruction'].shape}.")
        images.extend(zip(truth, res["reconstruction"], res["std"]))
    scale, risk_cal, risk_raw = fit(images, alpha, z)
    if scale == 0:
        raise InputError(f"the reconstructions equal their references exactly on at least {1 - alpha:.0%} of the pixels, "
                         "so the fitted std scale is 0, which would report no uncertainty at all; calibrate on results "
                         "whose errors are not zero, or lower --alpha.")
    cal = Calibration(scale=scale, alpha=alpha, z=z, images=len(images), risk_calibrated=risk_cal,
                      risk_uncalibrated=risk_raw, operator_settings=mean_settings(settings), sources=[str(f) for f in files],
                      invdiff_version=invdiff.__version__, **first)
    check_calibration(cal, out)  # never write a file that `reconstruct --calibration` would refuse
    atomic_write_text(out, cal.to_json())
    if json_out:
        emit_json({"out": str(out), **{k: v for k, v in vars(cal).items() if k != "sources"}})
    elif not quiet:
        typer.echo(f"wrote {out}: std scale {scale:.3f} from {len(images)} slice(s); {z:g} std cover "
                   f"{1 - risk_raw:.1%} of the calibration pixels before and {1 - risk_cal:.1%} after "
                   f"(target: at least {1 - alpha:.0%} on average for a new slice of the same kind).")
