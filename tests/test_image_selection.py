"""Picking part of an input: one volume of a 4-D NIfTI (`--volume`), one series of a DICOM
folder that holds several (`--series`), colour images read as grey (`--grey`); in the library
(read_images) and through simulate, evaluate and train."""

from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image

from helpers_cli import ct_slice, invdiff
from invdiff.errors import InputError
from invdiff.io.images import read_images


def nifti(path: Path, data: np.ndarray) -> Path:
    """``data`` as NIfTI with a rotated and mirrored affine (reoriented on reading, so a 4-D
    file's volumes go through the same reorientation as a 3-D file's)."""
    nibabel.save(nibabel.Nifti1Image(data.astype(np.float32), np.array([[0, -1.5, 0, 10], [1.5, 0, 0, -4], [0, 0, -2.0, 3], [0, 0, 0, 1]])), path)
    return path


@pytest.fixture
def fmri(tmp_path):
    """A 4-D NIfTI of 3 volumes 20 x 24 x 4 (each volume its own values) and, beside it, each
    volume as its own 3-D NIfTI: the independent reference of what --volume N must read."""
    rng = np.random.default_rng(0)
    data = rng.uniform(0.1, 1.0, size=(20, 24, 4, 3))
    singles = [nifti(tmp_path / f"vol{k}.nii.gz", data[..., k]) for k in range(3)]
    return nifti(tmp_path / "bold.nii.gz", data), singles


def test_volume_reads_that_volume_of_a_4d_nifti(fmri):
    four_d, singles = fmri
    for k, single in enumerate(singles):
        picked = read_images(four_d, volume=k)
        np.testing.assert_array_equal(picked.data, read_images(single).data)
        assert picked.spacing == read_images(single).spacing
    assert not np.array_equal(read_images(four_d, volume=0).data, read_images(four_d, volume=1).data)


def test_4d_nifti_without_volume_says_how_to_pick_one(fmri):
    with pytest.raises(InputError, match=r"holds 3 volumes .*give --volume N \(0 to 2\)"):
        read_images(fmri[0])


@pytest.mark.parametrize("volume", [-1, 3])
def test_volume_out_of_range(fmri, volume):
    with pytest.raises(InputError, match=r"--volume must lie between 0 and 2 .*got " + str(volume)):
        read_images(fmri[0], volume=volume)


def test_volume_is_refused_for_3d_nifti_and_other_formats(fmri, tmp_path):
    with pytest.raises(InputError, match="this one is 3D"):
        read_images(fmri[1][0], volume=0)
    np.save(tmp_path / "x.npy", np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="--volume picks one volume of a 4-D NIfTI file, not of a NPY file"):
        read_images(tmp_path / "x.npy", volume=0)


def two_series(folder: Path, numbers=(3, 7)) -> dict[int, np.ndarray]:
    """Two 2-slice CT series with the given SeriesNumbers in one folder; returns each one's
    stored values by number (read back through pydicom: the reference)."""
    rng = np.random.default_rng(1)
    values = {}
    for s, number in enumerate(numbers):
        stored = [rng.integers(0, 2000, size=(16, 12)).astype(np.uint16) for _ in range(2)]
        for k in range(2):
            path = ct_slice(folder / f"s{s}_{k}.dcm", stored[k], z=float(k), instance=k + 1, series_uid=f"1.2.3.4.{s + 1}")
            ds = pydicom.dcmread(path)
            ds.SeriesNumber = number
            ds.SeriesDescription = f"AX {number}"
            ds.save_as(path)
        values.setdefault(number, [])
        values[number].append(np.stack(stored).astype(np.float32) - 1024.0)  # slope 1, intercept -1024: HU
    return values


def test_series_by_number_and_by_uid(tmp_path):
    values = two_series(tmp_path)
    with pytest.raises(InputError, match=r"holds 2 DICOM series \(series 3 'AX 3' \(CT, 2 files\); series 7 'AX 7'.*give --series"):
        read_images(tmp_path)
    np.testing.assert_array_equal(read_images(tmp_path, series="7").data, values[7][0])
    np.testing.assert_array_equal(read_images(tmp_path, series="03").data, values[3][0])
    np.testing.assert_array_equal(read_images(tmp_path, series="1.2.3.4.2").data, values[7][0])


def test_series_that_is_not_there_or_twice(tmp_path):
    two_series(tmp_path)
    with pytest.raises(InputError, match=r"no DICOM series with number or UID '5'; the folder holds series 3 'AX 3'"):
        read_images(tmp_path, series="5")
    same = tmp_path / "same"
    same.mkdir()
    two_series(same, numbers=(4, 4))
    with pytest.raises(InputError, match="2 DICOM series have number 4 .*SeriesInstanceUID"):
        read_images(same, series="4")
    np.testing.assert_array_equal(read_images(same, series="1.2.3.4.1").data.shape, (2, 16, 12))


def test_series_with_a_file_is_refused(tmp_path):
    two_series(tmp_path)
    with pytest.raises(InputError, match="--series picks one series of a DICOM folder"):
        read_images(tmp_path / "s0_0.dcm", series="3")


def colour_png(path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(24, 20, 3)).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return path, rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_colour_png_is_refused_with_the_remedy_and_read_as_luma_on_request(tmp_path):
    path, luma = colour_png(tmp_path / "rgb.png")
    with pytest.raises(InputError, match=r"got 3 channels \(give --grey"):
        read_images(path)
    np.testing.assert_allclose(read_images(path, allow_rgb=True).data[0], luma, rtol=1e-6)


# --- through the commands ------------------------------------------------------------------


def test_simulate_with_volume_series_and_grey(fmri, tmp_path, capsys):
    four_d, singles = fmri
    out = tmp_path / "m.h5"
    assert invdiff("simulate", four_d, "--operator", "blur", "--psf", "gaussian:1", "--out", out, "-q") == 2
    assert "--volume N" in capsys.readouterr().err and not out.exists()
    assert invdiff("simulate", four_d, "--volume", 2, "--operator", "blur", "--psf", "gaussian:1", "--noise-std", 0, "--out", out, "-q") == 0
    import h5py

    with h5py.File(out) as f:
        np.testing.assert_allclose(f["ground_truth"][...], read_images(singles[2]).data)

    folder = tmp_path / "pacs"
    folder.mkdir()
    values = two_series(folder)
    out2 = tmp_path / "ct.h5"
    assert invdiff("simulate", folder, "--operator", "radon", "--views", 8, "--out", out2, "-q") == 2
    assert "--series" in capsys.readouterr().err and not out2.exists()
    assert invdiff("simulate", folder, "--series", 7, "--operator", "radon", "--views", 8, "--out", out2, "-q") == 0
    with h5py.File(out2) as f:
        from invdiff.io.dicom import hu_to_mu

        np.testing.assert_allclose(f["ground_truth"][...], hu_to_mu(values[7][0]), rtol=1e-6)

    png, luma = colour_png(tmp_path / "rgb.png")
    out3 = tmp_path / "rgb.h5"
    assert invdiff("simulate", png, "--operator", "blur", "--psf", "gaussian:1", "--out", out3, "-q") == 2
    assert "--grey" in capsys.readouterr().err
    assert invdiff("simulate", png, "--grey", "--operator", "blur", "--psf", "gaussian:1", "--noise-std", 0, "--out", out3, "-q") == 0
    with h5py.File(out3) as f:
        np.testing.assert_allclose(f["ground_truth"][0], luma, rtol=1e-6)


def test_evaluate_reads_the_reference_volume_it_is_told(fmri, tmp_path, capsys):
    four_d, singles = fmri
    measurement, result = tmp_path / "m.h5", tmp_path / "r.h5"
    assert invdiff("simulate", singles[1], "--operator", "blur", "--psf", "gaussian:1", "--out", measurement, "-q") == 0
    assert invdiff("reconstruct", measurement, "--method", "wiener", "--out", result, "-q") == 0
    capsys.readouterr()
    assert invdiff("evaluate", result, "--reference", four_d, "--json") == 2
    assert "--volume" in capsys.readouterr().err
    import json

    assert invdiff("evaluate", result, "--reference", four_d, "--volume", 1, "--json") == 0
    by_volume = json.loads(capsys.readouterr().out)
    assert invdiff("evaluate", result, "--reference", singles[1], "--json") == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_volume["psnr"] == by_file["psnr"]


def test_train_dry_run_takes_one_volume(fmri, tmp_path, capsys):
    four_d, _ = fmri
    out = tmp_path / "prior"
    assert invdiff("train", four_d, "--out", out, "--image-size", 8, "--dry-run", "-q") == 2
    assert "--volume" in capsys.readouterr().err
    assert invdiff("train", four_d, "--volume", 0, "--out", out, "--image-size", 8, "--dry-run", "--json") == 0


def test_info_lists_the_series_of_a_mixed_folder(tmp_path, capsys):
    import json

    two_series(tmp_path)
    assert invdiff("info", tmp_path, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert [(s["number"], s["description"], s["modality"], s["uid"], s["files"]) for s in out["series"]] == [
        ("3", "AX 3", "CT", "1.2.3.4.1", 2), ("7", "AX 7", "CT", "1.2.3.4.2", 2)]
    assert invdiff("info", tmp_path) == 0  # the table form prints too
    assert "1.2.3.4.2" in capsys.readouterr().out


def test_evaluate_refuses_a_selection_of_an_hdf5_reference(fmri, tmp_path, capsys):
    measurement, result = tmp_path / "m.h5", tmp_path / "r.h5"
    assert invdiff("simulate", fmri[1][0], "--operator", "blur", "--psf", "gaussian:1", "--out", measurement, "-q") == 0
    assert invdiff("reconstruct", measurement, "--method", "wiener", "--out", result, "-q") == 0
    capsys.readouterr()
    for option in ("--volume", "--series"):
        assert invdiff("evaluate", result, "--reference", measurement, option, 1) == 2
        assert f"{option} picks part of a NIfTI, DICOM or colour image, not of an HDF5 file" in capsys.readouterr().err


def test_train_series_takes_that_series_from_every_folder(tmp_path, capsys):
    """A tree of two studies, each with a 1-slice localizer (series 1) and a 2-slice axial
    series (series 3): --series 3 trains on the 4 axial slices only."""
    import json

    from invdiff.prior.data import read_stacks

    rng = np.random.default_rng(3)
    for study in ("a", "b"):
        folder = tmp_path / "tree" / study
        folder.mkdir(parents=True)
        for number, slices in ((1, 1), (3, 2)):
            for k in range(slices):
                path = ct_slice(folder / f"{number}_{k}.dcm", rng.integers(0, 2000, size=(16, 16)).astype(np.uint16),
                                z=float(k), instance=k + 1, series_uid=f"1.2.{'ab'.index(study) + 1}.{number}")
                ds = pydicom.dcmread(path)
                ds.SeriesNumber = number
                ds.save_as(path)
    tree = tmp_path / "tree"
    assert sorted(s.data.shape[0] for s in read_stacks([tree])) == [1, 1, 2, 2]
    assert [s.data.shape[0] for s in read_stacks([tree], series="3")] == [2, 2]
    with pytest.raises(InputError, match=r"no folder in it holds a DICOM series with number or UID '5'"):
        read_stacks([tree], series="5")
    capsys.readouterr()
    assert invdiff("train", tree, "--series", 3, "--out", tmp_path / "p", "--image-size", 8, "--dry-run", "--json") == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["files"] == 2 and data["slices"] + data["validation_slices"] == 4, data


def test_channel_of_a_colour_png_and_of_a_fluorescence_tiff(tmp_path):
    import tifffile

    path, _ = colour_png(tmp_path / "rgb.png")
    rgb = np.asarray(Image.open(path)).astype(np.float32)
    for c in range(3):
        np.testing.assert_array_equal(read_images(path, channel=c).data[0], rgb[..., c])
    with pytest.raises(InputError, match=r"--channel must lie between 0 and 2 .*got 3"):
        read_images(path, channel=3)
    with pytest.raises(InputError, match="give --channel or --grey, not both"):
        read_images(path, channel=0, allow_rgb=True)
    # a 2-channel fluorescence stack (ImageJ axes ZCYX): 5 planes of channel 1
    stack = np.random.default_rng(4).integers(0, 4000, size=(5, 2, 16, 12)).astype(np.uint16)
    tiff = tmp_path / "two_colour.tif"
    tifffile.imwrite(tiff, stack, imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(InputError, match=r"got 2 channels \(give --channel N"):
        read_images(tiff)
    np.testing.assert_array_equal(read_images(tiff, channel=1).data, stack[:, 1].astype(np.float32))
    # both RGB samples and channels (CYXS): --channel cannot say which axis, so it refuses
    both = tmp_path / "rgb_channels.tif"
    tifffile.imwrite(both, np.zeros((2, 16, 12, 3), np.uint8), photometric="rgb", metadata={"axes": "CYXS"})
    with pytest.raises(InputError, match=r"both 3 samples per pixel \(RGB\) and 2 channels, and --channel picks"):
        read_images(both, channel=1)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(grey)
    with pytest.raises(InputError, match="this one has one channel"):
        read_images(grey, channel=0)
    np.save(tmp_path / "x.npy", np.ones((8, 8), np.float32))
    with pytest.raises(InputError, match="--channel picks one channel .*not of a NPY file"):
        read_images(tmp_path / "x.npy", channel=0)


def test_simulate_and_train_read_the_channel_asked_for(tmp_path, capsys):
    import h5py
    import json

    path, _ = colour_png(tmp_path / "rgb.png")
    green = np.asarray(Image.open(path))[..., 1].astype(np.float32)
    out = tmp_path / "g.h5"
    assert invdiff("simulate", path, "--channel", 1, "--operator", "blur", "--psf", "gaussian:1", "--noise-std", 0,
                   "--out", out, "-q") == 0
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["ground_truth"][0], green)
    capsys.readouterr()
    assert invdiff("train", path, "--channel", 1, "--out", tmp_path / "p", "--image-size", 8, "--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out)["data"]["files"] == 1
    from invdiff.prior.data import read_stacks

    np.testing.assert_array_equal(read_stacks([path], channel=1)[0].data[0], green)
