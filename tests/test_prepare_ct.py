"""examples/prepare_ct.py: the other patient's slice lands at the Cranium slices' pixel size,
centred, in Hounsfield units, with air around it (or cropped to the field)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import prepare_ct  # noqa: E402


@pytest.fixture
def other_slice(tmp_path, monkeypatch):
    """A 100x100 CT slice at 0.5 mm whose central 20x20 mm square is 1000 HU (water elsewhere)."""
    from helpers_cli import ct_slice

    stored = np.full((100, 100), 1024, np.uint16)  # water: stored 1024, intercept -1024
    stored[30:70, 30:70] = 2024
    path = ct_slice(tmp_path / "ct.dcm", stored, spacing=(0.5, 0.5))
    monkeypatch.setattr(prepare_ct, "fetch", lambda name: path if name == "ami_ct" else pytest.fail(name))
    return path


def test_the_slice_is_resampled_to_the_pixel_size_and_centred_in_air(other_slice):
    out = prepare_ct.other_patient(pixel_mm=1.0, size=64)  # 50 mm field of 50 px, padded to 64
    assert out.shape == (1, 64, 64) and out.dtype == np.float32
    assert out[0, 0, 0] == prepare_ct.AIR_HU and out[0, 6, 32] == prepare_ct.AIR_HU
    assert out[0, 8, 32] == pytest.approx(0.0, abs=1)  # water from row 7 to 56
    assert out[0, 32, 32] == pytest.approx(1000.0, abs=1)
    square = np.flatnonzero(out[0, 32] > 500)
    assert len(square) == 20 and square[0] == 22  # the 20 mm square, centred


def test_a_field_larger_than_the_size_is_cropped_about_its_centre(other_slice):
    out = prepare_ct.other_patient(pixel_mm=0.5, size=40)  # the central 40 px of 100
    assert out.shape == (1, 40, 40)
    assert np.all(out == pytest.approx(1000.0, abs=1))
