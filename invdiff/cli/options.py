"""Operator-geometry options shared by `simulate` and `reconstruct` (declared once)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from invdiff.pipeline.geometry import GeometryOptions

_G = "Geometry"
ViewsOpt = Annotated[Optional[int], typer.Option("--views", help="CT: N angles evenly over 180 degrees.", rich_help_panel=_G)]
AnglesOpt = Annotated[Optional[str], typer.Option("--angles", help="CT: angles in degrees, '0,10,20' or START:STOP:N.", rich_help_panel=_G)]
DetectorsOpt = Annotated[Optional[int], typer.Option("--detectors", help="CT: detector bins (default as skimage's radon).", rich_help_panel=_G)]
DetectorSpacingOpt = Annotated[Optional[float], typer.Option("--detector-spacing", help="CT: detector spacing in pixels.", rich_help_panel=_G)]
PixelSizeOpt = Annotated[Optional[float], typer.Option("--pixel-size", help="CT: pixel size in mm (line integrals in mu x mm).", rich_help_panel=_G)]
FilterOpt = Annotated[Optional[str], typer.Option("--filter", help="CT FBP filter: ramp, shepp-logan, cosine, hann.", rich_help_panel=_G)]
AccelerationOpt = Annotated[Optional[float], typer.Option("--acceleration", help="MRI: undersampling factor R >= 1.", rich_help_panel=_G)]
CenterFractionOpt = Annotated[Optional[float], typer.Option("--center-fraction", help="MRI: fully sampled centre fraction (default 0.08 at R<=4, else 0.04).", rich_help_panel=_G)]
MaskOpt = Annotated[Optional[str], typer.Option("--mask", help="MRI mask: random, equispaced (fastMRI lines) or poisson (2D).", rich_help_panel=_G)]
CoilsOpt = Annotated[Optional[int], typer.Option("--coils", help="MRI: number of coils (simulated birdcage maps when > 1).", rich_help_panel=_G)]
ComplexOpt = Annotated[bool, typer.Option("--complex", help="MRI: complex image model (2 channels).", rich_help_panel=_G)]
PsfOpt = Annotated[Optional[str], typer.Option("--psf", help="Microscopy PSF: gaussian:SIGMA_PX, airy:WAVELENGTH_NM,NA,PIXEL_NM or FILE.tif.", rich_help_panel=_G)]
BoundaryOpt = Annotated[Optional[str], typer.Option("--boundary", help="Microscopy boundary: reflect, periodic, zero.", rich_help_panel=_G)]
OperatorParamsOpt = Annotated[Optional[str], typer.Option("--operator-params", help="JSON object of operator params (plug-ins; overrides).", rich_help_panel=_G)]


def geometry_from_options(values: dict[str, Any]) -> GeometryOptions:
    """GeometryOptions from a command's local variables (same names as the options)."""
    return GeometryOptions(
        views=values.get("views"),
        angles=values.get("angles"),
        detectors=values.get("detectors"),
        detector_spacing=values.get("detector_spacing"),
        pixel_size=values.get("pixel_size"),
        filter=values.get("filter"),
        acceleration=values.get("acceleration"),
        center_fraction=values.get("center_fraction"),
        mask=values.get("mask"),
        coils=values.get("coils"),
        complex_image=bool(values.get("complex_image", False)),
        psf=values.get("psf"),
        boundary=values.get("boundary"),
        operator_params=values.get("operator_params"),
    )
