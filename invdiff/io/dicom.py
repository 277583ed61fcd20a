"""DICOM in and out: Hounsfield units <-> linear attenuation, reading slices and series,
writing a derived series that a DICOM validator (dciodvfy) accepts.

Units. CT pixels are stored as integers and mapped to Hounsfield units by the Modality LUT,
``HU = stored * RescaleSlope + RescaleIntercept`` (DICOM PS3.3 C.11.1). Hounsfield units and
the linear attenuation coefficient mu are related by the definition of the HU scale,

    HU = 1000 * (mu - mu_water) / mu_water      <=>      mu = mu_water * (1 + HU / 1000)

(Hounsfield, Br. J. Radiol. 46:1016, 1973), with mu_water = 0.0192 /mm (water near 70 keV,
the effective energy of a 120 kVp spectrum; NIST XCOM). Air (-1000 HU) is mu = 0.

Writing. `write_dicom_series` writes one file per slice as CT Image Storage, MR Image Storage
or Secondary Capture (microscopy and anything else), with new Series/SOP Instance UIDs, the
patient and study copied from a source DICOM when given, ImageType DERIVED\\SECONDARY, 16-bit
unsigned pixels with RescaleSlope/Intercept, and a VOI window. The whole series appears at once:
files go to a temporary folder beside the target that is renamed onto it at the end.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from invdiff.errors import InputError
from invdiff.io.atomic import exchange_paths, write_reason
from invdiff.io.dicom_frames import frame_positions, frame_value, invert_monochrome1, is_enhanced, rescale_frames

MU_WATER_PER_MM = 0.0192
"""Linear attenuation coefficient of water, 1/mm, near 70 keV (NIST XCOM)."""

Modality = Literal["CT", "MR", "OT"]

# ---------------------------------------------------------------------------------------
# Hounsfield units
# ---------------------------------------------------------------------------------------


def hu_to_mu(hu: Any, mu_water: float = MU_WATER_PER_MM) -> Any:
    """Hounsfield units -> linear attenuation (1/mm): ``mu = mu_water * (1 + HU / 1000)``.

    Works elementwise on numpy arrays, torch tensors (on any device) and floats.
    """
    return mu_water * (1.0 + hu / 1000.0)


def mu_to_hu(mu: Any, mu_water: float = MU_WATER_PER_MM) -> Any:
    """Linear attenuation (1/mm) -> Hounsfield units: ``HU = 1000 * (mu - mu_water) / mu_water``."""
    return 1000.0 * (mu - mu_water) / mu_water


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclass
class DicomVolume:
    """Pixels of one DICOM file or series after the Modality LUT.

    data: float32 ``(slices, H, W)``, in HU when ``hounsfield``.
    meta: the first slice's dataset (pixel data removed), for copying patient/study later.
    spacing: ``(slice, row, column)`` in mm; the slice spacing is None when unknown.
    """

    data: np.ndarray
    meta: Any
    hounsfield: bool
    spacing: tuple[float | None, float, float] | None


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings (``warnings`` and its ``pydicom`` logger) while reading,
    including those raised when a value is converted on first access: notes such as "pixel data
    has excess padding" concern inputs that are read correctly, and a file that cannot be read
    is reported once, as one sentence, by the caller. Also usable as a decorator."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 marker 'DICM' at byte 128."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


@quiet_pydicom()
def read_dicom_header(path: Path, *, pixels: bool = True) -> Any:
    """Parse one DICOM file (without executing anything); InputError naming the file if it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    _require_nonempty(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128).") from None
    except Exception as exc:  # a corrupt or truncated file can raise anything inside the parser
        raise InputError(f"{path}: not a readable DICOM file ({_reason(exc)}).") from None
    if pixels and "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file holds no image (no PixelData; it may be a DICOMDIR or a report).")
    return ds


@quiet_pydicom()
def dicom_pixels(ds: Any, path: Path) -> tuple[np.ndarray, bool]:
    """Pixels ``(frames, H, W)`` float32 after RescaleSlope/Intercept, and whether they are HU.

    HU when Modality is CT and RescaleType is absent or 'HU' (PS3.3 C.8.2.1). An enhanced
    multi-frame image's rescale is read from its functional groups, frame by frame
    (dicom_frames.py). MONOCHROME1 images that are not in HU are inverted so that bright means
    large, as in MONOCHROME2 (HU keep their values: they are physical). Colour
    (SamplesPerPixel > 1, or a PhotometricInterpretation other than MONOCHROME1/2, such as
    PALETTE COLOR, whose one sample per pixel is a colour-table index, RGB or YBR_*) and
    compressed data without an installed decoder are InputErrors.
    """
    from pydicom.pixels import apply_modality_lut

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise InputError(f"{path}: expected a single-channel image; got {samples} channels (colour DICOM).")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in ("", "MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{path}: expected a single-channel image; got {photometric} (colour DICOM).")
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        stored = ds.pixel_array
    except Exception as exc:
        if tsyntax is not None and tsyntax.is_compressed:
            raise InputError(_compressed_message(path, tsyntax, exc)) from None
        raise InputError(f"{path}: DICOM pixel data is truncated or corrupt ({_reason(exc)}).") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    stored = np.asarray(stored)
    if stored.ndim == 2:
        stored = stored[None]
    if stored.ndim != 3 or stored.shape[0] != frames:
        raise InputError(f"{path}: DICOM pixel data has shape {stored.shape}, not (frames, rows, columns).")
    try:
        if is_enhanced(ds) and "RescaleSlope" not in ds:  # rescale in the functional groups
            values = rescale_frames(stored, ds)
        else:
            values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    except Exception as exc:
        raise InputError(f"{path}: DICOM rescale attributes are invalid ({_reason(exc)}).") from None
    values = _apply_real_world_mapping(values, ds)
    rescale_type = str(frame_value(ds, "RescaleType") or "HU").upper()
    hounsfield = str(ds.get("Modality", "")).upper() == "CT" and rescale_type == "HU"
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" and not hounsfield:
        values = invert_monochrome1(values, ds)
    return values.astype(np.float32), hounsfield


def _apply_real_world_mapping(values: np.ndarray, ds: Any) -> np.ndarray:
    """For MR without a Modality LUT, apply the first linear Real World Value Mapping item."""
    if "RescaleSlope" in ds or str(ds.get("Modality", "")).upper() != "MR":
        return values
    for item in ds.get("RealWorldValueMappingSequence", []):
        if "RealWorldValueSlope" in item:
            return values * float(item.RealWorldValueSlope) + float(item.get("RealWorldValueIntercept", 0.0))
    return values


@quiet_pydicom()
def group_dicom_series(files: Sequence[Path]) -> list[list[Path]]:
    """Split DICOM files into series by SeriesInstanceUID (order of first appearance).

    Objects that are not images (no Rows: DICOMDIR, reports, presentation states) are left out.
    A file without Rows whose SOP class is an image storage class (or that has no SOP class at
    all) is an image cut short or damaged: an InputError naming it, not a slice left out in silence.
    """
    groups: dict[str, list[Path]] = {}
    for path in files:
        ds = read_dicom_header(path, pixels=False)
        if "Rows" not in ds:
            _refuse_truncated_image(ds, path)
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(path)
    return list(groups.values())


def _refuse_truncated_image(ds: Any, path: Path) -> None:
    """InputError for a DICOM file without Rows whose SOP class says it is an image (or that
    names no SOP class): truncated before its image attributes, e.g. an interrupted copy."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    name = UID(str(sop_class)).name if sop_class else ""
    if sop_class and "Image Storage" not in name:
        return  # a DICOMDIR, report, presentation state, ...: not an image, left out
    kind = f"a {name} file" if sop_class else "a DICOM file without a SOP class"
    raise InputError(f"{path}: {kind} that holds no image attributes (no Rows or PixelData): it is truncated or "
                     "damaged; remove it or export the series again.")


@quiet_pydicom()
def series_summary(files: Sequence[Path]) -> dict[str, Any]:
    """What names one series (files from `group_dicom_series`), from its first file's header:
    ``number`` (SeriesNumber), ``description``, ``modality``, ``uid`` (SeriesInstanceUID) as
    text ("" when absent) and ``files`` (the count)."""
    ds = read_dicom_header(Path(files[0]), pixels=False)
    text = {name: str(ds.get(tag, "") or "").strip() for name, tag in (
        ("number", "SeriesNumber"), ("description", "SeriesDescription"), ("modality", "Modality"),
        ("uid", "SeriesInstanceUID"))}
    return {**text, "files": len(files)}


def describe_series(groups: Sequence[Sequence[Path]]) -> str:
    """One phrase per series (from `group_dicom_series`), for messages: SeriesNumber, quoted
    SeriesDescription, Modality and file count, e.g. ``series 2 'AX T1' (MR, 120 files)``;
    at most six series are named."""
    phrases = []
    for files in groups[:6]:
        s = series_summary(files)
        count = f"{s['files']} file{'s' if s['files'] != 1 else ''}"
        name = f"series {s['number']}" if s["number"] else "unnumbered series"
        description = f" {s['description']!r}" if s["description"] else ""
        phrases.append(f"{name}{description} ({s['modality'] or 'no modality'}, {count})")
    return "; ".join(phrases + (["..."] if len(groups) > 6 else []))


def select_series(groups: Sequence[Sequence[Path]], series: str, folder: Path) -> list[Path]:
    """The files of the one series (from `group_dicom_series`) that ``series`` names: its
    SeriesNumber (compared as a number, so "3" matches "03") or its SeriesInstanceUID.
    InputError, naming the folder's series, when none or several match."""
    matches = matching_series(groups, series, folder)
    if not matches:
        raise InputError(f"{folder}: no DICOM series with number or UID {series.strip()!r}; the folder holds "
                         f"{describe_series(groups)}.")
    return matches[0]


def matching_series(groups: Sequence[Sequence[Path]], series: str, folder: Path) -> list[list[Path]]:
    """The series among ``groups`` that ``series`` names (see `select_series`): none or one;
    InputError when several have that number."""
    wanted = series.strip()
    matches = []
    for files in groups:
        s = series_summary(files)
        if wanted == s["uid"] or (s["number"] and _same_number(s["number"], wanted)):
            matches.append(list(files))
    if len(matches) <= 1:
        return matches
    raise InputError(f"{folder}: {len(matches)} DICOM series have number {wanted} ({describe_series(matches)}); "
                     "give --series the SeriesInstanceUID of the one to read.")


def _same_number(number: str, wanted: str) -> bool:
    try:
        return int(number) == int(wanted)
    except ValueError:
        return number == wanted


@quiet_pydicom()
def read_dicom_series(files: Sequence[Path]) -> DicomVolume:
    """Read the files of one series into a volume sorted along the slice normal.

    Order: by ImagePositionPatient projected onto the normal of ImageOrientationPatient when
    every slice has them and they are distinct, else by InstanceNumber, else by file name. The
    frames of an enhanced multi-frame file are slices too, each placed by its own Plane
    Position (functional groups, dicom_frames.py).
    Slices of different sizes or of different units (HU and not HU) are an InputError, and so
    are two files at one slice position of a series that spans several (`_refuse_duplicates`).
    """
    if not files:
        raise InputError("no DICOM files were given.")
    slices = []
    for path in files:
        ds = read_dicom_header(path, pixels=True)
        values, hounsfield = dicom_pixels(ds, path)
        if values.shape[0] > 1 and is_enhanced(ds):
            slices.extend((path, ds, values[f : f + 1], hounsfield, f) for f in range(values.shape[0]))
        else:
            slices.append((path, ds, values, hounsfield, 0))
    slices, positions = _sorted_slices(slices)
    first_path, first_ds, first_values, first_hu, first_frame = slices[0]
    for path, _, values, hounsfield, _ in slices[1:]:
        if values.shape[1:] != first_values.shape[1:]:
            raise InputError(
                f"{path}: slice size {values.shape[1]}x{values.shape[2]} differs from "
                f"{first_values.shape[1]}x{first_values.shape[2]} of {first_path.name} in the same series."
            )
        if hounsfield != first_hu:
            raise InputError(f"{path}: slice units (HU or not) differ from {first_path.name} in the same series.")
    data = np.concatenate([s[2] for s in slices], axis=0)
    meta = _first_slice_meta(first_ds, first_frame)
    return DicomVolume(data=data, meta=meta, hounsfield=first_hu, spacing=_spacing(meta, positions))


def _first_slice_meta(ds: Any, frame: int) -> Any:
    """The dataset of the first slice without its pixels; for an enhanced image a copy whose
    top level holds that frame's geometry (what a derived series carries over)."""
    meta = ds.copy() if is_enhanced(ds) else ds
    if "PixelData" in meta:
        del meta.PixelData
    if is_enhanced(ds):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                        "SpacingBetweenSlices"):
            value = frame_value(ds, keyword, frame)
            if value is not None:
                setattr(meta, keyword, value)
    return meta


def _slice_geometry(entry: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """(position (3,), orientation (6,)) of one slice entry, or None."""
    _, ds, _, _, frame = entry
    if is_enhanced(ds):
        found = frame_positions(ds, frame + 1)
        return None if found is None else (found[0][frame], found[1])
    try:
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        position = np.array([float(v) for v in ds.ImagePositionPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    return (position, orientation) if orientation.shape == (6,) and position.shape == (3,) else None


def _sorted_slices(slices: list) -> tuple[list, np.ndarray | None]:
    geometry = [_slice_geometry(s) for s in slices]
    positions = None
    if all(g is not None for g in geometry):
        normal = np.cross(geometry[0][1][:3], geometry[0][1][3:])
        positions = np.array([g[0] @ normal for g in geometry])
    if positions is not None and len(np.unique(np.round(positions, 4))) == len(slices):
        order = np.argsort(positions, kind="stable")
        return [slices[i] for i in order], positions[order]
    _refuse_duplicates(slices, positions)
    if any(s[4] for s in slices):  # frames of a multi-frame file without positions: stored order
        return slices, None
    numbers = [s[1].get("InstanceNumber") for s in slices]
    if all(n is not None and str(n) != "" for n in numbers) and len(set(int(n) for n in numbers)) == len(numbers):
        return sorted(slices, key=lambda s: int(s[1].InstanceNumber)), None
    return sorted(slices, key=lambda s: s[0].name), None


def _refuse_duplicates(slices: list, positions: np.ndarray | None) -> None:
    """InputError naming both files when two files of one series are the same instance
    (SOPInstanceUID) or, in a series that spans several positions, lie at one slice position
    (a duplicate export: stacking both would put two slices at one place). A series whose
    slices all lie at one position (cine, perfusion or multi-echo of one slice) and the frames of
    one multi-frame file keep the InstanceNumber or stored order."""
    first: dict = {}
    for path, ds, *_ in slices:
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and first.setdefault(uid, path) != path:
            raise InputError(f"{path}: is the same DICOM instance as {first[uid].name} (SOPInstanceUID {uid}), "
                             "a copy; remove one of them.")
    if positions is None or len(np.unique(np.round(positions, 4))) < 2:
        return
    at: dict = {}
    for entry, position in zip(slices, np.round(positions, 4)):
        other = at.setdefault(float(position), entry)
        if other[0] != entry[0]:
            raise InputError(f"{entry[0]}: lies at the same slice position as {other[0].name} ({position:g} mm along "
                             f"the slice normal) in one series, {_why_two_at_one_position(other[1], entry[1])}.")


def _why_two_at_one_position(a: Any, b: Any) -> str:
    """What two images of one series at one slice position most likely are, and what to do:
    echoes or time points of a multi-echo / dynamic series (split it), else a duplicate export."""
    for keyword, what in (("EchoTime", "echo times"), ("EchoNumbers", "echo numbers"),
                          ("TemporalPositionIdentifier", "time points"), ("AcquisitionNumber", "acquisitions")):
        first, second = a.get(keyword), b.get(keyword)
        if first not in (None, "") and second not in (None, "") and str(first) != str(second):
            return (f"with other {what} ({first} and {second}): a series of several images per position; "
                    "give one folder per echo or time point")
    return "a duplicate export; remove one of them"


def _spacing(ds: Any, positions: np.ndarray | None) -> tuple[float | None, float, float] | None:
    try:
        row, col = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    slice_spacing: float | None = None
    if positions is not None and len(positions) > 1:
        slice_spacing = float(np.median(np.diff(positions)))
    else:
        for name in ("SpacingBetweenSlices", "SliceThickness"):
            value = ds.get(name)
            if value not in (None, ""):
                slice_spacing = float(value)
                break
    return (slice_spacing, row, col)


def _compressed_message(path: Path, tsyntax: Any, exc: Exception) -> str:
    from pydicom.pixels import get_decoder

    try:
        available = get_decoder(tsyntax).is_available
    except Exception:
        available = False
    if not available:
        return (
            f"{path}: DICOM uses compressed pixel data ({tsyntax.name}) and no decoder is installed "
            "(install pylibjpeg with its plug-ins or python-gdcm)."
        )
    return f"{path}: DICOM compressed pixel data ({tsyntax.name}) could not be decoded ({_reason(exc)})."


def _require_nonempty(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file does not exist.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a DICOM file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty.")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).rstrip(".")
    return (text[:160] + "...") if len(text) > 160 else (text or type(exc).__name__)


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

_PATIENT_STUDY = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)
_MR_ACQUISITION = (
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
    "EchoTime", "EchoTrainLength", "InversionTime", "MagneticFieldStrength", "ImagedNucleus",
)
_STORAGE = {"CT": "CTImageStorage", "MR": "MRImageStorage", "OT": "SecondaryCaptureImageStorage"}
_UNITS = ("HU", "1/mm", "arbitrary")
_IMAGE_TYPE = {"CT": ["DERIVED", "SECONDARY", "AXIAL"], "MR": ["DERIVED", "SECONDARY", "OTHER"], "OT": ["DERIVED", "SECONDARY"]}


def write_dicom_series(
    out_dir: str | os.PathLike,
    images: np.ndarray,
    *,
    modality: Modality,
    source_meta: Any = None,
    description: str = "invdiff reconstruction",
    units: str = "arbitrary",
    pixel_spacing: tuple[float, float] | None = None,
    slice_thickness: float | None = None,
    slice_spacing: float | None = None,
    window: tuple[float, float] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``images`` ``(slices, H, W)`` (or ``(H, W)``) as one DICOM file per slice.

    modality: "CT" (CT Image Storage), "MR" (MR Image Storage) or "OT" (Secondary Capture,
        for microscopy and anything else).
    units: "HU" (values are Hounsfield units), "1/mm" (linear attenuation; converted to HU
        with `mu_to_hu`; CT only) or "arbitrary". CT in HU gets RescaleType HU, otherwise US.
    source_meta: a pydicom Dataset (e.g. ``ImageStack.dicom_meta``); its patient and study
        attributes are copied and its StudyInstanceUID kept. When its grid (Rows, Columns)
        matches the images and it has ImagePositionPatient and ImageOrientationPatient, the
        series is placed where the source's first slice lies, in its orientation, spacing and
        Frame of Reference; otherwise it gets a Frame of Reference of its own (axial at the
        origin), since claiming the source's with made-up geometry would misplace it in a
        viewer. Without a source a new study is made.
    pixel_spacing: (row, column) mm; default the source's when its geometry is carried, else 1 mm.
    slice_thickness: nominal thickness, mm; default the source's, else the slice spacing.
    slice_spacing: distance between slice centres, mm; default the source's
        SpacingBetweenSlices, else the thickness, else 1 mm. Slices are stacked along the
        normal of the orientation.
    window: (center, width) in output units; default the 1st..99th percentile of the values.
    overwrite: replace an existing non-empty ``out_dir`` (atomically); else that is an InputError.

    Pixels: 16-bit unsigned, ``value = stored * RescaleSlope + RescaleIntercept``; HU keep a
    slope of 1 (integer HU, intercept -1024 or lower) when the range fits 16 bits. The MR
    Image IOD has no Modality LUT, so for MR the same line goes to RealWorldValueMappingSequence
    (and `dicom_pixels` applies it when reading).
    Returns the written paths, in slice order (``IM00001.dcm``, ...). An OSError while the
    series is written (a full disk) is an InputError naming ``out_dir``; no partial series is left.
    """
    out_dir = Path(out_dir)
    if modality not in _STORAGE:
        raise InputError(f"DICOM modality '{modality}' is not supported (use CT, MR or OT).")
    if units not in _UNITS:
        raise InputError(f"DICOM units '{units}' are not supported (use {', '.join(_UNITS)}).")
    if units == "1/mm" and modality != "CT":
        raise InputError("DICOM units '1/mm' (linear attenuation) are only meaningful for modality CT.")
    values = np.asarray(images)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3 or values.size == 0:
        raise InputError(f"{out_dir}: images to write as DICOM must be (slices, H, W); got shape {values.shape}.")
    if np.iscomplexobj(values):
        raise InputError(f"{out_dir}: cannot write complex images as DICOM; write their magnitude.")
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InputError(f"{out_dir}: images to write as DICOM contain NaN or Inf values.")
    if units == "1/mm":
        values, units = mu_to_hu(values), "HU"
    hounsfield = modality == "CT" and units == "HU"
    stored, slope, intercept = _quantise(values, hounsfield)
    center, width = window if window is not None else _default_window(values)
    geometry = _geometry(source_meta, values.shape[1:], pixel_spacing, slice_thickness, slice_spacing)

    common = _common_dataset(modality, source_meta, description, hounsfield, values.shape[1:], geometry["carried"])
    if modality == "MR":  # the MR Image IOD has no Modality LUT: the scale goes to Real World Value Mapping
        common.RealWorldValueMappingSequence = _real_world_mapping(slope, intercept, units)
        center, width = (float(center) - intercept) / slope, float(width) / slope
    else:
        common.RescaleIntercept = _ds(intercept)
        common.RescaleSlope = _ds(slope)
    common.WindowCenter = _ds(center)
    common.WindowWidth = _ds(max(float(width), 1e-6))
    if float(width) < 1.0:  # PS3.3 C.11.2.1.2: a LINEAR window needs width >= 1; LINEAR_EXACT does not
        common.VOILUTFunction = "LINEAR_EXACT"
    common.PixelSpacing = [_ds(v) for v in geometry["spacing"]]
    if modality in ("CT", "MR"):
        common.SliceThickness = _ds(geometry["thickness"])
        common.ImageOrientationPatient = [_ds(v) for v in geometry["orientation"]]
    if modality == "MR":
        common.SpacingBetweenSlices = _ds(geometry["step"])

    names = [f"IM{k + 1:05d}.dcm" for k in range(values.shape[0])]
    try:
        with _atomic_folder(out_dir, overwrite) as tmp_dir:
            for k, name in enumerate(names):
                ds = _slice_dataset(common, k, stored[k], geometry, modality)
                ds.save_as(tmp_dir / name, enforce_file_format=True)
                _fsync(tmp_dir / name)
    except OSError as exc:  # a full disk: _atomic_folder has removed the partial series
        raise InputError(f"{out_dir}: cannot write the DICOM series ({write_reason(exc)}).") from None
    return [out_dir / name for name in names]


def _quantise(values: np.ndarray, hounsfield: bool) -> tuple[np.ndarray, float, float]:
    """Map float values onto uint16 with a DS-representable slope and intercept."""
    lo, hi = float(values.min()), float(values.max())
    if hounsfield:
        intercept = float(min(-1024.0, np.floor(lo)))
        slope = 1.0 if hi - intercept <= 65535 else (hi - intercept) / 65535.0
    else:
        intercept = lo
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    slope = float(_ds(slope))
    intercept = float(_ds(intercept))
    if intercept > lo:  # the DS rounding of the intercept must not push the minimum below 0
        intercept = float(_ds(np.nextafter(lo, -np.inf) - abs(lo) * 1e-9))
    stored = np.clip(np.rint((values - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _real_world_mapping(slope: float, intercept: float, units: str) -> Any:
    """Real World Value Mapping (PS3.3 C.7.6.16.2.11): value = stored * slope + intercept."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator = ("[hnsf'U]", "UCUM") if units == "HU" else ("1", "UCUM")
    unit.CodeMeaning = "Hounsfield unit" if units == "HU" else "no units"
    item = Dataset()
    item.RealWorldValueFirstValueMapped = 0
    item.RealWorldValueLastValueMapped = 65535
    item.RealWorldValueIntercept = intercept
    item.RealWorldValueSlope = slope
    item.LUTExplanation = "invdiff value scale"
    item.LUTLabel = "INVDIFF"
    item.MeasurementUnitsCodeSequence = Sequence([unit])
    return Sequence([item])


def _default_window(values: np.ndarray) -> tuple[float, float]:
    """(center, width) over the 1st..99th percentile; the full range when that is flat, and
    for a constant image a width on the scale of its value (never a fixed unit, which would
    flatten images whose values are far below 1)."""
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    width = hi - lo
    if width <= 0:
        width = max(abs(lo) * 1e-3, 1e-6)
    return ((lo + hi) / 2.0, width)


def _ds(value: float) -> str:
    """A DICOM Decimal String (at most 16 characters)."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _common_dataset(modality: str, source: Any, description: str, hounsfield: bool, shape: tuple,
                    carried: bool) -> Any:
    import pydicom.uid as uid
    from pydicom.dataset import Dataset

    from invdiff import __version__

    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = ""
    ds.PatientID = "INVDIFF"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = uid.generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    if _source_value(source, "StudyInstanceUID"):  # same study: its date and time or none, never ours
        ds.StudyDate = ds.StudyTime = ""
    if source is not None:
        for name in _PATIENT_STUDY:
            if name in source and source[name].value not in (None, ""):
                setattr(ds, name, source[name].value)
    ds.SOPClassUID = getattr(uid, _STORAGE[modality])
    ds.Modality = modality
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.SeriesNumber = _series_number(source)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = description[:64]
    ds.Laterality = _source_value(source, "Laterality") or ""  # Type 2C; dciodvfy wants it present
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.Manufacturer = "invdiff"
    ds.SoftwareVersions = __version__
    ds.DerivationDescription = f"{description} (invdiff {__version__})"[:1024]
    ds.ImageType = _IMAGE_TYPE[modality]
    ds.AcquisitionNumber = ""
    if modality in ("CT", "MR"):
        source_frame = _source_value(source, "FrameOfReferenceUID") if carried else None
        ds.FrameOfReferenceUID = source_frame or uid.generate_uid()
        ds.PositionReferenceIndicator = (_source_value(source, "PositionReferenceIndicator") or "") if carried else ""
        ds.PatientPosition = _source_value(source, "PatientPosition") or "HFS"
    else:
        ds.ConversionType = "WSD"
        ds.PatientOrientation = ""
        ds.RescaleType = "US"
    if modality == "CT":
        ds.KVP = _source_value(source, "KVP") or ""
        ds.RescaleType = "HU" if hounsfield else "US"
    if modality == "MR":
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = ""
        ds.EchoTime = ""
        ds.EchoTrainLength = ""
        for name in _MR_ACQUISITION:
            if source is not None and name in source and source[name].value not in (None, ""):
                setattr(ds, name, source[name].value)
        if "IR" in list(ds.ScanningSequence) and "InversionTime" not in ds:  # Type 2C with inversion recovery
            ds.InversionTime = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.WindowCenterWidthExplanation = "invdiff default"
    ds.SpecificCharacterSet = character_set(ds)
    return ds


def character_set(ds: Any) -> str:
    """``ISO_IR 100`` (Latin-1) when every text value of ``ds`` fits it, else ``ISO_IR 192``
    (UTF-8; PS3.3 C.12.1.1.2): a patient name in Cyrillic or Japanese carried from a source in
    another character set must not be written as question marks."""
    for element in ds:
        if element.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "UC"):
            values = list(element.value) if element.VM > 1 else [element.value]
            try:
                for v in values:
                    str(v if v is not None else "").encode("latin-1")
            except UnicodeEncodeError:
                return "ISO_IR 192"
    return "ISO_IR 100"


def _series_number(source: Any) -> int:
    number = _source_value(source, "SeriesNumber")
    try:
        return 1000 + int(number) if number not in (None, "") else 1000
    except (TypeError, ValueError):
        return 1000


def _source_value(source: Any, name: str) -> Any:
    if source is None or name not in source:
        return None
    return source[name].value


def _geometry(source: Any, shape: tuple, pixel_spacing: Any, slice_thickness: Any, slice_spacing: Any) -> dict:
    """Orientation, first position, pixel spacing, thickness and slice step (mm), from the
    arguments or the source; ``carried``: whether the source's placement was taken over."""
    orientation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    origin = [0.0, 0.0, 0.0]
    spacing = (1.0, 1.0)
    carried = False
    try:
        same_grid = source is not None and (int(_source_value(source, "Rows") or -1),
                                            int(_source_value(source, "Columns") or -1)) == tuple(shape)
        if same_grid:
            source_orientation = [float(v) for v in source.ImageOrientationPatient]
            source_origin = [float(v) for v in source.ImagePositionPatient]
            if len(source_orientation) == 6 and len(source_origin) == 3:
                orientation, origin, carried = source_orientation, source_origin, True
    except (AttributeError, TypeError, ValueError):
        carried = False
    if carried:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            spacing = tuple(float(v) for v in source.PixelSpacing)
    if pixel_spacing is not None:
        spacing = tuple(float(v) for v in pixel_spacing)
    thickness, step = slice_thickness, slice_spacing
    with contextlib.suppress(TypeError, ValueError):
        if thickness is None and _source_value(source, "SliceThickness") not in (None, ""):
            thickness = float(_source_value(source, "SliceThickness"))
        if step is None and _source_value(source, "SpacingBetweenSlices") not in (None, ""):
            step = float(_source_value(source, "SpacingBetweenSlices"))
    step = float(step if step is not None else thickness if thickness is not None else 1.0)
    thickness = float(thickness if thickness is not None else step)
    if len(spacing) != 2 or min(spacing) <= 0 or thickness <= 0 or step <= 0:
        raise InputError(
            f"DICOM pixel spacing {spacing}, slice thickness {thickness} and slice spacing {step} must be positive mm."
        )
    normal = np.cross(orientation[:3], orientation[3:])
    return {"orientation": orientation, "origin": np.asarray(origin), "normal": normal,
            "spacing": spacing, "thickness": thickness, "step": step, "carried": carried}


def _slice_dataset(common: Any, k: int, stored: np.ndarray, geometry: dict, modality: str) -> Any:
    import pydicom.uid as uid
    from pydicom.dataset import FileMetaDataset

    ds = common.copy()
    ds.SOPInstanceUID = uid.generate_uid()
    ds.InstanceNumber = k + 1
    if modality in ("CT", "MR"):
        position = geometry["origin"] + k * geometry["step"] * geometry["normal"]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ geometry["normal"]))
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "INVDIFF"
    ds.file_meta = meta
    return ds


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())


#: the names write_dicom_series gives its files; a folder holding only such files, written by
#: invdiff (Manufacturer "invdiff"), is an earlier series that ``overwrite`` may replace
SERIES_FILE = re.compile(r"IM\d{5,}\.dcm")


def _written_by_invdiff(path: Path) -> bool:
    """Whether ``path`` is a series file of write_dicom_series (its name and Manufacturer)."""
    if not (path.is_file() and SERIES_FILE.fullmatch(path.name)):
        return False
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
    except Exception:  # an unreadable file is not one of ours
        return False
    return str(header.get("Manufacturer")) == "invdiff"


def check_dicom_folder(out_dir: Path, overwrite: bool = True) -> None:
    """InputError unless ``out_dir`` can take a new series: missing, empty, or (with
    ``overwrite``) holding nothing but an earlier series of invdiff (``IM00001.dcm``, ...).

    Replacing the folder replaces all it holds, so a folder with any other file in it (the
    input data, a working directory) is refused, never emptied.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: DICOM output must be a folder, but a file with that name exists.")
    if not out_dir.is_dir():
        return
    entries = sorted(out_dir.iterdir())
    others = [p.name for p in entries if not _written_by_invdiff(p)]
    if others:
        raise InputError(f"{out_dir}: DICOM output folder holds other files ({others[0]}{', ...' if len(others) > 1 else ''}); "
                         f"choose a new or empty folder (writing the series replaces what the folder holds).")
    if entries and not overwrite:
        raise InputError(f"{out_dir}: DICOM output folder already contains files; choose a new or empty folder.")


@contextlib.contextmanager
def _atomic_folder(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success rename it onto ``out_dir``.

    A run killed before the end leaves only a hidden ``.NAME.*.tmp`` folder, never a partial
    series. An existing non-empty ``out_dir`` is replaced only with ``overwrite``, in one
    atomic exchange where the system has one (Linux renameat2), else by two renames (a kill
    between them leaves the old series in a hidden ``.NAME.*.old`` folder).
    """
    check_dicom_folder(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the DICOM output folder ({_reason(exc)}).") from None
    old_dir: Path | None = None
    try:
        yield tmp_dir
        os.chmod(tmp_dir, 0o755)
        if out_dir.is_dir() and any(out_dir.iterdir()):
            if exchange_paths(tmp_dir, out_dir):  # one atomic swap: the new series in, the old one out
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return
            old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
            os.replace(out_dir, old_dir)
        os.replace(tmp_dir, out_dir)  # onto a missing or empty folder: atomic on POSIX
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if old_dir is not None and not out_dir.exists():
            os.replace(old_dir, out_dir)
        raise
    if old_dir is not None:
        shutil.rmtree(old_dir, ignore_errors=True)
