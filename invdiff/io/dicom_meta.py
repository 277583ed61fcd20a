"""Patient and study attributes carried from a DICOM source to derived results.

A measurement simulated from a DICOM image keeps these attributes (as JSON in the HDF5 file)
so that `reconstruct --dicom` writes a new series in the same study for the same patient.
"""

from __future__ import annotations

from typing import Any

import pydicom

CARRIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PixelSpacing",
    "SliceThickness",
)


def meta_to_json(ds: pydicom.Dataset) -> dict[str, Any]:
    """The carried attributes of ``ds`` as JSON-able values (missing ones left out)."""
    out: dict[str, Any] = {}
    for keyword in CARRIED:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            out[keyword] = [float(v) for v in value]
        elif isinstance(value, (int, float)):
            out[keyword] = value
        else:
            out[keyword] = str(value)
    return out


def meta_from_json(values: dict[str, Any] | None) -> pydicom.Dataset | None:
    """A pydicom Dataset holding the carried attributes (None when there is no source)."""
    if not values:
        return None
    ds = pydicom.Dataset()
    for keyword, value in values.items():
        if keyword in CARRIED:
            setattr(ds, keyword, value)
    return ds
