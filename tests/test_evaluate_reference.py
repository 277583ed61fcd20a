"""`invdiff evaluate --reference` reads a reference by the rules `invdiff simulate` read the
image it measured (a DICOM series folder, an HDF5 stack's only image dataset, a NIfTI volume
along --axis) and in the units of the reconstruction (a CT DICOM in HU against a reconstruction
in 1/mm); `invdiff info` gives the signed range of real data."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from helpers_cli import ct_slice, invdiff


def _scores(capsys, *args) -> dict:
    capsys.readouterr()
    assert invdiff("evaluate", *map(str, args), "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def ct_series(tmp_path):
    """Three 32x32 CT slices in HU (a disc of 40 HU in air), 0.7 mm pixels."""
    folder = tmp_path / "series"
    folder.mkdir()
    r, c = np.mgrid[:32, :32]
    hu = np.where((r - 16) ** 2 + (c - 15) ** 2 < 120, 40, -1000)
    for i in range(3):
        ct_slice(folder / f"IM{i}", (hu + 1024 + 5 * i).astype(np.uint16), z=2.5 * i, instance=i + 1, spacing=(0.7, 0.7))
    return folder


def test_a_ct_dicom_reference_in_hu_is_compared_in_the_reconstructions_units(ct_series, tmp_path, capsys):
    sino, recon = tmp_path / "s.h5", tmp_path / "r.h5"
    assert invdiff("simulate", ct_series, "--operator", "radon", "--views", "30", "--noise-rel", "0.01",
                   "--out", sino, "--quiet") == 0
    assert invdiff("reconstruct", sino, "--method", "fbp", "--out", recon, "--quiet") == 0
    with h5py.File(recon) as f:
        assert json.loads(f.attrs["invdiff_provenance"])["units"] == "mu_per_mm"
    truth = _scores(capsys, recon)  # the stored ground truth (1/mm)
    folder = _scores(capsys, recon, "--reference", ct_series)
    assert folder["psnr"] == pytest.approx(truth["psnr"], abs=1e-6)
    assert folder["ssim"] == pytest.approx(truth["ssim"], abs=1e-6)
    assert truth["psnr"] > 15  # an FBP of a disc, not a comparison of 1/mm with HU (about 2 dB)


def test_an_hdf5_stack_needs_no_key_when_it_holds_one_image_dataset(tmp_path, capsys):
    images = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32) + 0.5
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        f.create_group("exam")["slices"] = images
    np.save(tmp_path / "stack.npy", images)
    sim, recon = tmp_path / "m.h5", tmp_path / "r.h5"
    assert invdiff("simulate", tmp_path / "stack.h5", "--operator", "blur", "--psf", "gaussian:1", "--noise-std",
                   "0.01", "--out", sim, "--quiet") == 0
    assert invdiff("reconstruct", sim, "--method", "wiener", "--out", recon, "--quiet") == 0
    expected = _scores(capsys, recon, "--reference", tmp_path / "stack.npy")
    assert _scores(capsys, recon, "--reference", tmp_path / "stack.h5")["psnr"] == pytest.approx(expected["psnr"])


def test_a_nifti_reference_is_sliced_along_the_axis_simulate_used(tmp_path, capsys):
    nibabel = pytest.importorskip("nibabel")
    volume = np.random.default_rng(1).random((20, 24, 16)).astype(np.float32) + 0.5
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    sim, recon = tmp_path / "m.h5", tmp_path / "r.h5"
    assert invdiff("simulate", tmp_path / "v.nii.gz", "--axis", "0", "--operator", "blur", "--psf", "gaussian:1",
                   "--noise-std", "0.01", "--out", sim, "--quiet") == 0
    assert invdiff("reconstruct", sim, "--method", "wiener", "--out", recon, "--quiet") == 0
    truth = _scores(capsys, recon)
    assert _scores(capsys, recon, "--reference", tmp_path / "v.nii.gz", "--axis", "0")["psnr"] == pytest.approx(truth["psnr"])
    capsys.readouterr()
    assert invdiff("evaluate", recon, "--reference", tmp_path / "v.nii.gz") == 2  # axial slices: another shape
    np.save(tmp_path / "v.npy", volume[0])
    assert invdiff("evaluate", recon, "--reference", tmp_path / "v.npy", "--axis", "0") == 2
    err = capsys.readouterr().err
    assert "--axis slices NIfTI volumes" in err and "Traceback" not in err


def test_info_gives_the_signed_range_of_real_data_and_the_magnitude_range_of_complex(ct_series, tmp_path, capsys):
    np.save(tmp_path / "neg.npy", np.linspace(-1000, 500, 1024, dtype=np.float32).reshape(32, 32))
    capsys.readouterr()
    assert invdiff("info", tmp_path / "neg.npy", "--json") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["min"] == -1000 and data["max"] == 500
    assert invdiff("info", ct_series, "--json") == 0
    assert json.loads(capsys.readouterr().out)["data"]["min"] == -1000  # air in HU, not |HU|
    kspace = tmp_path / "k.h5"
    assert invdiff("simulate", tmp_path / "neg.npy", "--operator", "mri", "--acceleration", "2", "--noise-std",
                   "0.01", "--out", kspace, "--quiet") == 0
    capsys.readouterr()
    assert invdiff("info", kspace, "--json") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert "min" not in data and 0 <= data["abs_min"] < data["abs_max"]


def test_key_chooses_the_dataset_of_a_measurement_reference(tmp_path, capsys):
    """--key is honoured for a simulated measurement as for any HDF5 reference: the dataset it
    names is the reference (a missing one names the file); without it, the ground truth."""
    from helpers_cli import brain32, expect_bad

    np.save(tmp_path / "img.npy", brain32(1))
    sino, recon = tmp_path / "sino.h5", tmp_path / "fbp.h5"
    assert invdiff("simulate", tmp_path / "img.npy", "--views", "20", "--noise-rel", "0.01", "--out", sino, "-q") == 0
    assert invdiff("reconstruct", sino, "--method", "fbp", "--out", recon, "-q") == 0
    default = _scores(capsys, recon, "--reference", sino)
    assert _scores(capsys, recon, "--reference", sino, "--key", "ground_truth") == default
    expect_bad(tmp_path, capsys, ["evaluate", recon, "--reference", sino, "--key", "nope", "--json"], sino,
               "HDF5 has no dataset 'nope'")
    message = expect_bad(tmp_path, capsys, ["evaluate", recon, "--reference", sino, "--key", "sinogram"], sino, "shape")
    assert "(1, 20, 46)" in message  # the sinogram was read, not the ground truth
    # another image under another key of the same file: scored against it, residual still from the file
    with h5py.File(sino, "r+") as f:
        f["other"] = f["ground_truth"][()] * 0.5
    other = _scores(capsys, recon, "--reference", sino, "--key", "other")
    assert other["nmse"] != pytest.approx(default["nmse"]) and other["residual"] == pytest.approx(default["residual"])
