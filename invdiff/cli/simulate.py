"""``invdiff simulate``: image -> self-describing measurement file (with its ground truth)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (DeviceOpt, ChannelOpt, GreyOpt, JsonOpt, QuietOpt, SeedOpt, SeriesOpt, VolumeOpt, check_output, check_suffix, emit_json, nifti_axis,
                                refuse_clobbering, resolve_device)
from invdiff.cli.options import (
    AccelerationOpt,
    AnglesOpt,
    BoundaryOpt,
    CenterFractionOpt,
    CoilsOpt,
    ComplexOpt,
    DetectorsOpt,
    DetectorSpacingOpt,
    FilterOpt,
    MaskOpt,
    OperatorParamsOpt,
    PixelSizeOpt,
    PsfOpt,
    ViewsOpt,
    geometry_from_options,
)
from invdiff.errors import naming
from invdiff.notices import warn


@app.command(
    epilog=(
        "Examples:\n\n"
        "  invdiff simulate brain.png --operator radon --views 60 --noise-rel 0.01 --out sino.h5\n\n"
        "  invdiff simulate head.dcm --operator radon --views 30 --photons 1e4 --out lowdose.h5\n\n"
        "  invdiff simulate stack.npy --operator mri --acceleration 8 --center-fraction 0.04 --noise-std 0.005 --out k.h5\n\n"
        "  invdiff simulate cells.tif --operator blur --psf airy:520,1.4,65 --photons 200 --out blurred.h5"
    )
)
def simulate(
    image: Annotated[Path, typer.Argument(help="PNG/TIFF/NPY/NPZ/HDF5/DICOM/NIfTI image or stack (slices, H, W).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Measurement file to write (.h5).")],
    operator: Annotated[str, typer.Option("--operator", help="Forward operator: radon, mri, blur or a plug-in.")] = "radon",
    views: ViewsOpt = None,
    angles: AnglesOpt = None,
    detectors: DetectorsOpt = None,
    detector_spacing: DetectorSpacingOpt = None,
    pixel_size: PixelSizeOpt = None,
    filter: FilterOpt = None,
    acceleration: AccelerationOpt = None,
    center_fraction: CenterFractionOpt = None,
    mask: MaskOpt = None,
    coils: CoilsOpt = None,
    complex_image: ComplexOpt = False,
    psf: PsfOpt = None,
    boundary: BoundaryOpt = None,
    operator_params: OperatorParamsOpt = None,
    noise_std: Annotated[Optional[float], typer.Option("--noise-std", help="Gaussian noise std in the measurement's units (per real/imag part).")] = None,
    noise_rel: Annotated[Optional[float], typer.Option("--noise-rel", help="Gaussian noise std = R x the largest |noiseless measurement|.")] = None,
    photons: Annotated[Optional[float], typer.Option("--photons", help="Poisson model: incident photons per bin (CT) or photons at the peak (microscopy).")] = None,
    read_noise: Annotated[float, typer.Option("--read-noise", help="Microscopy read-noise std in photons (with --photons).")] = 0.0,
    key: Annotated[Optional[str], typer.Option("--key", help="Dataset/array name inside HDF5/NPZ inputs.")] = None,
    axis: Annotated[Optional[int], typer.Option("--axis", help="NIfTI axis to slice along (0, 1, 2; default 2, axial).")] = None,
    volume: VolumeOpt = None,
    series: SeriesOpt = None,
    grey: GreyOpt = False,
    channel: ChannelOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate a measurement of IMAGE and write it, with the image as ground truth, to --out."""
    from invdiff.io.images import read_images
    from invdiff.pipeline.simulate import simulate as run_simulate
    from invdiff.io.hdf5 import write_measurement
    from invdiff.pipeline.geometry import check_options_fit

    start = time.perf_counter()
    check_output(out)
    refuse_clobbering([image], [out])
    check_suffix(out, "--out", "hdf5")
    geometry = geometry_from_options(locals())
    check_options_fit(operator, geometry)  # before the image is read: an option of another operator
    dev = resolve_device(device)
    stack = read_images(image, key=key, axis=nifti_axis(image, axis), allow_rgb=grey, volume=volume, series=series,
                        channel=channel)
    data = stack.data
    attrs = {"source": str(image), "units": "image"}
    if stack.spacing:
        attrs["spacing_mm"] = [None if v is None else float(v) for v in stack.spacing]
    if stack.hounsfield and operator == "radon":
        from invdiff.io.dicom import hu_to_mu

        data = hu_to_mu(data)
        attrs.update(units="mu_per_mm", hounsfield=True)
        if pixel_size is None and stack.spacing:
            geometry.pixel_size = float(stack.spacing[-1])
            rows, columns = stack.spacing[1], stack.spacing[2]
            if rows and columns and abs(rows - columns) > 1e-3 * columns:
                warn(f"{image}: the pixels are {rows:g} x {columns:g} mm (rows x columns); the Radon "
                     f"transform takes them as square, {columns:g} mm (give --pixel-size, or resample the image for "
                     "exact line integrals).")
    if stack.dicom_meta is not None:
        from invdiff.io.dicom_meta import meta_to_json

        attrs["source_dicom"] = meta_to_json(stack.dicom_meta)
    with naming(image):  # impossible geometry: the sentence names the image it was asked for
        measurement = run_simulate(
            data,
            operator,
            geometry,
            noise_std=noise_std,
            noise_rel=noise_rel,
            photons=photons,
            read_std=read_noise,
            seed=seed,
            device=dev,
            attrs=attrs,
        )
    write_measurement(out, measurement)
    summary = {
        "out": str(out),
        "operator": operator,
        "slices": int(data.shape[0]),
        "image_shape": list(data.shape[1:]),
        "measurement_shape": list(measurement.data.shape[1:]),
        "noise": measurement.operator["params"]["noise"],
        "seconds": round(time.perf_counter() - start, 3),
    }
    if json_out:
        emit_json(summary)
    elif not quiet:
        typer.echo(
            f"wrote {out}: {operator} measurement {tuple(measurement.data.shape)} of {data.shape[0]} slice(s), "
            f"noise {summary['noise']}"
        )
