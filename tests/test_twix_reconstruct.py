"""`invdiff reconstruct` on a raw Siemens data file as it is (data/samples/twix/gre.dat, the
real 2-coil 3 T phantom scan of twixtools, MIT): the coil-combined image of the scanner's own
k-space, compared with the root-sum-of-squares image computed here with NumPy alone."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers_cli import invdiff
from invdiff.io.twix import read_twix
from invdiff.io.twix_measurement import measurement_from_twix

GRE = Path(__file__).resolve().parent.parent / "data" / "samples" / "twix" / "gre.dat"


def rss(kspace: np.ndarray) -> np.ndarray:
    """sqrt(sum_c |F^H y_c|^2) of ``(coils, H, W)`` centred k-space."""
    coils = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    return np.sqrt((np.abs(coils) ** 2).sum(0))


def test_measurement_from_twix():
    m = measurement_from_twix(GRE)
    assert m.data.shape == (1, 2, 160, 160) and m.operator["name"] == "mri"
    params = m.operator["params"]
    assert params["image_shape"] == [2, 160, 160] and params["coil_maps"] == "estimate"
    assert params["mask"].shape == (160, 160) and params["mask"].all()  # fully sampled
    std = params["noise"]["std"]
    raw = read_twix(GRE)
    corners = np.abs(raw["kspace"][..., :20, :20])
    assert 0 < std < np.median(corners) * 3  # on the scale of the empty k-space corners


@pytest.mark.parametrize("method", ["zero-filled", "cg-sense"])
def test_reconstruct_raw_file_matches_root_sum_of_squares(tmp_path, method):
    out = tmp_path / f"{method}.h5"
    assert invdiff("reconstruct", str(GRE), "--method", method, "--out", str(out), "--quiet") == 0
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][0]
        provenance = json.loads(f.attrs["invdiff_provenance"])
    assert provenance["input"] == str(GRE)
    reference = rss(read_twix(GRE)["kspace"][0])
    inside = reference > 0.2 * reference.max()  # the phantom, where ESPIRiT keeps its maps
    ratio = rec[inside] / reference[inside]
    # unit-norm maps: |sum_c conj(S_c) x_c| = RSS where the maps explain the coils
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.corrcoef(rec[inside], reference[inside])[0, 1] > 0.95


def test_a_dat_file_that_is_not_siemens_raw_data(tmp_path, capsys):
    bad = tmp_path / "notes.dat"
    bad.write_text("this is a text file, not a scan\n" * 4)
    assert invdiff("reconstruct", str(bad), "--method", "zero-filled", "--out", str(tmp_path / "r.h5")) == 2
    assert "notes.dat" in capsys.readouterr().err and not (tmp_path / "r.h5").exists()


def test_info_describes_a_raw_file_as_the_measurement_reconstruct_reads(tmp_path, capsys):
    assert invdiff("info", str(GRE), "--json") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["kind"] == "measurement" and described["operator"]["name"] == "mri"
    assert described["data"]["shape"] == [1, 2, 160, 160] and described["data"]["finite"]
    assert described["operator_arrays"] == {"params/mask": [160, 160]}
    bad = tmp_path / "notes.dat"
    bad.write_text("this is a text file, not a scan\n" * 4)
    assert invdiff("info", str(bad)) == 2
    assert "notes.dat" in capsys.readouterr().err
