"""The measurement workflow end to end through the command line: simulate -> reconstruct
(classical) -> evaluate -> info, and the bad-input contract (one sentence, exit 2, no output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from invdiff.cli import app
from invdiff.cli.common import run_app

REPO = Path(__file__).resolve().parent.parent
BRAIN = REPO / "data" / "samples" / "brain_heldout_128.npy"


def invdiff(*args: str) -> int:
    return run_app(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def brain64(tmp_path_factory) -> Path:
    """Two 64x64 brain slices in [0, 1] (downsampled held-out sample slices)."""
    slices = np.load(BRAIN)[:2, ::2, ::2].astype(np.float32)
    path = tmp_path_factory.mktemp("img") / "brain64.npy"
    np.save(path, slices)
    return path


@pytest.mark.parametrize(
    "operator,options,methods",
    [
        ("radon", ["--views", "30", "--noise-rel", "0.01"], ["fbp", "tv"]),
        ("mri", ["--acceleration", "4", "--noise-std", "0.005"], ["zero-filled", "tv"]),
        ("blur", ["--psf", "gaussian:1.5", "--noise-std", "0.01"], ["wiener", "richardson-lucy"]),
    ],
)
def test_simulate_reconstruct_evaluate(tmp_path, brain64, capsys, operator, options, methods):
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", operator, *options, "--seed", "3", "--out", meas, "--quiet") == 0
    with h5py.File(meas) as f:
        assert "invdiff_operator" in f.attrs and f["ground_truth"].shape == (2, 64, 64)
    scores = {}
    for method in methods:
        out = tmp_path / f"{method}.h5"
        assert invdiff("reconstruct", meas, "--method", method, "--out", out, "--quiet", "--device", "cpu") == 0
        capsys.readouterr()
        assert invdiff("evaluate", out, "--reference", meas, "--data-range", "1", "--json") == 0
        result = json.loads(capsys.readouterr().out)
        assert np.isfinite(result["psnr"]) and 0 < result["ssim"] <= 1
        assert result["residual"] < 1.0
        scores[method] = result["psnr"]
        with h5py.File(out) as f:
            prov = json.loads(f.attrs["invdiff_provenance"])
            assert prov["method"] == method and prov["operator"]["name"] == operator
    # The regularised method must beat the direct one on these noisy, undersampled data.
    assert scores[methods[1]] > scores[methods[0]] + 0.5, scores
    assert invdiff("info", meas, "--json") == 0
    described = json.loads(capsys.readouterr().out)
    assert described["kind"] == "measurement" and described["operator"]["name"] == operator


def test_same_seed_same_measurement(tmp_path, brain64):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for out in (a, b):
        assert invdiff("simulate", brain64, "--operator", "radon", "--views", "20", "--noise-rel", "0.02", "--seed", "5", "--out", out, "-q") == 0
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert np.array_equal(fa["sinogram"][()], fb["sinogram"][()])


def test_simulated_kspace_is_zero_where_unsampled(tmp_path, brain64):
    """Like a scanner's file: noise on the sampled lines, exact zeros on the others."""
    out = tmp_path / "k.h5"
    assert invdiff("simulate", brain64, "--operator", "mri", "--acceleration", "4", "--noise-std", "0.01",
                   "--seed", "2", "--out", out, "-q") == 0
    with h5py.File(out) as f:
        kspace = f["kspace"][()]
        lines = np.broadcast_to(f["mask"][()].astype(bool), kspace.shape[-2:])
    assert 0 < lines.mean() < 0.5
    assert np.all(kspace[..., ~lines] == 0)
    assert np.all(kspace[..., lines] != 0)


def _bad(tmp_path, capsys, *args) -> str:
    before = set(tmp_path.rglob("*"))
    code = invdiff(*args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invdiff: error:"), err
    assert set(tmp_path.rglob("*")) == before, "a failed command left files behind"
    return lines[0]


def test_bad_inputs(tmp_path, brain64, capsys):
    out = tmp_path / "out.h5"
    # missing file
    assert "does not exist" in _bad(tmp_path, capsys, "reconstruct", tmp_path / "nope.h5", "--method", "fbp", "--out", out)
    # empty file
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert "empty" in _bad(tmp_path, capsys, "reconstruct", empty, "--method", "fbp", "--out", out)
    # truncated HDF5
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    truncated = tmp_path / "trunc.h5"
    truncated.write_bytes(meas.read_bytes()[:1000])
    assert "trunc.h5" in _bad(tmp_path, capsys, "reconstruct", truncated, "--method", "fbp", "--out", out)
    # HDF5 without the needed datasets
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["something"] = np.zeros(3)
    assert "wrong.h5" in _bad(tmp_path, capsys, "reconstruct", wrong, "--method", "fbp", "--out", out)
    # NaN in the data
    nan = tmp_path / "nan.h5"
    nan.write_bytes(meas.read_bytes())
    with h5py.File(nan, "r+") as f:
        data = f["sinogram"][()]
        data[0, 0, 0] = np.nan
        f["sinogram"][...] = data
    assert "NaN" in _bad(tmp_path, capsys, "reconstruct", nan, "--method", "fbp", "--out", out)
    # a sinogram dataset too large for any memory (chunked and unwritten: a small file)
    huge = tmp_path / "huge.h5"
    huge.write_bytes(meas.read_bytes())
    with h5py.File(huge, "r+") as f:
        del f["sinogram"]
        f.create_dataset("sinogram", shape=(1, 10**6, 10**6), dtype="f4", chunks=(1, 64, 64))
    assert "does not fit in this machine's memory" in _bad(tmp_path, capsys, "reconstruct", huge, "--method", "fbp", "--out", out)
    # geometry that does not match the sinogram's shape
    sino = tmp_path / "sino.npy"
    np.save(sino, np.ones((10, 91), np.float32))
    assert "does not match" in _bad(
        tmp_path, capsys, "reconstruct", sino, "--operator", "radon", "--views", "12", "--method", "fbp", "--out", out
    )
    # non-DICOM file named .dcm
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"this is not a DICOM file at all" * 10)
    assert "fake.dcm" in _bad(tmp_path, capsys, "simulate", fake, "--operator", "radon", "--out", out)
    # impossible geometry
    assert "views" in _bad(tmp_path, capsys, "simulate", brain64, "--operator", "radon", "--views", "0", "--out", out)
    assert "acceleration" in _bad(tmp_path, capsys, "simulate", brain64, "--operator", "mri", "--acceleration", "0.5", "--out", out)
    assert "PSF" in _bad(tmp_path, capsys, "simulate", brain64, "--operator", "blur", "--psf", "gaussian:30", "--out", out)
    # a method that does not apply to the operator
    _bad(tmp_path, capsys, "reconstruct", meas, "--method", "zero-filled", "--out", out)
    # unknown operator
    assert "radon" in _bad(tmp_path, capsys, "simulate", brain64, "--operator", "nosuch", "--out", out)


def test_outputs_never_overwrite_inputs(tmp_path, brain64, capsys):
    """An output path naming an input file (or another output) is refused before anything is written."""
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    original = meas.read_bytes()
    phrase = "would overwrite the input"
    assert phrase in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", meas)
    assert phrase in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", tmp_path / "." / "m.h5")
    assert phrase in _bad(tmp_path, capsys, "reconstruct", tmp_path, "--method", "fbp", "--out-dir", tmp_path)
    assert phrase in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r.h5", "--png", meas)
    assert phrase in _bad(tmp_path, capsys, "simulate", meas, "--operator", "radon", "--key", "ground_truth", "--out", meas)
    assert meas.read_bytes() == original
    assert "two outputs" in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r.h5",
                                 "--png", tmp_path / "r.h5")
    assert phrase in _bad(tmp_path, capsys, "calibrate", meas, "--out", meas)
    assert "two outputs" in _bad(tmp_path, capsys, "sample", "-n", "1", "--out", tmp_path / "s.h5", "--png", tmp_path / "s.h5")


def test_dicom_folder_is_replaced_only_when_it_holds_an_earlier_invdiff_series(tmp_path, brain64, capsys):
    """Writing a series replaces the --dicom folder, so a folder with anything else in it (the
    input, a working directory, a scanner's series) is refused before any work, and kept."""
    import pydicom

    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    (tmp_path / "notes.txt").write_text("precious")
    phrase = "holds other files"
    assert phrase in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r.h5", "--dicom", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious" and meas.exists()
    series = tmp_path / "series"
    assert "lies in the --dicom folder" in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp",
                                                "--out", series / "r.h5", "--dicom", series)
    # an earlier invdiff series is replaced (a re-run)
    assert invdiff("reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r.h5", "--dicom", series, "-q") == 0
    assert invdiff("reconstruct", meas, "--method", "tv", "--out", tmp_path / "r2.h5", "--dicom", series, "-q") == 0
    assert sorted(p.name for p in series.iterdir()) == ["IM00001.dcm", "IM00002.dcm"]
    assert pydicom.dcmread(series / "IM00001.dcm").SeriesDescription == "invdiff tv"
    # a file of the same name from another source is not ours to delete
    foreign = pydicom.dcmread(series / "IM00002.dcm")
    foreign.Manufacturer = "ACME"
    foreign.save_as(series / "IM00002.dcm")
    assert phrase in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r3.h5", "--dicom", series)
    assert pydicom.dcmread(series / "IM00002.dcm").Manufacturer == "ACME"


def test_solver_settings_refused_with_a_classical_method(tmp_path, brain64, capsys):
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    out = tmp_path / "out.h5"
    for extra in (["--steps", "-1"], ["--guidance", "2"], ["--option", "snr=0.1"], ["--samples", "4"], ["--keep-samples"]):
        assert "--method" in _bad(tmp_path, capsys, "reconstruct", meas, "--method", "tv", *extra, "--out", out)
    # --filter sets the FBP window: fbp returns it and tv starts from it; sirt and cgls start from zero
    for method in ("sirt", "cgls"):
        assert "--method " + method in _bad(tmp_path, capsys, "reconstruct", meas, "--method", method, "--filter", "hann", "--out", out)
    assert invdiff("reconstruct", meas, "--method", "fbp", "--filter", "hann", "--out", out, "-q") == 0


def test_an_option_given_twice_is_refused(tmp_path, brain64, capsys):
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    message = _bad(tmp_path, capsys, "reconstruct", meas, "--solver", "diffpir", "--option", "classical_weight=0",
                   "--option", "classical-weight=1", "--out", tmp_path / "o.h5")
    assert "--option classical_weight given twice" in message


@pytest.mark.parametrize("command, option, name, kind", [
    ("simulate", "--out", "o.png", "HDF5"), ("simulate", "--out", "o.npy", "HDF5"), ("simulate", "--out", "o.nii.gz", "HDF5"),
    ("reconstruct", "--out", "o.JPG", "HDF5"), ("reconstruct", "--out", "o.json", "HDF5"),
    ("reconstruct", "--png", "p.jpg", "PNG"), ("reconstruct", "--png", "p", "PNG"),
    ("sample", "--out", "s.tif", "HDF5"), ("sample", "--png", "g.tiff", "PNG"),
])
def test_an_output_named_for_another_format_is_refused(tmp_path, brain64, capsys, command, option, name, kind):
    """An HDF5 --out named .png (or .npy, .json, ...) and a --png that is not .png are refused
    before any work, rather than written in a format their name denies."""
    meas = tmp_path / "m.h5"
    assert invdiff("simulate", brain64, "--operator", "radon", "--views", "10", "--out", meas, "-q") == 0
    path = tmp_path / name
    args = {
        "simulate": ["simulate", brain64, "--out", path if option == "--out" else tmp_path / "o.h5"],
        "reconstruct": ["reconstruct", meas, "--method", "fbp", "--out", path if option == "--out" else tmp_path / "o.h5",
                        *(["--png", path] if option == "--png" else [])],
        "sample": ["sample", "--prior", tmp_path / "no_prior", "-n", "1", "--out", path if option == "--out" else tmp_path / "s.h5",
                   *(["--png", path] if option == "--png" else [])],
    }[command]
    message = _bad(tmp_path, capsys, *args)
    suffix = ".h5" if kind == "HDF5" else ".png"
    assert message == f"invdiff: error: {path}: {option} is a{'n' if kind == 'HDF5' else ''} {kind} file; give a name ending in {suffix}."
    assert invdiff("simulate", brain64, "--out", tmp_path / "plain", "-q") == 0  # no suffix, or .h5/.hdf5, is taken


def test_console_script_exit_code(tmp_path):
    """The installed entry point maps bad input to exit code 2 in a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "invdiff", "evaluate", str(tmp_path / "none.h5"), "--reference", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "none.h5" in proc.stderr


@pytest.mark.parametrize(
    "args, phrase, command",
    [
        (["reconstruct", "x.h5", "--steps", "abc"], "invalid value for '--steps' ('abc')", "invdiff reconstruct"),
        (["simulate", "x.npy", "--views=abc"], "invalid value for '--views' ('abc')", "invdiff simulate"),
        (["reconstruct", "--nonsense"], "no such option: --nonsense", "invdiff reconstruct"),
        (["simulate", "x.npy", "--views"], "option '--views' requires an argument", "invdiff simulate"),
        (["simulate"], "missing argument 'image'", "invdiff simulate"),
        (["frobnicate"], "no such command 'frobnicate'", "invdiff"),
    ],
)
def test_usage_errors_exit_2_without_traceback(tmp_path, capsys, args, phrase, command):
    """Typer's usage errors (its own vendored click, or click itself) are exit code 2 and one
    line in the ``invdiff: error:`` format: click's message and where the help is."""
    assert invdiff(*args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"invdiff: error: {phrase}") and lines[0].endswith(f"see {command} --help)."), err
    assert "Traceback" not in err and "internal error" not in err


def test_a_mistyped_option_names_the_similar_ones(capsys):
    assert invdiff("reconstruct", "x.h5", "--jsn") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("invdiff: error: no such option: --jsn (options with similar names: --json")
    assert err.strip().endswith("; see invdiff reconstruct --help).")


def test_invdiff_alone_prints_the_help(capsys):
    assert invdiff() == 2
    captured = capsys.readouterr()
    assert "Commands" in captured.out + captured.err and "invdiff: error" not in captured.err


def test_info_solvers_lists_options_and_tuned_defaults(capsys):
    from invdiff.solvers.base import SOLVERS, get_solver

    assert invdiff("info", "--solvers", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["solver_details"]) == set(out["solvers"]) == set(SOLVERS.names())
    diffpir = out["solver_details"]["diffpir"]
    assert diffpir["options"]["classical_weight"] == 0.0 and diffpir["options"]["data_weight"] == "1"
    assert diffpir["tuned_defaults"]["radon"] == get_solver("diffpir").defaults["radon"]
    assert out["solver_details"]["langevin"]["exact"] is True
    assert diffpir["data_weight_auto"] is True and out["solver_details"]["dps"]["data_weight_auto"] is False
    assert diffpir["options"]["adapt_iters"] == 0


def test_info_describes_a_dicom_series_folder_and_refuses_other_folders(tmp_path, capsys):
    """A folder with config.json is a prior; one of DICOM files is the series `simulate`,
    `train` and `reconstruct --reference` read: info gives its stack shape and spacing; any
    other folder gets one sentence and exit code 2."""
    from helpers_cli import ct_slice

    series = tmp_path / "series"
    series.mkdir()
    for i, z in enumerate((0.0, 2.5, 5.0)):
        ct_slice(series / f"IM{i}", np.full((8, 6), 1024 + 10 * i, np.uint16), z=z, instance=i + 1, spacing=(0.7, 0.8))
    assert invdiff("info", series, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "image (dicom)" and out["data"]["shape"] == [3, 8, 6] and out["units"] == "HU"
    assert out["spacing_mm"] == pytest.approx([2.5, 0.7, 0.8])
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    assert invdiff("info", other) == 2
    err = capsys.readouterr().err
    assert str(other) in err and "neither a prior" in err and "Traceback" not in err


def test_provenance_summarises_the_operators_arrays_it_does_not_hold(tmp_path, brain64):
    """The result file holds no copy of the mask or PSF, so its provenance gives each array's
    shape and checksum instead of a reference to a dataset the file lacks."""
    import hashlib

    for operator, options, method, key in (("blur", ["--psf", "gaussian:1.5"], "wiener", "psf"),
                                            ("mri", ["--acceleration", "4"], "zero-filled", "mask")):
        sim, rec = tmp_path / f"{operator}.h5", tmp_path / f"{operator}_r.h5"
        assert invdiff("simulate", brain64, "--operator", operator, *options, "--noise-std", "0.01", "--out", sim, "-q") == 0
        assert invdiff("reconstruct", sim, "--method", method, "--out", rec, "-q") == 0
        with h5py.File(sim) as f:
            array = np.ascontiguousarray(f[key][()])
        with h5py.File(rec) as f:
            entry = json.loads(f.attrs["invdiff_provenance"])["operator"]["params"][key]
            assert f"params/{key}" not in f
        assert "$array" not in entry and entry["shape"] == list(array.shape)
        assert entry["sha256"] == hashlib.sha256(array.tobytes()).hexdigest()
