"""Per-frame attributes of DICOM images, classic and enhanced (multi-frame) alike.

A classic image (CT Image Storage, MR Image Storage, ...) holds its rescale, pixel spacing and
plane geometry at the top level of the dataset. An enhanced multi-frame image (Enhanced CT/MR
Image Storage, PS3.3 C.7.6.16) holds them in functional groups: each attribute sits in a
macro sequence (e.g. ``PixelValueTransformationSequence`` > ``RescaleSlope``) either in the
Shared Functional Groups Sequence (one value for all frames) or in frame i's item of the
Per-Frame Functional Groups Sequence. `frame_value` looks in that order: the frame's item, the
shared item, the top level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MACRO = {
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "RescaleType": "PixelValueTransformationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "SpacingBetweenSlices": "PixelMeasuresSequence",
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
}
"""The functional-group macro sequence that holds each attribute in an enhanced image."""


def frame_value(ds: Any, keyword: str, frame: int = 0) -> Any:
    """The value of ``keyword`` for ``frame`` (0-based): per-frame group, shared group, top level.

    None when absent or empty.
    """
    macro = _MACRO.get(keyword)
    if macro is not None:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        groups = []
        if per_frame is not None and frame < len(per_frame):
            groups.append(per_frame[frame])
        shared = ds.get("SharedFunctionalGroupsSequence")
        if shared:
            groups.append(shared[0])
        for group in groups:
            items = group.get(macro)
            if items and keyword in items[0] and items[0][keyword].value not in (None, ""):
                return items[0][keyword].value
    value = ds.get(keyword)
    return None if value in (None, "") else value


def is_enhanced(ds: Any) -> bool:
    """Whether ``ds`` carries its per-frame attributes in functional groups."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def rescale_frames(stored: np.ndarray, ds: Any) -> np.ndarray:
    """``stored * RescaleSlope + RescaleIntercept`` frame by frame, ``(frames, H, W)`` float64,
    from each frame's Pixel Value Transformation (PS3.3 C.7.6.16.2.9); slope 1, intercept 0
    where a frame has none."""
    values = np.asarray(stored, dtype=np.float64)
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        slope = frame_value(ds, "RescaleSlope", i)
        intercept = frame_value(ds, "RescaleIntercept", i)
        out[i] = values[i] * (1.0 if slope is None else float(slope)) + (0.0 if intercept is None else float(intercept))
    return out


def frame_positions(ds: Any, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Each frame's ImagePositionPatient ``(frames, 3)`` mm and the orientation ``(6,)``
    (of frame 0), or None when a frame lacks them."""
    try:
        orientation = np.array([float(v) for v in frame_value(ds, "ImageOrientationPatient", 0)])
        positions = np.array([[float(v) for v in frame_value(ds, "ImagePositionPatient", i)] for i in range(frames)])
    except (TypeError, ValueError):
        return None
    if orientation.shape != (6,) or positions.shape != (frames, 3):
        return None
    return positions, orientation


def invert_monochrome1(values: np.ndarray, ds: Any) -> np.ndarray:
    """MONOCHROME1 (minimum displayed white, PS3.3 C.7.6.3.1.2) turned into MONOCHROME2 looks:
    each stored value s becomes ``s_min + s_max - s`` over the range of BitsStored, so bright
    means large in every image a folder holds, and the rescale maps it as before. ``values``
    ``(frames, H, W)`` are after the rescale."""
    if "ModalityLUTSequence" in ds:  # a non-linear LUT: mirror the values' own range
        return values.min() + values.max() - values
    bits = int(ds.get("BitsStored", 16) or 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    s_min, s_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        slope = frame_value(ds, "RescaleSlope", i)
        intercept = frame_value(ds, "RescaleIntercept", i)
        slope = 1.0 if slope is None else float(slope)
        intercept = 0.0 if intercept is None else float(intercept)
        out[i] = (s_min + s_max) * slope + 2.0 * intercept - values[i]
    return out
