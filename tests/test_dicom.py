"""DICOM: HU <-> mu, reading slices and series (files made here with pydicom), and the series
writer (round trips, UIDs, copied attributes, atomicity, and the dciodvfy validator)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom.uid import BasicTextSRStorage, CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from helpers_cli import ct_slice
from invdiff.errors import InputError
from invdiff.io import dicom
from invdiff.io.dicom import MU_WATER_PER_MM, hu_to_mu, mu_to_hu, write_dicom_series
from invdiff.io.images import read_image_paths, read_images


def make_ct_slice(
    path: Path,
    stored: np.ndarray,
    *,
    z: float = 0.0,
    instance: int = 1,
    series_uid: str = "1.2.3.4",
    slope: float = 2.0,
    intercept: float = -1024.0,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """A minimal CT slice written with pydicom alone (independent of invdiff's writer), with
    anisotropic 0.5 x 0.75 mm pixels, 2.5 mm slices and a non-zero origin."""
    return ct_slice(path, stored, z=z, instance=instance, series_uid=series_uid, slope=slope, intercept=intercept,
                    modality=modality, transfer_syntax=transfer_syntax, spacing=(0.5, 0.75), thickness=2.5,
                    corner=(-10.0, -10.0), patient_sex="F")


def stored_slice(rng: np.random.Generator, shape=(16, 12)) -> np.ndarray:
    return rng.integers(0, 2000, size=shape).astype(np.uint16)


# --- HU <-> mu -----------------------------------------------------------------------------


def test_hu_mu_closed_forms_and_round_trip():
    assert hu_to_mu(0.0) == pytest.approx(MU_WATER_PER_MM)  # water
    assert hu_to_mu(-1000.0) == pytest.approx(0.0)  # air
    assert mu_to_hu(2 * MU_WATER_PER_MM) == pytest.approx(1000.0)
    hu = np.random.default_rng(0).uniform(-1024, 3000, size=(3, 8, 8))
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-9)
    np.testing.assert_allclose(hu_to_mu(hu, mu_water=0.02), 0.02 * (1 + hu / 1000))
    tensor = torch.tensor(hu, dtype=torch.float64)
    assert torch.allclose(mu_to_hu(hu_to_mu(tensor)), tensor)


# --- reading -------------------------------------------------------------------------------


def test_single_ct_file_is_read_in_hu(tmp_path):
    stored = stored_slice(np.random.default_rng(1))
    path = make_ct_slice(tmp_path / "a.dcm", stored, slope=2.0, intercept=-1024.0)
    stack = read_images(path)
    assert stack.kind == "dicom" and stack.hounsfield
    assert stack.data.shape == (1, 16, 12) and stack.data.dtype == np.float32
    np.testing.assert_array_equal(stack.data[0], stored * 2.0 - 1024.0)
    assert stack.dicom_meta.PatientID == "P-042" and "PixelData" not in stack.dicom_meta
    assert stack.spacing == (2.5, 0.5, 0.75)


def test_mr_file_is_not_hounsfield(tmp_path):
    stored = stored_slice(np.random.default_rng(2))
    stack = read_images(make_ct_slice(tmp_path / "m.dcm", stored, modality="MR", slope=1.0, intercept=0.0))
    assert not stack.hounsfield
    np.testing.assert_array_equal(stack.data[0], stored)


def test_series_folder_sorted_by_position(tmp_path):
    rng = np.random.default_rng(3)
    slices = [stored_slice(rng) for _ in range(4)]
    zs = [7.5, -2.5, 5.0, 0.0]  # file order and instance numbers disagree with the geometry
    for k, (z, s) in enumerate(zip(zs, slices)):
        make_ct_slice(tmp_path / f"f{k}.dcm", s, z=z, instance=10 - k)
    stack = read_images(tmp_path)
    order = np.argsort(zs)
    np.testing.assert_array_equal(stack.data, np.stack([slices[i] * 2.0 - 1024.0 for i in order]))
    assert stack.spacing == (2.5, 0.5, 0.75)
    assert stack.source == tmp_path


def test_series_without_positions_sorted_by_instance_number(tmp_path):
    rng = np.random.default_rng(4)
    slices = [stored_slice(rng) for _ in range(3)]
    for k, s in enumerate(slices):
        path = make_ct_slice(tmp_path / f"f{k}.dcm", s, instance=3 - k)
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    stack = read_images(tmp_path)
    np.testing.assert_array_equal(stack.data[0], slices[2] * 2.0 - 1024.0)


def test_series_folder_with_uid_names_and_a_non_image_object(tmp_path):
    rng = np.random.default_rng(14)
    slices = [stored_slice(rng) for _ in range(2)]
    make_ct_slice(tmp_path / "1.2.826.0.1.7", slices[0], z=0.0)  # UID-named files, no .dcm suffix
    make_ct_slice(tmp_path / "1.2.826.0.1.8", slices[1], z=1.0)
    report = make_ct_slice(tmp_path / "1.2.826.0.1.9", slices[0], series_uid="1.2.3.4.77")
    ds = pydicom.dcmread(report)
    for name in ("PixelData", "Rows", "Columns"):
        delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.save_as(report)  # a structured report: no image
    (tmp_path / "README").write_text("not DICOM")
    stack = read_images(tmp_path)
    np.testing.assert_array_equal(stack.data, np.stack(slices) * 2.0 - 1024.0)
    assert [s.data.shape for s in read_image_paths([tmp_path])] == [(2, 16, 12)]


def test_series_file_cut_before_its_image_is_refused_by_name(tmp_path):
    """A series file whose header survives but whose image attributes and pixels do not (an
    interrupted copy: `head -c 400`) is an InputError naming it, not a slice left out in silence;
    in a lenient batch read its series fails alone. A file that is not DICOM at all, without a
    DICOM suffix, stays ignored."""
    rng = np.random.default_rng(15)
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        make_ct_slice(series / f"IM{k:05d}.dcm", stored_slice(rng), z=float(k), instance=k + 1)
    (series / "zz.dcm").write_bytes((series / "IM00000.dcm").read_bytes()[:400])
    (series / "notes").write_bytes(b"not DICOM" * 50)
    with pytest.raises(InputError, match=r"zz\.dcm: a CT Image Storage file .*truncated"):
        read_images(series)
    with pytest.raises(InputError, match=r"zz\.dcm.*truncated"):
        read_image_paths([series])
    other = tmp_path / "other"
    other.mkdir()
    make_ct_slice(other / "a.dcm", stored_slice(rng), series_uid="1.2.3.4.5")
    failures: list = []
    stacks = read_image_paths([tmp_path], failures=failures)
    assert [s.data.shape[0] for s in stacks] == [1] and len(failures) == 1 and "zz.dcm" in failures[0][1]
    (series / "zz.dcm").write_bytes((series / "IM00000.dcm").read_bytes()[:300])  # cut inside the file meta
    with pytest.raises(InputError, match=r"zz\.dcm.*truncated"):
        read_images(series)
    (series / "zz.dcm").unlink()
    assert read_images(series).data.shape == (3, 16, 12)


def test_two_files_at_one_slice_position_are_refused_naming_both(tmp_path):
    """A re-exported slice (another SOPInstanceUID, the same position) or a plain copy (the same
    SOPInstanceUID) is refused, naming both files (and the position); slices that all lie at one
    position (a cine or multi-echo series of one slice) keep the InstanceNumber order."""
    rng = np.random.default_rng(16)
    slices = [stored_slice(rng) for _ in range(3)]
    for k, s in enumerate(slices):
        make_ct_slice(tmp_path / f"f{k}.dcm", s, z=2.5 * k, instance=k + 1)
    make_ct_slice(tmp_path / "g.dcm", slices[1], z=2.5, instance=9)
    with pytest.raises(InputError, match=r"g\.dcm: lies at the same slice position as f1\.dcm \(2\.5 mm.*duplicate"):
        read_images(tmp_path)
    for name, echo in (("f1.dcm", 15.0), ("g.dcm", 90.0)):  # a dual-echo series: two images per position
        ds = pydicom.dcmread(tmp_path / name)
        ds.EchoTime = echo
        ds.save_as(tmp_path / name)
    with pytest.raises(InputError, match=r"other echo times \(15(\.0)? and 90(\.0)?\).*one folder per echo"):
        read_images(tmp_path)
    (tmp_path / "g.dcm").unlink()
    shutil.copy(tmp_path / "f1.dcm", tmp_path / "h.dcm")
    with pytest.raises(InputError, match=r"h\.dcm: is the same DICOM instance as f1\.dcm"):
        read_images(tmp_path)
    (tmp_path / "h.dcm").unlink()
    assert read_images(tmp_path).data.shape == (3, 16, 12)
    cine = tmp_path / "cine"
    cine.mkdir()
    for k, s in enumerate(slices):
        make_ct_slice(cine / f"t{k}.dcm", s, z=0.0, instance=3 - k)
    np.testing.assert_array_equal(read_images(cine).data, np.stack(slices[::-1]) * 2.0 - 1024.0)


def test_series_with_inconsistent_slice_sizes(tmp_path):
    rng = np.random.default_rng(5)
    make_ct_slice(tmp_path / "a.dcm", stored_slice(rng), z=0.0)
    make_ct_slice(tmp_path / "b.dcm", stored_slice(rng, (16, 16)), z=1.0)
    with pytest.raises(InputError, match=r"b\.dcm.*differs"):
        read_images(tmp_path)


def test_two_series_in_one_folder(tmp_path):
    rng = np.random.default_rng(6)
    for k in range(2):
        make_ct_slice(tmp_path / f"a{k}.dcm", stored_slice(rng), z=k, series_uid="1.2.3.4.1")
        make_ct_slice(tmp_path / f"b{k}.dcm", stored_slice(rng), z=k, series_uid="1.2.3.4.2")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_images(tmp_path)
    stacks = read_image_paths([tmp_path])
    assert [s.data.shape[0] for s in stacks] == [2, 2]


def test_non_dicom_named_dcm(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(InputError, match=r"fake\.dcm.*not a DICOM"):
        read_images(path)


def test_compressed_pixel_data_without_decoder(tmp_path):
    path = make_ct_slice(tmp_path / "jls.dcm", stored_slice(np.random.default_rng(7)), transfer_syntax=JPEGLSLossless)
    with pytest.raises(InputError, match=r"jls\.dcm.*compressed pixel data \(JPEG-LS"):
        read_images(path)


def test_truncated_pixel_data(tmp_path):
    path = make_ct_slice(tmp_path / "t.dcm", stored_slice(np.random.default_rng(8)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(InputError, match=r"t\.dcm"):
        read_images(path)


def test_dicom_without_pixel_data(tmp_path):
    path = make_ct_slice(tmp_path / "n.dcm", stored_slice(np.random.default_rng(9)))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(InputError, match=r"n\.dcm.*no PixelData"):
        read_images(path)


# --- writing -------------------------------------------------------------------------------


def hu_volume(shape=(3, 24, 20)) -> np.ndarray:
    rng = np.random.default_rng(10)
    return rng.uniform(-1100.0, 1500.0, size=shape)


def test_ct_round_trip_in_hu(tmp_path):
    hu = hu_volume()
    paths = write_dicom_series(tmp_path / "ct", hu, modality="CT", units="HU", pixel_spacing=(0.8, 0.9), slice_thickness=2.0)
    assert [p.name for p in paths] == ["IM00001.dcm", "IM00002.dcm", "IM00003.dcm"]
    stack = read_images(tmp_path / "ct")
    assert stack.hounsfield
    np.testing.assert_allclose(stack.data, hu, atol=0.5 + 1e-3)  # integer HU
    assert stack.spacing == pytest.approx((2.0, 0.8, 0.9))
    ds = pydicom.dcmread(paths[1])
    assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 0)
    assert float(ds.RescaleSlope) == 1.0 and ds.RescaleType == "HU"
    assert [float(v) for v in ds.ImagePositionPatient] == [0.0, 0.0, 2.0]


def test_mu_units_are_written_as_hu(tmp_path):
    hu = hu_volume((1, 16, 16))
    write_dicom_series(tmp_path / "ct", hu_to_mu(hu), modality="CT", units="1/mm")
    np.testing.assert_allclose(read_images(tmp_path / "ct").data, hu, atol=0.5 + 1e-2)


@pytest.mark.parametrize("modality", ["MR", "OT"])
def test_mr_and_secondary_capture_round_trip(tmp_path, modality):
    values = np.random.default_rng(11).uniform(0.0, 3.7, size=(2, 16, 16))
    write_dicom_series(tmp_path / "out", values, modality=modality, units="arbitrary")
    stack = read_images(tmp_path / "out")
    assert not stack.hounsfield
    np.testing.assert_allclose(stack.data, values, atol=3.7 / 65535)  # half a quantisation step, plus slack


@settings(max_examples=25, deadline=None)
@given(
    values=arrays(np.float64, (2, 3, 4), elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)),
    modality=st.sampled_from(["CT", "MR", "OT"]),
)
def test_round_trip_error_is_at_most_half_a_quantisation_step(values, modality):
    units = "HU" if modality == "CT" else "arbitrary"
    value_range = values.max() - min(values.min(), -1024.0 if units == "HU" else values.min())
    step = max(value_range / 65535, 1.0 if units == "HU" else 0.0)
    atol = 0.5 * step * (1 + 1e-6) + 1e-6 * np.abs(values).max() + 1e-9
    with tempfile.TemporaryDirectory() as folder:
        write_dicom_series(Path(folder) / "s", values, modality=modality, units=units)
        try:
            back = read_images(Path(folder) / "s").data.astype(np.float64)
        except InputError as exc:  # the reader refuses all-zero images (documented)
            assert "all zeros" in str(exc) and np.abs(values).max() <= atol
            return
    np.testing.assert_allclose(back, values, rtol=0, atol=atol)


def test_uids_and_copied_attributes(tmp_path):
    source_path = make_ct_slice(tmp_path / "src.dcm", stored_slice(np.random.default_rng(12), (24, 20)), z=12.5)
    source = read_images(source_path).dicom_meta
    paths = write_dicom_series(tmp_path / "a", hu_volume(), modality="CT", units="HU", source_meta=source,
                               description="DPS 100 steps")
    datasets = [pydicom.dcmread(p) for p in paths]
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3"}
    assert {str(ds.PatientName) for ds in datasets} == {"Doe^Jane"} and datasets[0].PatientID == "P-042"
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1 and datasets[0].SeriesInstanceUID != "1.2.3.4"
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert datasets[0].FrameOfReferenceUID == "1.2.3.9"
    assert [float(v) for v in datasets[0].PixelSpacing] == [0.5, 0.75]  # same grid as the source
    assert [float(v) for v in datasets[2].ImagePositionPatient] == [-10.0, -10.0, 12.5 + 2 * 2.5]
    assert datasets[0].SeriesDescription == "DPS 100 steps"
    other = pydicom.dcmread(write_dicom_series(tmp_path / "b", hu_volume(), modality="CT", units="HU")[0])
    assert other.StudyInstanceUID not in ("1.2.3", datasets[0].StudyInstanceUID)


def test_window_attributes(tmp_path):
    paths = write_dicom_series(tmp_path / "w", hu_volume(), modality="CT", units="HU", window=(40.0, 400.0))
    ds = pydicom.dcmread(paths[0])
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)


def test_existing_folder_and_killed_run_leave_no_partial_series(tmp_path, monkeypatch):
    out = tmp_path / "series"
    write_dicom_series(out, hu_volume(), modality="CT", units="HU")
    with pytest.raises(InputError, match="already contains files"):
        write_dicom_series(out, hu_volume(), modality="CT", units="HU")
    original = dicom._slice_dataset

    def failing(common, k, *args):
        if k == 2:
            raise KeyboardInterrupt  # a run killed while writing the third slice
        return original(common, k, *args)

    monkeypatch.setattr(dicom, "_slice_dataset", failing)
    with pytest.raises(KeyboardInterrupt):
        write_dicom_series(tmp_path / "new", hu_volume(), modality="CT", units="HU")
    with pytest.raises(KeyboardInterrupt):
        write_dicom_series(out, hu_volume(), modality="CT", units="HU", overwrite=True)
    monkeypatch.setattr(dicom, "_slice_dataset", original)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no "new", no temporary folders
    assert len(list(out.iterdir())) == 3
    old_uid = pydicom.dcmread(out / "IM00001.dcm").SeriesInstanceUID
    write_dicom_series(out, hu_volume((2, 24, 20)), modality="CT", units="HU", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["IM00001.dcm", "IM00002.dcm"]
    assert pydicom.dcmread(out / "IM00001.dcm").SeriesInstanceUID != old_uid


def test_writer_rejects_bad_values(tmp_path):
    bad = hu_volume()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_dicom_series(tmp_path / "x", bad, modality="CT", units="HU")
    with pytest.raises(InputError, match="modality"):
        write_dicom_series(tmp_path / "x", hu_volume(), modality="PET", units="HU")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def run_dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.fail("dciodvfy is not installed: install the Debian package dicom3tools (apt-get install -y dicom3tools).")
    result = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


@pytest.mark.parametrize("modality,units", [("CT", "HU"), ("MR", "arbitrary"), ("OT", "arbitrary")])
def test_written_files_pass_dciodvfy(tmp_path, modality, units):
    values = hu_volume() if units == "HU" else np.abs(hu_volume())
    source = None
    if modality == "CT":  # also validate the attributes copied from a source
        source = read_images(make_ct_slice(tmp_path / "src.dcm", stored_slice(np.random.default_rng(13)))).dicom_meta
    paths = write_dicom_series(tmp_path / "out", values, modality=modality, units=units, source_meta=source)
    for path in (paths[0], paths[-1]):
        report = run_dciodvfy(path)
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"dciodvfy on {path.name}:\n{report}"
        assert {"CT": "CTImage", "MR": "MRImage", "OT": "SCImage"}[modality] in report
