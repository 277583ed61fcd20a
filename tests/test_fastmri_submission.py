"""fastMRI files end to end: results are the centre of the image at the targets' size (a
fastMRI submission), and `evaluate` compares them with the file's own target."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from helpers_cli import invdiff
from invdiff.io.fastmri import center_crop, recon_space, target_shape

H, W = 32, 24  # k-space with 2x readout oversampling along H
HEADER = (b"<?xml version='1.0'?><ismrmrdHeader><encoding><encodedSpace><matrixSize><x>32</x><y>24</y>"
          b"<z>1</z></matrixSize></encodedSpace><reconSpace><matrixSize><x>16</x><y>16</y><z>1</z>"
          b"</matrixSize></reconSpace></encoding></ismrmrdHeader>")


def image(slices=2):
    """A smooth complex phantom ``(slices, H, W)`` in the central half of the readout."""
    y, x = np.mgrid[:H, :W]
    blob = np.exp(-(((y - H / 2) / 5.0) ** 2 + ((x - W / 2) / 4.0) ** 2))
    return np.stack([blob * (1 + 0.1 * s) * np.exp(0.3j * s) for s in range(slices)])


def kspace_of(img):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write(path, *, target=True, header=True):
    img = image()
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace_of(img).astype(np.complex64))  # single-coil, fully sampled
        if header:
            f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER))
        if target:
            f.create_dataset("reconstruction_esc", data=center_crop(np.abs(img), (16, 16)).astype(np.float32))
        f.attrs["acquisition"] = "CORPD_FBK"
    return path


def test_recon_space_and_target_shape():
    assert recon_space(HEADER.decode()) == (16, 16)
    assert recon_space("<ismrmrdHeader></ismrmrdHeader>") is None
    kspace = np.zeros((1, 1, H, W), np.complex64)
    assert target_shape({"kspace": kspace, "ismrmrd_header": HEADER.decode()}) == (16, 16)
    assert target_shape({"kspace": kspace, "reconstruction_rss": np.zeros((1, 20, 12))}) == (20, 12)
    assert target_shape({"kspace": kspace, "reconstruction_rss": np.zeros((1, 40, 30))}) is None  # not larger
    assert target_shape({"kspace": kspace}) is None


@pytest.mark.parametrize("target", [True, False])
def test_result_is_the_centre_crop_and_evaluates_against_the_target(tmp_path, target):
    src = write(tmp_path / "file1000.h5", target=target)
    out = tmp_path / "r.h5"
    assert invdiff("reconstruct", str(src), "--method", "zero-filled", "--out", str(out), "--quiet") == 0
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
        provenance = json.loads(f.attrs["invdiff_provenance"])
    assert rec.shape == (2, 16, 16) and provenance["fastmri_crop"] == [16, 16]
    expected = center_crop(np.abs(image()), (16, 16))  # fully sampled: zero-filling is exact
    np.testing.assert_allclose(rec, expected, atol=1e-5)
    if target:
        assert invdiff("evaluate", str(out), "--reference", str(src), "--json") == 0
    else:
        assert invdiff("evaluate", str(out), "--reference", str(src), "--json") == 2  # no target to compare with


def test_without_header_or_target_the_whole_image_is_kept(tmp_path):
    src = write(tmp_path / "file2.h5", target=False, header=False)
    out = tmp_path / "r.h5"
    assert invdiff("reconstruct", str(src), "--method", "zero-filled", "--out", str(out), "--quiet") == 0
    with h5py.File(out, "r") as f:
        assert f["reconstruction"].shape == (2, H, W)


def test_evaluate_reports_the_target_psnr(tmp_path, capsys):
    src = write(tmp_path / "file3.h5")
    out = tmp_path / "r.h5"
    assert invdiff("reconstruct", str(src), "--method", "zero-filled", "--out", str(out), "--quiet") == 0
    capsys.readouterr()
    assert invdiff("evaluate", str(out), "--json") == 0  # the reference defaults to the input file
    scores = json.loads(capsys.readouterr().out)
    assert scores["psnr"] > 80 and "residual" not in scores  # exact; a cropped image has no data residual
