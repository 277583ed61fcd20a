"""``invdiff evaluate``: PSNR, SSIM, NMSE and data residual of a result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (AcceptedDeviceOpt, AcceptedSeedOpt, ChannelOpt, GreyOpt, JsonOpt, QuietOpt, SeriesOpt, VolumeOpt, check_device, emit_json,
                                nifti_axis, require_file)
from invdiff.errors import InputError


def _check_same_operator(provenance: dict, result: Path, m) -> None:
    """InputError when the result was reconstructed from another operator's measurement than
    the one its data residual would be computed with."""
    operator = provenance.get("operator") if isinstance(provenance, dict) else None
    recorded = operator.get("name") if isinstance(operator, dict) else None
    if isinstance(recorded, str) and recorded != m.operator["name"]:
        raise InputError(f"{m.source or 'the measurement'}: holds a {m.operator['name']} measurement, but {result} was "
                         f"reconstructed from a {recorded} one; give the measurement it came from.")


@app.command(
    epilog=(
        "Metrics follow fastMRI (fastmri/evaluate.py): NMSE = ||ref - x||^2/||ref||^2 and PSNR over the whole "
        "volume; SSIM per slice (7x7 window) averaged over slices; the data range is the reference VOLUME's "
        "maximum unless --data-range is given. residual = ||A x - y|| / ||y||; discrepancy_ratio = "
        "||A x - y||^2 / E||noise||^2 (near 1 means the data are fitted to the noise level); coverage_2std = "
        "fraction of pixels whose error is within 2 posterior std; coverage_pred95 = the same for the 95 % Student-t "
        "prediction interval of K samples, t(K-1) sqrt(1 + 1/K) std (95 % for an exact sampler at any K; not given for a std scaled by --calibration).\n\n"
        "Examples:\n\n"
        "  invdiff evaluate recon.h5 --reference sino.h5          (simulated file: its ground truth and residual)\n\n"
        "  invdiff evaluate recon.h5 --reference brain.png --data-range 1 --json"
    )
)
def evaluate(
    result: Annotated[Path, typer.Argument(help="Result file written by `invdiff reconstruct`.")],
    reference: Annotated[Optional[Path], typer.Option("--reference", "-r", help="Reference image, or a simulated measurement file (its ground_truth); default: the result's input file when it holds a ground truth.")] = None,
    measurement: Annotated[Optional[Path], typer.Option("--measurement", help="Measurement file for the data residual (default: the reference when it is one).")] = None,
    data_range: Annotated[Optional[float], typer.Option("--data-range", help="PSNR/SSIM data range (default: reference volume max).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="Dataset name inside an HDF5/NPZ reference.")] = None,
    axis: Annotated[Optional[int], typer.Option("--axis", help="NIfTI reference: the axis to slice along, as given to `invdiff simulate` (0, 1, 2; default 2, axial).")] = None,
    volume: VolumeOpt = None,
    series: SeriesOpt = None,
    grey: GreyOpt = False,
    channel: ChannelOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    device: AcceptedDeviceOpt = "auto",
    seed: AcceptedSeedOpt = 0,
) -> None:
    """Compare a reconstruction with a reference image."""
    check_device(device)
    from invdiff.io.hdf5 import read_measurement, read_result
    from invdiff.pipeline.evaluate import evaluate as run_evaluate
    from invdiff.pipeline.evaluate import load_reference, reference_path, result_units

    require_file(result, "result")
    res = read_result(result)
    reference = require_file(reference_path(result, res["provenance"], reference), "reference", allow_folder=True)
    given = read_measurement(require_file(measurement, "measurement")) if measurement is not None else None
    ref, m = load_reference(reference, key, axis=nifti_axis(reference, axis), units=result_units(res["provenance"], given),
                            allow_rgb=grey, volume=volume, series=series, channel=channel)
    m = given or m
    if m is not None:
        from invdiff.pipeline.reconstruct import check_data

        _check_same_operator(res["provenance"], result, m)
        check_data(m)  # a residual against NaN or all-zero data means nothing
    if ref.ndim == 3 and ref.shape != res["reconstruction"].shape:
        raise InputError(f"{reference}: the reference has shape {ref.shape} but the reconstruction in {result} "
                         f"has {res['reconstruction'].shape}.")
    scores = run_evaluate(res, ref, data_range=data_range, m=m)
    if json_out:
        emit_json({"result": str(result), "reference": str(reference), **scores})
        return
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result} vs {reference}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in ("psnr", "ssim", "nmse", "coverage_2std", "coverage_pred95", "residual", "discrepancy_ratio", "data_range"):
        if name in scores:
            fmt = {"psnr": "{:.2f} dB", "ssim": "{:.4f}", "nmse": "{:.5f}", "coverage_2std": "{:.1%}", "coverage_pred95": "{:.1%}"}.get(name, "{:.4g}")
            table.add_row(name, fmt.format(scores[name]))
    Console().print(table)
