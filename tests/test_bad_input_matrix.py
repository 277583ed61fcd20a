"""Issue 6: the bad-input matrix, through every command.

Each case is a bad file (or option) and the commands that read it; each run must exit with
code 2 and one sentence on stderr that names the file and the problem, without a traceback and
without writing, changing or leaving behind any file (helpers_cli.expect_bad). Complements
tests/test_cli_workflow.py::test_bad_inputs (a few reconstruct/simulate cases) and the library
tests of the readers (test_io_images, test_dicom, test_prior_store) with the end-to-end view.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from helpers_cli import TRAIN_TINY, brain32, ct_slice, expect_bad, invdiff, prior_command, rehash, tiny_prior
from invdiff.prior.store import CONFIG_NAME, EMA_NAME





@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good inputs the bad ones are made from: images, one measurement per operator, a result,
    a tiny prior, training data and a training run with a checkpoint."""
    root = tmp_path_factory.mktemp("world")
    np.save(root / "img.npy", brain32())
    for op, opts in [("radon", ["--views", "20"]), ("mri", ["--acceleration", "4"]), ("blur", ["--psf", "gaussian:1.5"])]:
        assert invdiff("simulate", root / "img.npy", "--operator", op, *opts, "--noise-rel", "0.01",
                       "--out", root / f"{op}.h5", "-q", "--device", "cpu") == 0
    assert invdiff("reconstruct", root / "radon.h5", "--method", "fbp", "--out", root / "result.h5", "-q", "--device", "cpu") == 0
    tiny_prior(root / "prior")
    np.save(root / "train.npy", np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    assert invdiff("train", root / "train.npy", "--out", root / "run", *TRAIN_TINY, "--steps", "2") == 0
    return root


def _copy(world: Path, name: str, tmp: Path, new_name: str | None = None) -> Path:
    dst = tmp / (new_name or name)
    (shutil.copytree if (world / name).is_dir() else shutil.copy)(world / name, dst)
    return dst


def _edit_h5(path: Path, change) -> Path:
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _replace(key: str, value):
    def change(f):
        del f[key]
        f[key] = value
    return change


def _set_operator(change):
    def edit(f):
        description = json.loads(f.attrs["invdiff_operator"])
        change(description)
        f.attrs["invdiff_operator"] = json.dumps(description)
    return edit


# --- measurement files: reconstruct (classical and prior), info, evaluate --reference ------------

def _corrupt(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    for i in range(2048, len(data), 97):  # the superblock survives, object headers and data do not
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


MEASUREMENTS = {
    # name: (source file, how to break it, fragment of the message)
    "missing": ("radon.h5", lambda p: (p.unlink(), p)[1], "does not exist"),
    "empty": ("radon.h5", lambda p: (p.write_bytes(b""), p)[1], "empty"),
    "truncated": ("radon.h5", lambda p: (p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), p)[1], "truncated"),
    "corrupted": ("radon.h5", _corrupt, "corrupted"),
    "not_hdf5": ("radon.h5", lambda p: (p.write_text("sinogram,views\n1,2\n"), p)[1], "HDF5"),
    "wrong_keys": ("radon.h5", lambda p: _edit_h5(p, lambda f: f.move("sinogram", "sino")), "no 'sinogram' dataset"),
    "group_not_dataset": ("radon.h5", lambda p: _edit_h5(p, lambda f: (f.__delitem__("sinogram"), f.create_group("sinogram"))), "group"),
    "one_dimensional": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.ones(20, np.float32))), "dimension"),
    "string_dtype": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.array([[b"a", b"b"], [b"c", b"d"]]))), "not numbers"),
    "compound_dtype": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.zeros((2, 3), dtype=[("a", "f4"), ("b", "i4")]))), "not numbers"),
    "complex_sinogram": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.ones((2, 20, 46), np.complex64))), "complex"),
    "real_kspace": ("mri.h5", lambda p: _edit_h5(p, _replace("kspace", np.ones((2, 1, 32, 32), np.float32))), "must be complex"),
    "shape_vs_geometry": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.ones((2, 7, 9), np.float32))), "does not match"),
    "nan": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.full((2, 20, 46), np.nan, np.float32))), "NaN"),
    "inf": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.full((2, 20, 46), np.inf, np.float32))), "Inf"),
    "all_zero": ("radon.h5", lambda p: _edit_h5(p, _replace("sinogram", np.zeros((2, 20, 46), np.float32))), "all zero"),
    "operator_not_json": ("radon.h5", lambda p: _edit_h5(p, lambda f: f.attrs.__setitem__("invdiff_operator", "{radon")), "not valid JSON"),
    "operator_params_list": ("radon.h5", lambda p: _edit_h5(p, _set_operator(lambda d: d.update(params=[1, 2]))), "not a JSON object"),
    "unknown_operator": ("radon.h5", lambda p: _edit_h5(p, _set_operator(lambda d: d.update(name="nosuch"))), "nosuch"),
    "zero_views": ("radon.h5", lambda p: _edit_h5(p, _set_operator(lambda d: d["params"].update(angles_deg=[]))), "view"),
    "negative_noise": ("radon.h5", lambda p: _edit_h5(p, _set_operator(lambda d: d["params"].update(noise={"kind": "gaussian", "std": -1}))), "noise"),
    "psf_larger_than_image": ("blur.h5", lambda p: _edit_h5(p, _replace("psf", np.ones((65, 65), np.float32))), "larger than the image"),
    "mask_samples_nothing": ("mri.h5", lambda p: _edit_h5(p, _replace("mask", np.zeros((32, 32), np.float32))), "mask"),
    "mask_wrong_shape": ("mri.h5", lambda p: _edit_h5(p, _replace("mask", np.ones((3, 3), np.float32))), "mask"),
    "ground_truth_wrong_shape": ("radon.h5", lambda p: _edit_h5(p, _replace("ground_truth", np.ones((2, 5, 5), np.float32))), "ground_truth"),
    "ground_truth_text": ("radon.h5", lambda p: _edit_h5(p, _replace("ground_truth", np.array([b"x"]))), "not numbers"),
}


def _measurement_commands(world: Path, bad: Path, out: Path) -> dict[str, list]:
    return {
        "reconstruct": ["reconstruct", bad, "--method", "cgls", "--iterations", "2", "--out", out, "-q", "--device", "cpu"],
        "reconstruct_prior": ["reconstruct", bad, "--prior", world / "prior", "--solver", "dds", "--steps", "2",
                              "--samples", "1", "--out", out, "--png", out.with_suffix(".png"), "-q", "--device", "cpu"],
        "info": ["info", bad, "--json"],
        "evaluate": ["evaluate", world / "result.h5", "--reference", bad, "--json"],
    }


@pytest.mark.parametrize("command", ["reconstruct", "reconstruct_prior", "info", "evaluate"])
@pytest.mark.parametrize("case", sorted(MEASUREMENTS))
def test_bad_measurement_file(world, tmp_path, capsys, case, command):
    source, spoil, fragment = MEASUREMENTS[case]
    if command == "evaluate" and case in ("ground_truth_text", "ground_truth_wrong_shape", "psf_larger_than_image") or \
            command == "reconstruct_prior" and case in ("real_kspace", "mask_samples_nothing", "mask_wrong_shape"):
        fragment = None  # a different, also correct complaint may come first (evaluate: a radon result, a blur file)
    bad = spoil(_copy(world, source, tmp_path, f"{case}.h5"))
    args = _measurement_commands(world, bad, tmp_path / "out" / "recon.h5")[command]
    expect_bad(tmp_path, capsys, args, bad, fragment)


@pytest.mark.parametrize("case, spoil, fragment", [
    ("no_reconstruction", lambda f: f.move("reconstruction", "recon"), "no 'reconstruction'"),
    ("complex_reconstruction", _replace("reconstruction", np.ones((2, 32, 32), np.complex64)), "complex"),
    ("std_wrong_shape", lambda f: f.create_dataset("std", data=np.ones((2, 4, 4), np.float32)), "'std'"),
    ("text_reconstruction", _replace("reconstruction", np.array([b"x", b"y"])), "not numbers"),
])
def test_bad_result_file(world, tmp_path, capsys, case, spoil, fragment):
    bad = _edit_h5(_copy(world, "result.h5", tmp_path, f"{case}.h5"), spoil)
    expect_bad(tmp_path, capsys, ["evaluate", bad, "--reference", world / "radon.h5"], bad, fragment)
    if case != "no_reconstruction":  # without it, info rightly describes a plain HDF5 file
        expect_bad(tmp_path, capsys, ["info", bad], bad, fragment)


def test_reference_of_another_shape_names_both_files(world, tmp_path, capsys):
    ref = tmp_path / "ref.npy"
    np.save(ref, np.ones((2, 16, 16), np.float32))
    message = expect_bad(tmp_path, capsys, ["evaluate", world / "result.h5", "--reference", ref], ref, "shape")
    assert "result.h5" in message


# --- image files: simulate, train, likelihood, info, evaluate --reference -------------------------

def _nifti(path: Path, shape, affine=None) -> Path:
    nibabel.save(nibabel.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32),
                                     np.eye(4) if affine is None else affine), path)
    return path


def _singular_nifti(path: Path) -> Path:
    """A NIfTI whose sform maps every voxel to one point (an orientation nothing can be read from)."""
    _nifti(path, (32, 32, 3))
    data = bytearray(path.read_bytes())
    data[252:256] = struct.pack("<hh", 0, 2)  # qform_code 0, sform_code 2
    data[280:328] = struct.pack("<12f", *([0.0] * 12))  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(data))
    return path


def _series_of_two_sizes(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    ct_slice(folder / "a.dcm", rng.integers(0, 2000, (32, 32)).astype(np.uint16), z=0.0, instance=1)
    ct_slice(folder / "b.dcm", rng.integers(0, 2000, (16, 32)).astype(np.uint16), z=1.0, instance=2)
    return folder


def _npy(values):
    def make(path: Path) -> Path:
        np.save(path, values)
        return path
    return make


def _rgb_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


IMAGES = {
    # name: (file name, how to make it, culprit inside it (None: the file itself), fragment)
    "missing": ("gone.npy", lambda p: p, None, "does not exist"),
    "empty": ("empty.npy", lambda p: (p.write_bytes(b""), p)[1], None, "empty"),
    "truncated_npy": ("trunc.npy", lambda p: (np.save(p, brain32()), p.write_bytes(p.read_bytes()[:900]), p)[2], None, "truncated"),
    "truncated_hdf5": ("trunc.h5", lambda p: _truncated_h5(p), None, "HDF5"),
    "not_dicom": ("fake.dcm", lambda p: (p.write_bytes(b"not a DICOM file, just text" * 20), p)[1], None, "not a DICOM file"),
    "compressed_dicom": ("jls.dcm", lambda p: ct_slice(p, np.ones((32, 32), np.uint16), compressed=True), None, "no decoder"),
    "series_two_sizes": ("series", _series_of_two_sizes, "b.dcm", "differs"),
    "nifti_4d": ("four.nii.gz", lambda p: _nifti(p, (32, 32, 2, 2)), None, "holds 2 volumes"),
    "nifti_singular_orientation": ("flat.nii", _singular_nifti, None, "NIfTI"),
    "rgb": ("rgb.png", _rgb_png, None, "got 3 channels"),
    "nan": ("nan.npy", _npy(np.where(np.eye(32, dtype=bool), np.nan, 1.0)), None, "NaN"),
    "all_zero": ("zeros.npy", _npy(np.zeros((2, 32, 32), np.float32)), None, "all zeros"),
    "object_array": ("objects.npy", lambda p: (np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), p)[1], None, "objects"),
    "several_hdf5_datasets": ("two.h5", lambda p: (_write_h5(p, a=brain32(), b=brain32()), p)[1], None, "--key"),
}


def _truncated_h5(path: Path) -> Path:
    _write_h5(path, x=brain32())
    path.write_bytes(path.read_bytes()[:3000])
    return path


def _write_h5(path: Path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v


# info rightly describes an HDF5 file with several datasets: that pair is no bad input.
@pytest.mark.parametrize(
    "case,command",
    [(case, command) for case in sorted(IMAGES) for command in ("simulate", "train", "likelihood", "info", "evaluate")
     if (case, command) != ("several_hdf5_datasets", "info")],
)
def test_bad_image_file(world, tmp_path, capsys, case, command):
    name, make, inner, fragment = IMAGES[case]
    bad = make(tmp_path / name)
    culprit = bad / inner if inner else bad
    args = {
        "simulate": ["simulate", bad, "--operator", "radon", "--views", "10", "--out", tmp_path / "o" / "m.h5", "-q", "--device", "cpu"],
        "train": ["train", bad, "--out", tmp_path / "o" / "prior", *TRAIN_TINY, "--steps", "1"],
        "likelihood": ["likelihood", bad, "--prior", world / "prior", "--device", "cpu", "-q"],
        "info": ["info", bad],
        "evaluate": ["evaluate", world / "result.h5", "--reference", bad],
    }[command]
    if command in ("info", "evaluate") and case == "series_two_sizes":
        culprit, fragment = bad, None  # a folder is not a single reference image / not a prior
    if command == "info" and case == "nifti_4d":  # info describes it: its volumes, the first one's data
        assert invdiff("info", bad, "--json") == 0
        described = json.loads(capsys.readouterr().out)
        assert described["volumes"] == 2 and described["data"]["shape"] == [2, 32, 32]
        return
    expect_bad(tmp_path, capsys, args, culprit, fragment)


def test_batch_likelihood_skips_the_unreadable_file(world, tmp_path, capsys):
    """likelihood over many files: the bad one is reported and skipped, the others scored, and
    the run ends with a summary and a non-zero exit code."""
    good = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16), dtype=np.uint8)).save(path)
        good.append(path)
    bad = tmp_path / "img9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    capsys.readouterr()
    code = invdiff("likelihood", tmp_path, "--prior", world / "prior", "--json", "--device", "cpu", "--rtol", "1e-2", "--atol", "1e-2")
    captured = capsys.readouterr()
    assert code == 2
    result = json.loads(captured.out)
    assert sorted(Path(r["file"]).name for r in result["bits_per_dim"]["per_image"]) == [p.name for p in good]
    assert [Path(f["input"]).name for f in result["failed"]] == ["img9.png"]
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and str(bad) in lines[0] and "1 input(s) could not be read" in lines[1], captured.err
    assert "Traceback" not in captured.err


def test_likelihood_reads_the_dataset_named_by_key(world, tmp_path, capsys):
    """An HDF5 file of several image datasets (a simulated measurement) is scored by --key, as
    the message that asks for it says; a missing key names the file."""
    meas = world / "radon.h5"
    expect_bad(tmp_path, capsys, ["likelihood", meas, "--prior", world / "prior", "-q", "--device", "cpu"], meas, "--key")
    args = ["likelihood", meas, "--key", "ground_truth", "--prior", world / "prior", "--json", "--device", "cpu",
            "--rtol", "1e-2", "--atol", "1e-2"]
    assert invdiff(*args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["slice"] for r in result["bits_per_dim"]["per_image"]] == [0, 1]
    expect_bad(tmp_path, capsys, [*args[:2], "--key", "nope", *args[4:]], meas, "HDF5 has no dataset 'nope'")


@pytest.mark.parametrize("option, value", [("--atol", "inf"), ("--rtol", "nan"), ("--rtol", "0"), ("--atol", "-1e-5")])
def test_likelihood_tolerances_must_be_finite_and_positive(world, tmp_path, capsys, option, value):
    args = ["likelihood", world / "img.npy", "--prior", world / "prior", option, value, "-q", "--device", "cpu"]
    assert expect_bad(tmp_path, capsys, args, option).startswith(f"{option} must be a finite number > 0, got ")


# --- impossible geometry and bad options ------------------------------------------------------

@pytest.mark.parametrize("operator, options, fragment", [
    ("radon", ["--views", "0"], "--views"),
    ("radon", ["--angles", "0:180:0"], "angles"),
    ("radon", ["--detectors", "0"], "detectors"),
    ("radon", ["--detector-spacing", "0"], "spacing"),
    ("mri", ["--acceleration", "0.5"], "--acceleration"),
    ("mri", ["--acceleration", "nan"], "--acceleration"),
    ("mri", ["--center-fraction", "2"], "--center-fraction"),
    ("mri", ["--coils", "0"], "--coils"),
    ("blur", ["--psf", "gaussian:40"], "larger than the image"),
    ("blur", ["--psf", "gaussian:0"], "sigma"),
    ("radon", ["--operator-params", '{"angles_deg": []}'], "view"),
    ("radon", ["--noise-std", "-1"], "--noise-std"),
    ("radon", ["--axis", "0"], "NIfTI"),  # an .npy stack has no axis to choose: refused, not ignored
])
def test_impossible_geometry_in_simulate(world, tmp_path, capsys, operator, options, fragment):
    image = _copy(world, "img.npy", tmp_path)
    args = ["simulate", image, "--operator", operator, *options, "--out", tmp_path / "m.h5", "-q", "--device", "cpu"]
    expect_bad(tmp_path, capsys, args, image, fragment)


def test_axis_on_a_stack_is_refused_before_the_file_is_read(tmp_path, capsys):
    """--axis on a non-NIfTI input is refused from the format alone: a corrupt .npy gets the
    --axis sentence, not the reader's (the file is never read)."""
    image = tmp_path / "broken.npy"
    image.write_bytes(b"not an npy file at all")
    args = ["simulate", image, "--operator", "radon", "--axis", "0", "--out", tmp_path / "m.h5", "-q", "--device", "cpu"]
    expect_bad(tmp_path, capsys, args, image, "--axis slices NIfTI volumes")


@pytest.mark.parametrize("options, culprit, fragment", [
    (["--views", "0"], "sino.npy", "--views"),
    (["--image-size", "0"], "--image-size", "at least 1"),
    (["--batch-size", "0"], "--batch-size", "at least 1"),
    (["--detectors", "3"], "sino.npy", "does not match"),
    (["--operator", "foo"], "sino.npy", "unknown operator 'foo'; available: blur, mri, radon"),
    (["--operator", "mri"], "sino.npy", "mri measurements must come as HDF5 files"),
])
def test_impossible_geometry_in_reconstruct(tmp_path, capsys, options, culprit, fragment):
    sino = tmp_path / "sino.npy"
    np.save(sino, np.ones((10, 45), np.float32))
    operator = [] if "--operator" in options else ["--operator", "radon"]
    args = ["reconstruct", sino, *operator, *options, "--method", "fbp", "--out", tmp_path / "r.h5", "-q", "--device", "cpu"]
    expect_bad(tmp_path, capsys, args, sino if culprit == "sino.npy" else culprit, fragment)


# --- priors: reconstruct --prior, sample, likelihood, info, train --init -----------------------

def _edit_config(change):
    def spoil(prior: Path) -> Path:
        config = json.loads((prior / CONFIG_NAME).read_text())
        change(config)
        (prior / CONFIG_NAME).write_text(json.dumps(config))
        return prior / CONFIG_NAME
    return spoil


def _edit_weights(change):
    def spoil(prior: Path) -> Path:
        state = load_file(str(prior / EMA_NAME))
        change(state)
        save_file(state, str(prior / EMA_NAME))
        rehash(prior)
        return prior / EMA_NAME
    return spoil


def _first_conv(state):
    return next(k for k in state if k.endswith("weight") and state[k].ndim == 4)


PRIORS = {
    # name: (how to break the prior; returns the file the message must name, fragment)
    "missing_config": (lambda p: ((p / CONFIG_NAME).unlink(), p / CONFIG_NAME)[1], "config"),
    "config_not_json": (lambda p: ((p / CONFIG_NAME).write_text("{not json"), p / CONFIG_NAME)[1], "not valid JSON"),
    "config_is_a_list": (lambda p: ((p / CONFIG_NAME).write_text("[]"), p / CONFIG_NAME)[1], "JSON object"),
    "config_missing_entry": (_edit_config(lambda c: c.pop("precond")), "incomplete or edited"),
    "config_three_channels": (_edit_config(lambda c: c.update(channels=3)), "channels"),
    "config_negative_sigma": (_edit_config(lambda c: c["precond"].update(sigma_min=-1.0)), "sigma_min"),
    "config_huge_network": (lambda p: (_edit_config(lambda c: c["network"]["unet"].update(base_channels=200_000))(p),
                                       p / EMA_NAME)[1], "do not fit"),
    "config_older_format": (_edit_config(lambda c: c.update(format_version=0)), "older"),
    # named by the config field, not by the train option (--normalise) that once set it
    "config_normalisation_kind": (_edit_config(lambda c: c["normalisation"].update(kind="weird")),
                                  "prior config: normalisation.kind 'weird' is not one of percentile, window"),
    "config_normalisation_window": (_edit_config(lambda c: c["normalisation"].update(kind="window", window=[1, 0])),
                                    "normalisation.window must be [LO, HI] with HI > LO"),
    "config_newer_format": (_edit_config(lambda c: c.update(format_version=7)), "newer"),
    "config_without_checksum": (_edit_config(lambda c: c.pop("weights_ema_sha256")), "checksum"),
    "weights_wrong_shape": (_edit_weights(lambda s: s.update({_first_conv(s): torch.zeros(3, 3)})), "shape"),
    "weights_extra_tensor": (_edit_weights(lambda s: s.update({"extra.weight": torch.zeros(2)})), "unexpected"),
    "weights_nan": (_edit_weights(lambda s: s[_first_conv(s)].fill_(float("nan"))), "NaN"),
    "weights_edited": (lambda p: (save_file({k: v + 1 for k, v in load_file(str(p / EMA_NAME)).items()}, str(p / EMA_NAME)),
                                  p / EMA_NAME)[1], "checksum"),
    "weights_truncated": (lambda p: ((p / EMA_NAME).write_bytes((p / EMA_NAME).read_bytes()[:700]), p / EMA_NAME)[1], "safetensors"),
    "weights_missing": (lambda p: ((p / EMA_NAME).unlink(), p / EMA_NAME)[1], "missing"),
}


@pytest.mark.parametrize("command", ["reconstruct", "sample", "likelihood", "info", "train_init"])
@pytest.mark.parametrize("case", sorted(PRIORS))
def test_bad_prior(world, tmp_path, capsys, case, command):
    spoil, fragment = PRIORS[case]
    prior = _copy(world, "prior", tmp_path, "prior")
    culprit = spoil(prior)
    if command == "info" and case == "missing_config":
        culprit, fragment = prior, "config.json"
    if command == "train_init" and case == "missing_config":
        culprit = prior
    args = prior_command(command, prior, measurement=world / "radon.h5", image=world / "img.npy",
                         train=world / "train.npy", out=tmp_path)
    expect_bad(tmp_path, capsys, args, culprit, fragment)


def test_huge_network_is_refused_without_allocating_it(world, tmp_path):
    """An edited base_channels of 200 000 describes a ~600 GB network: refused from the weights'
    shapes alone (meta device), in well under a second."""
    import time

    from invdiff.errors import InputError
    from invdiff.prior.store import load_prior

    prior = _copy(world, "prior", tmp_path, "prior")
    PRIORS["config_huge_network"][0](prior)
    assert json.loads((prior / CONFIG_NAME).read_text())["network"]["unet"]["base_channels"] == 200_000
    start = time.perf_counter()
    with pytest.raises(InputError, match="do not fit"):
        load_prior(prior)
    assert time.perf_counter() - start < 2.0


# --- training checkpoints: train --resume ------------------------------------------------------

def _edit_checkpoint(tensors=None, state=None, metadata=None):
    def spoil(run: Path) -> Path:
        from safetensors import safe_open

        path = run / "checkpoint.safetensors"
        t = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        st = json.loads(meta["invdiff_checkpoint"])
        if tensors:
            tensors(t)
        if state:
            state(st)
        save_file(t, str(path), metadata=metadata if metadata is not None else {"invdiff_checkpoint": json.dumps(st)})
        return path
    return spoil


CHECKPOINTS = {
    "truncated": (lambda r: ((r / "checkpoint.safetensors").write_bytes((r / "checkpoint.safetensors").read_bytes()[:999]),
                             r / "checkpoint.safetensors")[1], "safetensors"),
    "not_invdiff": (_edit_checkpoint(metadata={"format": "pt"}), "not an invdiff training checkpoint"),
    "state_not_json": (_edit_checkpoint(metadata={"invdiff_checkpoint": "{step: 2"}), "not valid JSON"),
    "older_format": (_edit_checkpoint(state=lambda s: s.update(format_version=0)), "older"),
    "newer_format": (_edit_checkpoint(state=lambda s: s.update(format_version=5)), "newer"),
    "incomplete_state": (_edit_checkpoint(state=lambda s: s.pop("optimizer_param_groups")), "incomplete"),
    "missing_rng": (_edit_checkpoint(tensors=lambda t: t.pop("rng.torch_cpu")), "incomplete"),
    "damaged_rng": (_edit_checkpoint(tensors=lambda t: t.update({"rng.torch_cpu": torch.zeros(3, dtype=torch.uint8)})), "damaged"),
    "weights_wrong_shape": (_edit_checkpoint(tensors=lambda t: t.update({next(k for k in t if k.startswith("model.")): torch.zeros(3)})),
                            "do not fit"),
    "nan_weights": (_edit_checkpoint(tensors=lambda t: t[next(k for k in t if k.startswith("model."))].fill_(float("nan"))), "NaN"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_bad_checkpoint_is_refused_on_resume(world, tmp_path, capsys, case):
    spoil, fragment = CHECKPOINTS[case]
    run = _copy(world, "run", tmp_path, "run")
    culprit = spoil(run)
    args = ["train", world / "train.npy", "--out", run, *TRAIN_TINY, "--steps", "4", "--resume"]
    expect_bad(tmp_path, capsys, args, culprit, fragment)


# --- divergence: a clear message, exit code 2, and the old output left as it was -----------------

@pytest.mark.parametrize("solver, options, fragment", [
    ("dps", ["--guidance", "1e6"], "data residual"),  # an exploding residual
    ("pc", ["--guidance", "1e8"], "NaN or Inf"),  # NaN in the iterate
    ("dds", ["--option", "data_weight=1e30"], "NaN or Inf"),
])
def test_diverging_solver_keeps_the_old_output(world, tmp_path, capsys, solver, options, fragment):
    meas = _copy(world, "radon.h5", tmp_path, "ct.h5")
    out = tmp_path / "recon.h5"
    assert invdiff("reconstruct", meas, "--method", "fbp", "--out", out, "-q", "--device", "cpu") == 0  # the old result
    args = ["reconstruct", meas, "--prior", world / "prior", "--solver", solver, "--steps", "3", "--samples", "1", *options,
            "--out", out, "--png", tmp_path / "recon.png", "--dicom", tmp_path / "dicom", "-q", "--device", "cpu"]
    message = expect_bad(tmp_path, capsys, args, meas, fragment)
    assert f"solver {solver} diverged" in message


def test_diverging_prior_in_every_command(world, tmp_path, capsys):
    """Finite weights so large that the network overflows: reconstruct, sample and likelihood all
    stop with one sentence instead of writing NaN images or crashing."""
    prior = _copy(world, "prior", tmp_path, "prior")
    state = load_file(str(prior / EMA_NAME))
    save_file({k: v * 1e6 for k, v in state.items()}, str(prior / EMA_NAME))
    rehash(prior)
    recon = ["reconstruct", world / "radon.h5", "--prior", prior, "--solver", "dds", "--steps", "3", "--out", tmp_path / "r.h5", "-q", "--device", "cpu"]
    assert "diverged" in expect_bad(tmp_path, capsys, recon, world / "radon.h5", "NaN or Inf")
    sample = ["sample", "--prior", prior, "-n", "1", "--steps", "3", "--out", tmp_path / "s.h5", "-q", "--device", "cpu"]
    expect_bad(tmp_path, capsys, sample, prior, "NaN/Inf")
    likelihood = ["likelihood", world / "img.npy", "--prior", prior, "-q", "--device", "cpu"]
    expect_bad(tmp_path, capsys, likelihood, prior, "diverged")
