"""What the DICOM reader tells the user: colour DICOM by its PhotometricInterpretation (PALETTE
COLOR has one sample per pixel, but its values are colour-table indices), a folder with several
series named series by series, and no pydicom warnings on inputs that are read correctly."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from helpers_cli import ct_slice
from invdiff.errors import InputError
from invdiff.io.images import read_images


def _slice(path: Path, z: float = 0.0, **attributes) -> Path:
    """A 16 x 12 MR slice (pydicom alone) with ``attributes`` set on top."""
    stored = np.random.default_rng(int(z)).integers(1, 2000, size=(16, 12)).astype(np.uint16)
    ct_slice(path, stored, z=z, modality="MR", slope=1.0, intercept=0.0)
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "RGB", "YBR_FULL"])
def test_colour_photometric_interpretation_is_refused_with_one_sample(tmp_path, photometric):
    path = _slice(tmp_path / "c.dcm", PhotometricInterpretation=photometric)
    with pytest.raises(InputError, match=rf"c\.dcm: expected a single-channel image; got {photometric} \(colour DICOM\)\.$"):
        read_images(path)


def test_pydicom_palette_example_is_refused():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("examples_palette.dcm")
    if path is None:
        pytest.skip("this pydicom ships no examples_palette.dcm (the synthetic cases above cover it)")
    with pytest.raises(InputError, match=r"examples_palette\.dcm: .*got PALETTE COLOR \(colour DICOM\)"):
        read_images(path)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_monochrome_is_still_read(tmp_path, photometric):
    assert read_images(_slice(tmp_path / "m.dcm", PhotometricInterpretation=photometric)).data.shape == (1, 16, 12)


def test_several_series_are_named_in_the_error(tmp_path):
    for k in range(3):
        _slice(tmp_path / f"ax{k}.dcm", z=k, SeriesInstanceUID="1.2.3.4.1", SeriesNumber=3, SeriesDescription="AX T1")
    _slice(tmp_path / "loc.dcm", SeriesInstanceUID="1.2.3.4.2", SeriesNumber=1, SeriesDescription="Localizer")
    _slice(tmp_path / "x.dcm", SeriesInstanceUID="1.2.3.4.3", Modality="CT")
    with pytest.raises(InputError) as caught:
        read_images(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: folder holds 3 DICOM series (series 3 'AX T1' (MR, 3 files); series 1 'Localizer' (MR, 1 file); "
        "unnumbered series (CT, 1 file)); give --series with the number of the one to read, or a folder that holds one series."
    )


def test_padded_pixel_data_is_read_without_pydicom_warnings():
    """MR_small_padded.dcm has 128 bytes of padding after its pixels: pydicom warns, invdiff
    reads it correctly and says nothing (a warning would reach the user's terminal)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small_padded.dcm")
    if path is None:
        pytest.skip("this pydicom ships no MR_small_padded.dcm")
    level = logging.getLogger("pydicom").level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = read_images(path)
    assert stack.data.shape == (1, 64, 64)
    assert [str(w.message) for w in caught] == []
    assert logging.getLogger("pydicom").level == level  # silenced while reading only
