"""DICOM geometry and per-frame attributes: a derived series lies where its source lies (or
claims no Frame of Reference), thickness and slice spacing are kept apart, enhanced
multi-frame CT is read through its functional groups, MONOCHROME1 is turned bright-is-large,
and the default window follows the data's own scale. Source files are made with pydicom alone."""

from __future__ import annotations


import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from helpers_cli import ct_slice, dciodvfy_errors, invdiff
from invdiff.io.dicom import write_dicom_series
from invdiff.io.dicom_meta import meta_from_json, meta_to_json
from invdiff.io.images import read_images

# A sagittal-oblique MR slice: rows run anterior -> posterior, columns superior -> inferior.
OBLIQUE = [0.0752, 0.9972, 0.0022, 0.0264, 0.0002, -0.9997]
CORNER = [44.6, -139.7, 131.8]


def mr_slice(path, shape=(24, 20), *, inversion=True):
    """An oblique inversion-recovery MR slice (3 T, TR 2530 ms, TE 1.66 ms) without
    InversionTime, with 1.1 x 0.9 mm pixels and 1 mm slices."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "Roe^Rich", "P-7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.5", "1.2.5.1", "1.2.5.9"
    ds.SeriesNumber = 3
    ds.ImageOrientationPatient = OBLIQUE
    ds.ImagePositionPatient = CORNER
    ds.PixelSpacing = [1.1, 0.9]
    ds.SliceThickness = 1.0
    ds.PatientPosition = "HFS"
    ds.ScanningSequence = ["GR", "IR"] if inversion else "GR"
    ds.SequenceVariant = ["SK", "SP", "MP"]
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 2530, 1.66, 3
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4000, size=shape).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def carried(path):
    """The source attributes as a measurement file keeps them (JSON) and the writer gets them."""
    return meta_from_json(meta_to_json(read_images(path).dicom_meta))


def test_series_on_the_source_grid_lies_where_the_source_lies(tmp_path):
    source = carried(mr_slice(tmp_path / "src.dcm"))
    paths = write_dicom_series(tmp_path / "out", np.ones((2, 24, 20)), modality="MR", source_meta=source)
    first, second = (pydicom.dcmread(p) for p in paths)
    assert [float(v) for v in first.ImageOrientationPatient] == pytest.approx(OBLIQUE)
    assert [float(v) for v in first.ImagePositionPatient] == pytest.approx(CORNER)
    assert [float(v) for v in first.PixelSpacing] == [1.1, 0.9]  # row, column: not one number twice
    assert first.FrameOfReferenceUID == "1.2.5.9"
    normal = np.cross(OBLIQUE[:3], OBLIQUE[3:])
    step = np.asarray([float(v) for v in second.ImagePositionPatient]) - np.asarray(CORNER)
    np.testing.assert_allclose(step, 1.0 * normal, atol=1e-6)  # one slice spacing along the normal
    # the acquisition is the source's, and the inversion recovery needs its (empty) InversionTime
    assert (float(first.RepetitionTime), float(first.EchoTime), float(first.MagneticFieldStrength)) == (2530, 1.66, 3)
    assert list(first.ScanningSequence) == ["GR", "IR"] and "InversionTime" in first
    for path in paths:
        assert not dciodvfy_errors(path)


def test_series_on_another_grid_claims_no_frame_of_reference(tmp_path):
    source = carried(mr_slice(tmp_path / "src.dcm"))
    ds = pydicom.dcmread(write_dicom_series(tmp_path / "out", np.ones((1, 32, 32)), modality="MR", source_meta=source)[0])
    assert ds.FrameOfReferenceUID != "1.2.5.9"  # its geometry is made up, so it is not the source's frame
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert ds.StudyInstanceUID == "1.2.5" and ds.PatientID == "P-7"  # still the same patient and study
    assert not dciodvfy_errors(tmp_path / "out" / "IM00001.dcm")


def test_thickness_and_slice_spacing_stay_apart(tmp_path):
    (tmp_path / "src").mkdir()
    for z in (0.0, 5.0, 10.0):  # 2.5 mm slices, 5 mm apart
        ct_slice(tmp_path / "src" / f"s{z:g}.dcm", np.zeros((16, 12), np.uint16), z=z, thickness=2.5, spacing=(0.7, 0.8))
    stack = read_images(tmp_path / "src")
    assert stack.spacing == pytest.approx((5.0, 0.7, 0.8))
    source = meta_from_json(meta_to_json(stack.dicom_meta))
    for modality in ("CT", "MR"):
        paths = write_dicom_series(tmp_path / modality, np.ones((3, 16, 12)), modality=modality, source_meta=source,
                                   slice_spacing=stack.spacing[0])
        datasets = [pydicom.dcmread(p) for p in paths]
        assert [float(d.ImagePositionPatient[2]) for d in datasets] == [0.0, 5.0, 10.0]
        assert float(datasets[0].SliceThickness) == 2.5
        if modality == "MR":
            assert float(datasets[0].SpacingBetweenSlices) == 5.0


def test_reconstructed_dicom_keeps_an_oblique_source_in_place(tmp_path):
    """simulate from an oblique MR DICOM -> reconstruct --dicom: the derived series overlays the source."""
    src = mr_slice(tmp_path / "src.dcm", (32, 32))
    assert invdiff("simulate", str(src), "--operator", "mri", "--acceleration", "2", "--out", str(tmp_path / "k.h5"),
                   "--quiet") == 0
    assert invdiff("reconstruct", str(tmp_path / "k.h5"), "--method", "zero-filled", "--out", str(tmp_path / "r.h5"),
                   "--dicom", str(tmp_path / "d"), "--quiet") == 0
    ds = pydicom.dcmread(tmp_path / "d" / "IM00001.dcm")
    assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(CORNER)
    assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(OBLIQUE)
    assert [float(v) for v in ds.PixelSpacing] == [1.1, 0.9] and ds.FrameOfReferenceUID == "1.2.5.9"


def enhanced_ct(path, frames_hu, z_of_frame):
    """An Enhanced CT Image with its rescale, pixel measures and orientation in the shared
    functional groups and each frame's position in its per-frame group."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "P", "1.2", "1.2.1", "1.2.9"
    frames, rows, cols = frames_hu.shape
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    transform, measures, orientation = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, -1024, "HU"
    measures.PixelSpacing, measures.SliceThickness = [0.7, 0.8], 2.5
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for z in z_of_frame:
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [-5.0, -5.0, float(z)]
        group.PlanePositionSequence = Sequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = (frames_hu + 1024).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_ct_is_read_through_its_functional_groups(tmp_path):
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 1500, size=(4, 10, 12)).astype(np.float64)
    z_of_frame = [-50.0, -52.5, -55.0, -57.5]  # stored from the top down
    stack = read_images(enhanced_ct(tmp_path / "e.dcm", hu, z_of_frame))
    assert stack.hounsfield
    np.testing.assert_array_equal(stack.data, hu[::-1])  # in HU (not stored values), sorted by position
    assert stack.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert [float(v) for v in stack.dicom_meta.ImagePositionPatient] == [-5.0, -5.0, -57.5]


@pytest.mark.parametrize("modality", ["DX", "CT"])
def test_monochrome1(tmp_path, modality):
    stored = np.arange(16 * 12, dtype=np.uint16).reshape(16, 12)
    path = ct_slice(tmp_path / "m.dcm", stored, modality=modality, slope=1.0, intercept=0.0 if modality == "DX" else -1024.0)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    data = read_images(path).data[0]
    if modality == "DX":  # minimum displayed white: bright must mean large after reading
        np.testing.assert_array_equal(data, 65535.0 - stored)
    else:  # HU are physical: kept as they are
        np.testing.assert_array_equal(data, stored - 1024.0)


def test_default_window_follows_the_scale_of_small_values(tmp_path):
    values = np.linspace(0.0, 4e-4, 16 * 16).reshape(1, 16, 16)
    ds = pydicom.dcmread(write_dicom_series(tmp_path / "w", values, modality="MR")[0])
    slope = float(ds.RealWorldValueMappingSequence[0].RealWorldValueSlope)
    width = float(ds.WindowWidth) * slope  # the MR window is in stored units
    assert 0.9 * 0.98 * 4e-4 <= width <= 4e-4  # the 1st..99th percentile, not a fixed width of 1
    constant = pydicom.dcmread(write_dicom_series(tmp_path / "c", np.full((1, 8, 8), 1e-5), modality="OT")[0])
    assert 0 < float(constant.WindowWidth) < 1e-4


def test_ct_with_non_square_pixels_warns_that_radon_takes_them_as_square(tmp_path, capsys):
    """The Radon transform has one pixel size: a 0.7 x 0.8 mm CT slice is simulated with the
    column spacing, and the run says so (and not for square pixels)."""
    stored = np.random.default_rng(0).integers(900, 1200, size=(16, 16)).astype(np.uint16)
    for name, spacing in (("square", (0.8, 0.8)), ("oblong", (0.7, 0.8))):
        src = ct_slice(tmp_path / f"{name}.dcm", stored, spacing=spacing)
        capsys.readouterr()
        assert invdiff("simulate", src, "--operator", "radon", "--views", "8", "--noise-rel", "0.01",
                       "--out", tmp_path / f"{name}.h5", "--json") == 0
        err = capsys.readouterr().err
        assert ("0.7 x 0.8 mm" in err and "square" in err) == (name == "oblong"), err
        assert invdiff("simulate", src, "--operator", "radon", "--views", "8", "--noise-rel", "0.01",
                       "--out", tmp_path / f"{name}_quiet.h5", "--quiet") == 0
        assert capsys.readouterr().err == ""  # --quiet silences the warning
