"""Damaged or crafted HDF5 inputs (QA D6, D7, D11, D13): NaN in a ground truth or fastMRI target,
fastMRI files with a header that is not text, a target or k-space of the wrong kind, an MRI
k-space that lost an axis, and data kept outside the file (external raw storage, an external
link, a virtual dataset). Each is exit code 2 with one sentence naming the file and the dataset
(helpers_cli.expect_bad), except a header that is not text: it is ignored with one warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers_cli import BRAIN, brain32, expect_bad, invdiff
from invdiff.errors import InputError

CPU = ["-q", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 2-slice CT measurement (with its ground truth), its FBP result, and a 2-slice MRI one."""
    root = tmp_path_factory.mktemp("damaged")
    np.save(root / "img.npy", brain32())
    np.save(root / "img64.npy", np.load(BRAIN)[:2, ::2, ::2].astype(np.float32))
    assert invdiff("simulate", root / "img.npy", "--views", "20", "--noise-rel", "0.01", "--out", root / "ct.h5", *CPU) == 0
    assert invdiff("simulate", root / "img64.npy", "--operator", "mri", "--acceleration", "4", "--out", root / "mri.h5",
                   *CPU) == 0
    assert invdiff("reconstruct", root / "ct.h5", "--method", "fbp", "--out", root / "fbp.h5", *CPU) == 0
    return root


@pytest.fixture
def work(world, tmp_path):
    for name in ("img.npy", "ct.h5", "mri.h5", "fbp.h5"):
        shutil.copy(world / name, tmp_path / name)
    return tmp_path


def _replace(path: Path, key: str, value) -> Path:
    """Replace dataset ``key`` of the file at ``path`` by ``value``."""
    with h5py.File(path, "a") as f:
        del f[key]
        f[key] = value
    return path


def _fastmri(path: Path, header=b"<ismrmrdHeader/>", kspace=None, **targets) -> Path:
    """A 2-slice single-coil fastMRI-style file: 4x line mask, an ISMRMRD header, ``targets``."""
    image = brain32(2).astype(np.complex64)
    full = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    mask = np.zeros(32, np.float32)
    mask[::4] = 1
    mask[14:18] = 1
    with h5py.File(path, "w") as f:
        f["kspace"] = (full * mask).astype(np.complex64) if kspace is None else kspace
        f["mask"] = mask
        f["ismrmrd_header"] = header
        f.attrs["acquisition"] = "CORPD_FBK"
        for key, value in targets.items():
            f[key] = value
    return path


def _zero_filled(source: Path, out: Path) -> list:
    return ["reconstruct", source, "--method", "zero-filled", "--out", out / "r.h5", *CPU]


# --- D7: NaN or Inf in a reference read from an HDF5 file --------------------------------------

def _ground_truth_with_nan(work: Path) -> Path:
    with h5py.File(work / "ct.h5", "r") as f:
        truth = f["ground_truth"][()]
    truth[0, 5, 5] = np.nan
    return _replace(work / "ct.h5", "ground_truth", truth)


@pytest.mark.parametrize("extra", [[], ["--data-range", "1", "--json"]])
def test_evaluate_names_nan_in_the_ground_truth(work, capsys, extra):
    gt = _ground_truth_with_nan(work)
    message = expect_bad(work, capsys, ["evaluate", work / "fbp.h5", "--reference", gt, *extra], gt,
                         "dataset 'ground_truth' holds 1 NaN or Inf values")
    assert "all zero" not in message


def test_reconstruct_names_nan_in_the_ground_truth(work, capsys):
    gt = _ground_truth_with_nan(work)
    expect_bad(work, capsys, ["reconstruct", gt, "--method", "fbp", "--out", work / "r.h5", *CPU], gt,
               "'ground_truth' holds 1 NaN or Inf")


def test_read_measurement_names_nan_in_the_ground_truth(work):
    """Checked where the file is read, so every command gets it (calibrate: test_calibration.py)."""
    from invdiff.io.hdf5 import read_measurement

    gt = _ground_truth_with_nan(work)
    with pytest.raises(InputError, match=r"ct.h5: dataset 'ground_truth' holds 1 NaN or Inf values\.$"):
        read_measurement(gt)


@pytest.mark.parametrize("key", ["reconstruction_esc", "reconstruction_rss"])
@pytest.mark.parametrize("command", ["evaluate", "reconstruct"])
def test_nan_in_a_fastmri_target(work, capsys, key, command):
    target = np.ones((2, 32, 32), np.float32)
    target[1, 3, 3] = np.inf
    source = _fastmri(work / "fm.h5", **{key: target})
    args = (["evaluate", work / "fbp.h5", "--reference", source] if command == "evaluate" else _zero_filled(source, work))
    expect_bad(work, capsys, args, source, f"dataset '{key}' holds 1 NaN or Inf values")


# --- D6: damaged fastMRI files -----------------------------------------------------------------

@pytest.mark.parametrize("header", [np.void(b"\xff\xfe\x00garbage"), np.arange(5)], ids=["opaque", "numeric"])
def test_fastmri_header_that_is_not_text_is_ignored_with_a_warning(work, capsys, header):
    source = _fastmri(work / "fm.h5", header=header, reconstruction_esc=np.ones((2, 24, 24), np.float32))
    capsys.readouterr()
    loud = [a for a in _zero_filled(source, work) if a != "-q"]
    assert invdiff(*loud) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("invdiff: warning: ") and "'ismrmrd_header' is not text" in err[0], err
    with h5py.File(work / "r.h5") as f:
        assert f["reconstruction"].shape == (2, 24, 24)  # still cropped to the targets' size
    assert invdiff("info", source) == 0
    capsys.readouterr()
    (work / "r.h5").unlink()
    assert invdiff(*_zero_filled(source, work)) == 0  # --quiet silences the warning ...
    assert capsys.readouterr().err.strip() == ""
    (work / "r.h5").unlink()
    assert invdiff(*loud) == 0  # ... for that run only
    assert "'ismrmrd_header' is not text" in capsys.readouterr().err


def test_fastmri_header_that_is_text_still_gives_the_crop(work):
    from invdiff.io.fastmri import read_fastmri, target_shape

    header = (b"<ismrmrdHeader><encoding><reconSpace><matrixSize><x>20</x><y>22</y></matrixSize></reconSpace>"
              b"</encoding></ismrmrdHeader>")
    for value in (header, np.bytes_(header), header.decode()):
        raw = read_fastmri(_fastmri(work / "fm.h5", header=value))
        assert target_shape(raw) == (20, 22)


@pytest.mark.parametrize("command", ["reconstruct", "info"])
def test_fastmri_target_of_the_wrong_shape(work, capsys, command):
    source = _fastmri(work / "fm.h5", reconstruction_esc=np.ones(5, np.float32))
    args = _zero_filled(source, work) if command == "reconstruct" else ["info", source]
    expect_bad(work, capsys, args, source, "'reconstruction_esc' has shape (5,); expected (slices, H, W).")


def test_fastmri_target_that_is_not_numbers(work, capsys):
    source = _fastmri(work / "fm.h5", reconstruction_esc=np.array([b"a"]))
    message = expect_bad(work, capsys, _zero_filled(source, work), source,
                         "'reconstruction_esc' holds |S1 values, not real numbers")
    assert "corrupted" not in message


# --- D11: what is wrong with a k-space ---------------------------------------------------------

KSPACE = np.ones((2, 32, 32), np.complex64)


@pytest.mark.parametrize("kspace, described", [
    (KSPACE.real.astype(np.float32), "float32 (2, 32, 32)"),
    (KSPACE[0, 0], "complex64 (32,)"),
    (KSPACE[:, None, None], "complex64 (2, 1, 1, 32, 32)"),
], ids=["real", "1-D", "5-D"])
@pytest.mark.parametrize("command", ["reconstruct", "info"])
def test_fastmri_kspace_of_the_wrong_kind(work, capsys, kspace, described, command):
    source = _fastmri(work / "fm.h5", kspace=kspace)
    args = _zero_filled(source, work) if command == "reconstruct" else ["info", source]
    message = expect_bad(work, capsys, args, source, f"'kspace' must be complex (slices, [coils,] H, W), got {described}.")
    assert "not an invdiff measurement" not in message


def test_mri_kspace_that_lost_its_slice_axis_names_the_kspace(work, capsys):
    with h5py.File(work / "mri.h5", "r") as f:
        kspace = f["kspace"][()]
    assert kspace.ndim == 4
    source = _replace(work / "mri.h5", "kspace", kspace[0, 0])
    message = expect_bad(work, capsys, _zero_filled(source, work), source,
                         "dataset 'kspace' has shape (64, 64); expected (slices, coils, H, W).")
    assert "ground_truth" not in message


# --- D13: data kept outside the file -----------------------------------------------------------

OUTSIDE = "invdiff reads only data inside the file"


def _external_storage(path: Path, key: str) -> Path:
    """Move dataset ``key`` of ``path`` into a raw file beside it (HDF5 external storage)."""
    with h5py.File(path, "a") as f:
        data = f[key][()]
        del f[key]
        raw = path.with_name(f"{path.stem}_{key}.raw")
        data.tofile(raw)
        f.create_dataset(key, shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    return path


def _move_out(f: h5py.File, key: str, other: Path) -> np.ndarray:
    """Delete dataset ``key`` of the open file ``f`` and write its data as ``data`` in the new
    HDF5 file ``other``; returns the data."""
    data = f[key][()]
    del f[key]
    with h5py.File(other, "w") as g:
        g["data"] = data
    return data


def _external_link(path: Path, key: str) -> Path:
    """Move dataset ``key`` of ``path`` into another HDF5 file, linked to from ``path``."""
    other = path.with_name(f"{path.stem}_other.h5")
    with h5py.File(path, "a") as f:
        _move_out(f, key, other)
        f[key] = h5py.ExternalLink(other.name, "/data")
    return path


def _virtual(path: Path, key: str) -> Path:
    """Make dataset ``key`` of ``path`` a virtual dataset mapping another file's data."""
    other = path.with_name(f"{path.stem}_source.h5")
    with h5py.File(path, "a") as f:
        data = _move_out(f, key, other)
        layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
        layout[...] = h5py.VirtualSource(str(other), "data", shape=data.shape)
        f.create_virtual_dataset(key, layout)
    return path


WAYS = {"external storage": (_external_storage, "keeps its data in another file (external storage)"),
        "external link": (_external_link, "is a link to another file (an external link)"),
        "virtual dataset": (_virtual, "keeps its data in other files (a virtual dataset)")}


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("case", ["measurement", "ground truth", "result", "image stack", "fastmri", "calibration input"])
def test_data_outside_the_file_is_refused(work, capsys, case, way):
    move, words = WAYS[way]
    if case == "fastmri":
        source, key = _fastmri(work / "fm.h5"), "kspace"
        args = _zero_filled(source, work)
    elif case == "measurement":
        source, key = work / "ct.h5", "sinogram"
        args = ["reconstruct", source, "--method", "fbp", "--out", work / "r.h5", *CPU]
    elif case == "ground truth":
        source, key = work / "ct.h5", "ground_truth"
        args = ["evaluate", work / "fbp.h5", "--reference", source]
    elif case == "result":
        source, key = work / "fbp.h5", "reconstruction"
        args = ["evaluate", source, "--reference", work / "ct.h5"]
    elif case == "calibration input":
        source, key = work / "fbp.h5", "reconstruction"
        args = ["calibrate", source, "--reference", work / "ct.h5", "--out", work / "c.json"]
    else:
        source, key = work / "stack.h5", "images"
        with h5py.File(source, "w") as f:
            f["images"] = brain32()
        # --key: looking for the only image dataset, h5py's walk does not follow external links
        args = ["simulate", source, "--key", key, "--views", "10", "--out", work / "m.h5", *CPU]
    move(source, key)
    message = expect_bad(work, capsys, args, source, f"{words}; {OUTSIDE}.")
    if not (case == "image stack" and way == "external link"):  # images.py names a linked dataset by its
        assert f"dataset '{key}' {words}" in message              # name in the other file ('data')


def test_read_whole_is_where_every_dataset_is_checked(work):
    from invdiff.io.hdf5 import read_whole

    _external_storage(work / "ct.h5", "sinogram")
    with h5py.File(work / "ct.h5", "r") as f:
        with pytest.raises(InputError, match="ct.h5: dataset 'sinogram' keeps its data in another file"):
            read_whole(f["sinogram"], work / "ct.h5")
        assert read_whole(f["ground_truth"], work / "ct.h5").shape == (2, 32, 32)
