"""Attributes carried from a DICOM source to derived results.

A measurement simulated from a DICOM image keeps these attributes (as JSON in the HDF5 file)
so that `reconstruct --dicom` writes a new series in the same study for the same patient, in
the same place in the patient (position, orientation, pixel spacing and Frame of Reference of
the source when the grid is the same) and with the source's acquisition parameters.
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
    "PositionReferenceIndicator",
    "PatientPosition",
    "Laterality",
    "SeriesNumber",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "KVP",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "EchoTrainLength",
    "InversionTime",
    "MagneticFieldStrength",
    "ImagedNucleus",
)
"""Patient and study, where the first slice lies (position, orientation, grid and spacing of
the source: a derived series on the same grid keeps its Frame of Reference), and the CT and MR
acquisition attributes the derived series repeats."""


def meta_to_json(ds: pydicom.Dataset) -> dict[str, Any]:
    """The carried attributes of ``ds`` as JSON-able values (missing ones left out)."""
    out: dict[str, Any] = {}
    for keyword in CARRIED:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            try:
                out[keyword] = [float(v) for v in value]
            except (TypeError, ValueError):  # e.g. ScanningSequence GR\IR
                out[keyword] = [str(v) for v in value]
        elif isinstance(value, (int, float)):
            out[keyword] = int(value) if isinstance(value, int) else float(value)
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
