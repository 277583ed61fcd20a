"""The bad-input contract on the readers of measurements, images and results (audit items 4-10):
exit code 2 and one sentence naming the file (helpers_cli.expect_bad: no traceback, nothing
written or left behind), and the geometry options meeting a file's own geometry by the rule of
invdiff/pipeline/file_geometry.py (another operator's option: refused; an
acquisition option: checked against the file; a reconstruction choice: applied)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from helpers_cli import BRAIN, REPO, brain32, expect_bad, invdiff

GRE = REPO / "data" / "samples" / "twix" / "gre.dat"
KEEP = "--operator-params overrides"  # every contradiction says how to override deliberately


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images (32x32 and, for MRI masks with enough lines, 64x64) and one simulated measurement
    per operator: CT with 20 views, MRI at 8x, blur with a Gaussian PSF of sigma 1.5."""
    root = tmp_path_factory.mktemp("contract")
    np.save(root / "img.npy", brain32())
    np.save(root / "img64.npy", np.load(BRAIN)[:2, ::2, ::2].astype(np.float32))
    for name, image, opts in [("ct", "img.npy", ["--operator", "radon", "--views", "20"]),
                              ("mri", "img64.npy", ["--operator", "mri", "--acceleration", "8"]),
                              ("blur", "img.npy", ["--operator", "blur", "--psf", "gaussian:1.5"])]:
        assert invdiff("simulate", root / image, *opts, "--noise-rel", "0.01", "--out", root / f"{name}.h5", "-q", "--device", "cpu") == 0
    assert invdiff("reconstruct", root / "ct.h5", "--method", "fbp", "--out", root / "result.h5", "-q", "--device", "cpu") == 0
    return root


def _recon(source: Path, out: Path, *options) -> list:
    method = {"ct": "fbp", "mri": "zero-filled", "blur": "wiener"}.get(source.stem, "fbp")
    return ["reconstruct", source, "--method", method, *options, "--out", out / "r.h5", "-q", "--device", "cpu"]


def _provenance_params(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["invdiff_provenance"])["operator"]["params"]


# --- 4: --operator-params on an HDF5 input ----------------------------------------------------


@pytest.mark.parametrize("text, fragment", [("{bad", "not valid JSON"), ("[1]", "JSON object")])
def test_operator_params_on_hdf5_must_be_a_json_object(world, tmp_path, capsys, text, fragment):
    expect_bad(tmp_path, capsys, _recon(world / "ct.h5", tmp_path, "--operator-params", text), "--operator-params", fragment)


# --- 5: foreign .npy / .tif measurements ------------------------------------------------------


def _foreign(tmp_path: Path, name: str, write) -> Path:
    path = tmp_path / "in" / f"measurement{Path(name).suffix}"  # a name that gives no fragment away
    path.parent.mkdir(exist_ok=True)
    write(path)
    return path


FOREIGN = {
    # name: (operator, how to write the file, fragment of the message)
    "strings.npy": ("radon", lambda p: np.save(p, np.array([["a"] * 46] * 10)), "holds strings, not numbers"),
    "objects.npy": ("radon", lambda p: np.save(p, np.array([None, 1], dtype=object), allow_pickle=True),
                    "never loaded (pickles can run code)"),
    "truncated.npy": ("radon", lambda p: (np.save(p, np.ones((10, 46), np.float32)),
                                          p.write_bytes(p.read_bytes()[:-100])), "NPY array is truncated"),
    "complex_sino.npy": ("radon", lambda p: np.save(p, (np.ones((10, 46)) + 1j).astype(np.complex64)), "holds complex values"),
    "complex_image.npy": ("blur", lambda p: np.save(p, (np.ones((32, 32)) + 1j).astype(np.complex64)), "holds complex values"),
    "four_d.npy": ("blur", lambda p: np.save(p, np.ones((1, 2, 10, 32), np.float32)), "(slices, H, W)"),
    "garbage.tif": ("radon", lambda p: p.write_bytes(b"II*\x00junkjunkjunk"), "not a readable TIFF"),
    "complex.tif": ("radon", lambda p: tifffile.imwrite(p, (np.ones((10, 46)) + 1j).astype(np.complex64)), "holds complex values"),
}


@pytest.mark.parametrize("name", sorted(FOREIGN))
def test_bad_foreign_measurement(tmp_path, capsys, name):
    operator, write, fragment = FOREIGN[name]
    path = _foreign(tmp_path, name, write)
    method = "fbp" if operator == "radon" else "wiener"
    args = ["reconstruct", path, "--operator", operator, "--method", method, "--out", tmp_path / "r.h5", "-q", "--device", "cpu"]
    message = expect_bad(tmp_path, capsys, args, path, fragment)
    assert "sinogram must be" not in message  # a garbage TIFF is not blamed on its shape


def test_a_foreign_blurred_image_needs_its_psf(world, tmp_path, capsys):
    """A blurred image in an .npy/.tif file carries no PSF: reconstruct asks for it rather than
    silently deconvolving with one of its own choosing; given, it is recorded and used."""
    with h5py.File(world / "blur.h5") as f:
        np.save(tmp_path / "fb.npy", f["image"][()])
    args = ["reconstruct", tmp_path / "fb.npy", "--operator", "blur", "--method", "wiener", "--out", tmp_path / "r.h5",
            "-q", "--device", "cpu"]
    message = expect_bad(tmp_path, capsys, args, tmp_path / "fb.npy", "carries no PSF")
    assert "--psf" in message
    assert invdiff(*args, "--psf", "gaussian:1.5") == 0
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["reconstruction"].shape == (2, 32, 32)
    assert invdiff(*args[:-5], "--operator-params", '{"psf": [[0, 1, 0], [1, 4, 1], [0, 1, 0]]}', "--out",
                   tmp_path / "r2.h5", "-q", "--device", "cpu") == 0


def test_foreign_batch_does_not_share_the_first_files_views(tmp_path):
    """The views of a foreign sinogram come from its own shape, not from the one before it."""
    rng = np.random.default_rng(0)
    for name, views in (("a.npy", 10), ("b.npy", 12)):
        np.save(tmp_path / name, rng.random((views, 46)).astype(np.float32))
    assert invdiff("reconstruct", tmp_path / "a.npy", tmp_path / "b.npy", "--operator", "radon", "--method", "fbp",
                   "--out-dir", tmp_path / "out", "-q", "--device", "cpu") == 0
    assert len(_provenance_params(tmp_path / "out" / "b.h5")["angles_deg"]) == 12


# --- 6: simulate --operator-params with another image shape -------------------------------------


def test_simulate_image_shape_that_does_not_fit(world, tmp_path, capsys):
    args = ["simulate", world / "img.npy", "--views", "10", "--operator-params", '{"image_shape": [1, 64, 64]}',
            "--out", tmp_path / "m.h5", "-q", "--device", "cpu"]
    message = expect_bad(tmp_path, capsys, args, world / "img.npy", "does not fit")
    assert "[1, 64, 64]" in message and "32x32" in message


# --- 7: NPY format versions -----------------------------------------------------------------------


def _npy(path: Path, array: np.ndarray, version) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, array, version=version)
    return path


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)], ids=["1.0", "2.0", "3.0"])
def test_every_npy_version_is_read(world, tmp_path, capsys, version):
    image = brain32(1)
    path = _npy(tmp_path / "v.npy", image, version)
    assert invdiff("simulate", path, "--views", "10", "--out", tmp_path / "m.h5", "-q", "--device", "cpu") == 0
    with h5py.File(tmp_path / "m.h5", "r") as f:
        np.testing.assert_array_equal(f["ground_truth"][()], image)
    capsys.readouterr()
    assert invdiff("info", path, "--json") == 0
    assert json.loads(capsys.readouterr().out)


def test_npy_v3_sinogram_is_read_like_its_image(tmp_path):
    """reconstruct's foreign-array reader and the image readers agree on NPY 3.0."""
    path = _npy(tmp_path / "sino.npy", np.random.default_rng(0).random((10, 46)).astype(np.float32), (3, 0))
    assert invdiff("reconstruct", path, "--operator", "radon", "--method", "fbp", "--out", tmp_path / "r.h5", "-q") == 0


def _bad_npy(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.npy"
    if kind == "version4":
        data = bytearray(_npy(path, brain32(1), (1, 0)).read_bytes())
        data[6] = 4
        path.write_bytes(bytes(data))
    elif kind == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    else:  # a header that is not the dict numpy writes
        header = b"{'descr': '<f4', 'shape': (2, 2)}".ljust(117) + b"\n"
        path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(16))
    return path


@pytest.mark.parametrize("kind, fragment", [("version4", "unsupported NPY format version 4.0"),
                                            ("garbage", "not a valid NPY header"),
                                            ("no_fortran_order", "not a valid NPY header")])
@pytest.mark.parametrize("command", ["simulate", "info", "reconstruct"])
def test_bad_npy_header(tmp_path, capsys, kind, fragment, command):
    path = _bad_npy(tmp_path, kind)
    args = {"simulate": ["simulate", path, "--views", "10", "--out", tmp_path / "m.h5", "-q"],
            "info": ["info", path],
            "reconstruct": ["reconstruct", path, "--operator", "radon", "--method", "fbp", "--out", tmp_path / "r.h5", "-q"]}
    message = expect_bad(tmp_path, capsys, args[command], path, fragment)
    assert "_read_array_header" not in message


# --- 8: geometry options on a file that records its geometry ------------------------------------


@pytest.mark.parametrize("source, option, owner", [
    ("ct.h5", ["--acceleration", "4"], "mri"),
    ("ct.h5", ["--psf", "gaussian:2"], "blur"),
    ("ct.h5", ["--complex"], "mri"),
    ("mri.h5", ["--views", "10"], "radon"),
    ("mri.h5", ["--filter", "ramp"], "radon"),
    ("blur.h5", ["--coils", "2"], "mri"),
])
def test_option_of_another_operator(world, tmp_path, capsys, source, option, owner):
    message = expect_bad(tmp_path, capsys, _recon(world / source, tmp_path, *option), world / source,
                         f"{option[0]} is an option of the {owner} operator")
    held = {"ct.h5": "radon", "mri.h5": "mri", "blur.h5": "blur"}[source]
    assert f"not of the {held} operator" in message


@pytest.mark.parametrize("source, option, recorded", [
    ("ct.h5", ["--views", "10"], "20 view angles"),
    ("ct.h5", ["--angles", "0:120:20"], "20 view angles (0 to 171 degrees)"),
    ("ct.h5", ["--detectors", "50"], "46 detector bins"),
    ("ct.h5", ["--detector-spacing", "2"], "detector spacing of 1 pixels"),
    ("ct.h5", ["--pixel-size", "0.5"], "pixel size of 1 mm"),
    ("ct.h5", ["--image-size", "64"], "32x32 images"),
    ("mri.h5", ["--acceleration", "2"], "acceleration"),
    ("mri.h5", ["--center-fraction", "0.5"], "centre"),
    ("mri.h5", ["--mask", "poisson"], "phase-encode lines"),
    ("mri.h5", ["--coils", "4"], "1 coil"),
    ("mri.h5", ["--image-size", "32"], "64x64 images"),
    ("blur.h5", ["--psf", "gaussian:3"], "PSF"),
])
def test_option_that_contradicts_the_file(world, tmp_path, capsys, source, option, recorded):
    message = expect_bad(tmp_path, capsys, _recon(world / source, tmp_path, *option), world / source, recorded)
    assert option[0] in message and KEEP in message


@pytest.mark.parametrize("source, options", [
    ("ct.h5", ["--views", "20", "--detectors", "46", "--detector-spacing", "1", "--pixel-size", "1", "--image-size", "32"]),
    ("ct.h5", ["--angles", "0:180:20"]),
    ("mri.h5", ["--acceleration", "8", "--mask", "random", "--coils", "1", "--image-size", "64"]),
    ("mri.h5", ["--acceleration", "8", "--center-fraction", "0.04"]),
    ("blur.h5", ["--psf", "gaussian:1.5", "--image-size", "32"]),
])
def test_option_that_agrees_with_the_file(world, tmp_path, source, options):
    assert invdiff(*_recon(world / source, tmp_path, *options)) == 0
    assert (tmp_path / "r.h5").exists()


@pytest.mark.parametrize("source, option, key, value", [
    ("ct.h5", ["--filter", "ramp"], "filter", "ramp"),
    ("blur.h5", ["--boundary", "periodic"], "boundary", "periodic"),
    ("mri.h5", ["--complex"], "image_shape", [2, 64, 64]),
])
def test_reconstruction_choice_overrides_the_file(world, tmp_path, source, option, key, value):
    assert invdiff(*_recon(world / source, tmp_path, *option)) == 0
    assert _provenance_params(tmp_path / "r.h5")[key] == value


def test_operator_params_then_options(world, tmp_path, capsys):
    """--operator-params overrides the file first; the options are then checked against that."""
    angles = list(np.linspace(0.0, 180.0, 20, endpoint=False) + 1.0)
    params = json.dumps({"angles_deg": angles})
    expect_bad(tmp_path, capsys, _recon(world / "ct.h5", tmp_path, "--operator-params", params, "--views", "20"),
               world / "ct.h5", "1 to 172 degrees")
    assert invdiff(*_recon(world / "ct.h5", tmp_path, "--operator-params", params, "--detectors", "46")) == 0
    assert _provenance_params(tmp_path / "r.h5")["angles_deg"] == pytest.approx(angles)


def _fastmri(path: Path) -> Path:
    """A fully sampled single-coil fastMRI-style file (kspace only; the mask is inferred)."""
    image = brain32(2).astype(np.complex64)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace.astype(np.complex64))
        f.attrs["acquisition"] = "CORPD_FBK"
    return path


@pytest.mark.parametrize("option, fragment", [
    (["--views", "10"], "--views is an option of the radon operator"),
    (["--acceleration", "4"], "samples 32 of 32 lines"),
    (["--coils", "8"], "1 coil"),
])
def test_fastmri_file_follows_the_same_rule(tmp_path, capsys, option, fragment):
    source = _fastmri(tmp_path / "fastmri.h5")
    expect_bad(tmp_path, capsys, ["reconstruct", source, "--method", "zero-filled", *option, "--out", tmp_path / "r.h5", "-q"],
               source, fragment)


def test_fastmri_file_accepts_agreeing_options(tmp_path):
    source = _fastmri(tmp_path / "fastmri.h5")
    assert invdiff("reconstruct", source, "--method", "zero-filled", "--acceleration", "1", "--coils", "1",
                   "--complex", "--out", tmp_path / "r.h5", "-q") == 0


@pytest.mark.parametrize("option, fragment", [(["--psf", "gaussian:2"], "--psf is an option of the blur operator"),
                                              (["--coils", "8"], "2 coil")])
def test_siemens_file_follows_the_same_rule(tmp_path, capsys, option, fragment):
    expect_bad(tmp_path, capsys, ["reconstruct", GRE, "--method", "zero-filled", *option, "--out", tmp_path / "r.h5", "-q"],
               GRE, fragment)


# --- 9: result files ------------------------------------------------------------------------------


def _result(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


ONES = np.ones((2, 32, 32), np.float32)
RESULTS = {
    "nan": ({"reconstruction": np.full((2, 32, 32), np.nan, np.float32)}, "'reconstruction' holds 2048 NaN or Inf"),
    "inf_std": ({"reconstruction": ONES, "std": np.full((2, 32, 32), np.inf, np.float32)}, "'std' holds 2048 NaN or Inf"),
    "negative_std": ({"reconstruction": ONES, "std": -ONES}, "holds 2048 negative values"),
    "nan_samples": ({"reconstruction": ONES, "samples": np.full((3, 2, 32, 32), np.nan, np.float32)}, "'samples' holds"),
    "empty": ({"reconstruction": np.ones((0, 32, 32), np.float32)}, "'reconstruction' is empty"),
    "empty_samples": ({"reconstruction": ONES, "samples": np.ones((0, 2, 32, 32), np.float32)}, "'samples' is empty"),
}


@pytest.mark.parametrize("case", sorted(RESULTS))
def test_bad_result_values(world, tmp_path, capsys, case):
    datasets, fragment = RESULTS[case]
    bad = _result(tmp_path / "result.h5", **datasets)
    expect_bad(tmp_path, capsys, ["evaluate", bad, "--reference", world / "ct.h5", "--json"], bad, fragment)


def test_evaluate_json_is_valid_for_a_perfect_reconstruction(world, tmp_path, capsys):
    """An exact reconstruction has an infinite PSNR: --json says null, not the invalid Infinity."""
    with h5py.File(world / "ct.h5", "r") as f:
        truth = f["ground_truth"][()]
    result = _result(tmp_path / "exact.h5", reconstruction=truth)
    capsys.readouterr()
    assert invdiff("evaluate", result, "--reference", world / "ct.h5", "--json") == 0

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    scores = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert scores["psnr"] is None and scores["ssim"] == pytest.approx(1.0)


# --- 10: messages that named the wrong problem ----------------------------------------------------


def _edit_operator(source: Path, path: Path, change) -> Path:
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r+") as f:
        description = json.loads(f.attrs["invdiff_operator"])
        change(description)
        f.attrs["invdiff_operator"] = json.dumps(description)
    return path


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(name="nosuch"), "unknown operator 'nosuch'"),
    (lambda d: d["params"].update(angles_deg=[]), "has no angles"),
    (lambda d: d["params"].update(image_shape=[1, 0, 0]), "empty image"),
])
@pytest.mark.parametrize("command", ["reconstruct", "info", "evaluate"])
def test_bad_operator_description(world, tmp_path, capsys, change, fragment, command):
    bad = _edit_operator(world / "ct.h5", tmp_path / "in.h5", change)
    args = {"reconstruct": _recon(bad, tmp_path), "info": ["info", bad],
            "evaluate": ["evaluate", world / "result.h5", "--reference", bad, "--json"]}[command]
    message = expect_bad(tmp_path, capsys, args, bad, fragment)
    assert "does not match" not in message and "'measurement' dataset" not in message
    if "nosuch" in fragment:
        assert "radon" in message  # the known operators are listed


def test_empty_angles_from_operator_params(tmp_path, capsys):
    sino = tmp_path / "sino.npy"
    np.save(sino, np.ones((10, 46), np.float32))
    args = ["reconstruct", sino, "--operator", "radon", "--operator-params", '{"angles_deg": []}', "--method", "fbp",
            "--out", tmp_path / "r.h5", "-q"]
    expect_bad(tmp_path, capsys, args, sino, "has no angles")


def test_two_dimensional_sinogram_is_one_slice(world, tmp_path):
    """A CT file whose sinogram is (views, detectors), with its ground truth: read as one slice."""
    path = tmp_path / "in.h5"
    path.write_bytes((world / "ct.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        sinogram, truth = f["sinogram"][0], f["ground_truth"][:1]
        del f["sinogram"], f["ground_truth"]
        f["sinogram"], f["ground_truth"] = sinogram, truth
    assert invdiff(*_recon(path, tmp_path)) == 0
    with h5py.File(tmp_path / "r.h5", "r") as f:
        assert f["reconstruction"].shape == (1, 32, 32)


def test_folder_without_dicom_says_what_to_give(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    np.save(folder / "a.npy", brain32(1))
    message = expect_bad(tmp_path, capsys, ["simulate", folder, "--out", tmp_path / "m.h5", "-q"], folder, "DICOM")
    assert "read_image_paths" not in message


# --- 8: options of another operator when the geometry comes from the command line -------------


@pytest.mark.parametrize("operator, option, owner", [
    ("radon", ["--acceleration", "4"], "mri"),
    ("radon", ["--psf", "gaussian:2"], "blur"),
    ("mri", ["--views", "10"], "radon"),
    ("mri", ["--boundary", "reflect"], "blur"),
    ("blur", ["--complex"], "mri"),
])
def test_simulate_refuses_an_option_of_another_operator(world, tmp_path, capsys, operator, option, owner):
    """simulate builds the geometry from its options: one of another operator would be ignored."""
    message = expect_bad(tmp_path, capsys, ["simulate", world / "img.npy", "--operator", operator, *option,
                                            "--out", tmp_path / "m.h5", "-q"], option[0], f"option of the {owner} operator")
    assert f"not of the {operator} operator" in message


def test_foreign_sinogram_refuses_an_option_of_another_operator(tmp_path, capsys):
    path = _foreign(tmp_path, "s.npy", lambda p: np.save(p, np.ones((10, 46), np.float32)))
    expect_bad(tmp_path, capsys, ["reconstruct", path, "--operator", "radon", "--method", "fbp", "--acceleration", "4",
                                  "--out", tmp_path / "r.h5", "-q"], "--acceleration", "option of the mri operator")


@pytest.mark.parametrize("options, fragment", [
    (["--operator", "radon", "--noise-rel", "0.01", "--read-noise", "5"], "with --photons and the blur operator"),
    (["--operator", "blur", "--noise-std", "0.01", "--read-noise", "5"], "with --photons and the blur operator"),
    (["--operator", "blur", "--photons", "100", "--read-noise", "-1"], "must be >= 0"),
])
def test_read_noise_needs_the_microscopy_poisson_model(world, tmp_path, capsys, options, fragment):
    expect_bad(tmp_path, capsys, ["simulate", world / "img.npy", *options, "--out", tmp_path / "m.h5", "-q"],
               "--read-noise", fragment)


def test_read_noise_with_photons_is_simulated(world, tmp_path):
    out = tmp_path / "m.h5"
    assert invdiff("simulate", world / "img.npy", "--operator", "blur", "--photons", "100", "--read-noise", "2",
                   "--out", out, "-q") == 0
    with h5py.File(out, "r") as f:
        noise = json.loads(f.attrs["invdiff_operator"])["params"]["noise"]
    assert noise["kind"] == "poisson_gaussian" and noise["read_std"] == 2.0


def test_json_output_has_no_bare_nan(capsys):
    """emit_json (every command's --json) writes null for NaN and infinities, which JSON lacks."""
    from invdiff.cli.common import emit_json

    emit_json({"psnr": np.float64(np.inf), "values": np.array([1.0, np.nan]), "path": Path("x")})
    assert json.loads(capsys.readouterr().out) == {"psnr": None, "values": [1.0, None], "path": "x"}
