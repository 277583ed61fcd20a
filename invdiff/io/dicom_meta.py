"""Attributes carried from a DICOM source to derived results.

A measurement simulated from a DICOM image keeps these attributes (as JSON in the HDF5 file)
so that `reconstruct --dicom` writes a new series in the same study for the same patient, in
the same place in the patient (position, orientation, pixel spacing and Frame of Reference of
the source when the grid is the same) and with the source's acquisition parameters.
"""

from __future__ import annotations

import math
from typing import Any

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.valuerep import validate_value

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
    """A pydicom Dataset holding the carried attributes (None when there is no source), less
    those `left_out` names: a derived series must be valid DICOM whatever its source was."""
    if not values:
        return None
    dropped = left_out(values)
    ds = pydicom.Dataset()
    for keyword, value in values.items():
        if keyword in CARRIED and keyword not in dropped:
            setattr(ds, keyword, value)
    return ds


def left_out(values: dict[str, Any] | None) -> dict[str, str]:
    """Carried attributes of a source that a valid derived series cannot repeat, keyword ->
    why: a text value its Value Representation does not allow (DICOM PS3.5 §6.2; e.g. a
    PatientBirthDate "X", which is no DA), a number that is not finite, and a UID whose root
    is not 1 or 2 (PS3.5 §9; test data such as "0.0.0.0.2..." pass the UID syntax but
    `dciodvfy` rejects their root). The series then leaves such an attribute out, or, for
    StudyInstanceUID and FrameOfReferenceUID, gets a new UID of its own (a new study; a new
    Frame of Reference). An invalid PatientID takes the rest of the patient's and the study's
    identity with it (`IDENTITY`): a series must not file one patient's name and study under
    another patient ID."""
    out: dict[str, str] = {}
    for keyword, value in (values or {}).items():
        if keyword not in CARRIED:
            continue
        why = _problem(dictionary_VR(keyword), value)
        if why:
            out[keyword] = f"{value!r} {why}"
    if "PatientID" in out:
        for keyword in IDENTITY:
            if keyword in (values or {}) and keyword not in out:
                out[keyword] = "goes with the PatientID"
    return out


#: what names the patient and the study: left out together with an invalid PatientID
IDENTITY = ("PatientName", "PatientBirthDate", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate",
            "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
            "FrameOfReferenceUID", "PositionReferenceIndicator")


def _problem(vr: str, value: Any) -> str | None:
    """Why ``value`` (as `meta_to_json` keeps it) cannot be written with ``vr``, or None."""
    items = value if isinstance(value, list) else [value]
    if vr in _TEXT_VRS:  # pydicom's own check of the VR's syntax and length (a UID's too)
        for item in items:
            if not isinstance(item, str):
                return f"is not a valid {vr}"
            try:
                validate_value(vr, item, config.RAISE)
            except (ValueError, TypeError):
                return "is not a valid UID" if vr == "UI" else f"is not a valid {vr}"
        if vr == "UI" and str(value).split(".")[0] not in ("1", "2"):
            return "has a root other than 1 or 2"
        return None
    for item in items:  # DS, IS, US, FD...: numbers, which pydicom formats on writing
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            return f"is not a valid {vr}"
    return None


#: Value Representations whose values the JSON holds as text and pydicom validates as text
_TEXT_VRS = ("AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT")
