"""Output paths: an unwritable location is refused before any work, a failed command leaves
none of its outputs, and no output may replace the prior a command reads.

Every refusal follows the bad-input contract (helpers_cli.expect_bad): exit code 2, one sentence
on stderr naming the path, no traceback, and no file under the test folder created, changed or
removed (which covers the prior's files: their digests are compared too). The tests run as
root, where permission bits do not stop a write, so "a parent that is a file" stands in for an
unwritable folder (and /sys where it refuses root).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from helpers_cli import TRAIN_TINY, brain32, expect_bad, invdiff, tiny_prior
from invdiff.errors import InputError

CPU = ["--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image, a CT measurement of it, a tiny prior and training data (copied per test)."""
    root = tmp_path_factory.mktemp("outputs")
    np.save(root / "img.npy", brain32())
    assert invdiff("simulate", root / "img.npy", "--operator", "radon", "--views", "20", "--noise-rel", "0.01",
                   "--out", root / "ct.h5", *CPU) == 0
    tiny_prior(root / "prior")
    np.save(root / "train.npy", np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    return root


@pytest.fixture
def work(world, tmp_path, monkeypatch):
    """A fresh copy of the world in tmp_path, which is also the working directory."""
    for name in ("img.npy", "ct.h5", "train.npy"):
        shutil.copy(world / name, tmp_path / name)
    shutil.copytree(world / "prior", tmp_path / "prior")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _sys_refuses_root() -> bool:
    try:
        fd, name = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


# --- 1. an output location that cannot be written: refused up front -------------------------

def _unwritable_cases(w: Path) -> dict[str, tuple[list, Path]]:
    """Each command with one output whose parent is a file (img.npy)."""
    bad = w / "img.npy"
    ct, prior = w / "ct.h5", w / "prior"
    recon = ["reconstruct", ct, "--method", "fbp", *CPU]
    sample = ["sample", "--prior", prior, "-n", "1", "--steps", "2", *CPU]
    return {
        "simulate --out": (["simulate", w / "img.npy", "--views", "10", "--out", bad / "o.h5", *CPU], bad / "o.h5"),
        "reconstruct --out": ([*recon, "--out", bad / "r.h5"], bad / "r.h5"),
        "reconstruct --png": ([*recon, "--out", w / "r.h5", "--png", bad / "p.png"], bad / "p.png"),
        "reconstruct --dicom": ([*recon, "--out", w / "r.h5", "--dicom", bad / "dcm"], bad / "dcm"),
        "reconstruct --out-dir": (["reconstruct", ct, w / "img.npy", "--operator", "radon", "--method", "fbp",
                                   "--out-dir", bad, *CPU], bad),
        "reconstruct --png deep": ([*recon, "--out", w / "r.h5", "--png", bad / "sub" / "p.png"], bad / "sub" / "p.png"),
        "calibrate --out": (["calibrate", ct, "--reference", w / "img.npy", "--out", bad / "cal.json"], bad / "cal.json"),
        "sample --out": ([*sample, "--out", bad / "s.h5"], bad / "s.h5"),
        "sample --png": ([*sample, "--out", w / "s.h5", "--png", bad / "g.png"], bad / "g.png"),
    }


@pytest.mark.parametrize("case", list(_unwritable_cases(Path("w"))))
def test_output_under_a_file_is_refused_up_front(work, capsys, case):
    args, culprit = _unwritable_cases(work)[case]
    message = expect_bad(work, capsys, args, culprit, "is a file, not a folder")
    assert "img.npy" in message


def test_train_checks_out_before_training(work, capsys, monkeypatch):
    import invdiff.prior.train as training

    def never(*args, **kwargs):
        raise AssertionError("training started although --out cannot be written")

    monkeypatch.setattr(training, "train", never)
    out = work / "img.npy" / "tp"
    expect_bad(work, capsys, ["train", work / "train.npy", "--out", out, *TRAIN_TINY, "--steps", "2"], out,
               "is a file, not a folder")


@pytest.mark.skipif(not Path("/sys").is_dir() or not _sys_refuses_root(), reason="/sys takes files here")
@pytest.mark.parametrize("command", ["simulate", "reconstruct", "train"])
def test_permission_denied_names_the_path_and_reason(work, capsys, command):
    args = {
        "simulate": ["simulate", work / "img.npy", "--views", "10", "--out", "/sys/o.h5", *CPU],
        "reconstruct": ["reconstruct", work / "ct.h5", "--method", "fbp", "--out", "/sys/o.h5", *CPU],
        "train": ["train", work / "train.npy", "--out", "/sys/o.h5", *TRAIN_TINY, "--steps", "2"],
    }[command]
    expect_bad(work, capsys, args, "/sys/o.h5", "permission denied")


def test_check_output_tries_the_folder(tmp_path):
    from invdiff.cli.common import check_output, check_output_folder

    (tmp_path / "f.npy").write_bytes(b"x")
    with pytest.raises(InputError, match="f.npy is a file, not a folder"):
        check_output(tmp_path / "f.npy" / "a" / "o.h5")
    with pytest.raises(InputError, match="f.npy is a file, not a folder"):
        check_output_folder(tmp_path / "f.npy" / "prior")
    assert check_output(tmp_path / "new" / "sub" / "o.h5") == tmp_path / "new" / "sub" / "o.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]  # no folder made, no probe left


def test_atomic_path_turns_os_errors_into_input_errors(tmp_path):
    from invdiff.io.atomic import atomic_path, atomic_write_text

    (tmp_path / "f.npy").write_bytes(b"x")
    with pytest.raises(InputError, match=r"f.npy/o.txt: cannot write the output file \(.*f.npy is a file, not a folder\)"):
        atomic_write_text(tmp_path / "f.npy" / "o.txt", "hello")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "new" / "sub" / "o.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("failed while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy"]  # the folders made for it are gone again


def test_save_prior_into_an_unwritable_folder_is_an_input_error(tmp_path):
    (tmp_path / "f.npy").write_bytes(b"x")
    with pytest.raises(InputError, match=r"f.npy/p: cannot create the prior directory \(.*f.npy is a file, not a folder\)"):
        tiny_prior(tmp_path / "f.npy" / "p")


def test_a_new_output_folder_is_made_only_when_the_command_succeeds(work, capsys):
    out = work / "new" / "sub" / "r.h5"
    expect_bad(work, capsys, ["reconstruct", work / "ct.h5", "--method", "fbp", "--out", out, "--png", out,
                              *CPU], out)
    assert invdiff("reconstruct", work / "ct.h5", "--method", "fbp", "--out", out, *CPU) == 0
    assert out.is_file()


# --- 2. a failed command leaves none of its outputs ---------------------------------------------

def _recon_all(w: Path) -> list:
    return ["reconstruct", w / "ct.h5", "--method", "fbp", "--out", w / "r.h5", "--png", w / "p.png",
            "--dicom", w / "dcm", *CPU]


def test_reconstruct_failing_result_write_leaves_no_png_or_dicom(work, capsys, monkeypatch):
    import invdiff.pipeline.outputs as outputs

    def full(path, *args, **kwargs):
        raise InputError(f"{path}: cannot write the result file (No space left on device).")

    monkeypatch.setattr(outputs, "write_result", full)
    message = expect_bad(work, capsys, _recon_all(work), work / "r.h5", "no space left")
    assert ".tmp" not in message  # names the output, not its temporary file


def test_reconstruct_failing_dicom_write_leaves_no_png_or_result(work, capsys, monkeypatch):
    import invdiff.io.dicom as dicom

    def fails(out_dir, *args, **kwargs):
        raise InputError(f"{out_dir}: cannot create the DICOM output folder (No space left on device).")

    monkeypatch.setattr(dicom, "write_dicom_series", fails)
    expect_bad(work, capsys, _recon_all(work), work / "dcm", "no space left")


def _fail_rename_onto(monkeypatch, name: str) -> None:
    """Make the rename onto a file called ``name`` fail as a full disk would."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_reconstruct_failing_final_rename_removes_this_runs_outputs(work, capsys, monkeypatch):
    """The last step (the result's rename) fails: the PNG and DICOM series this run already put
    in place are removed again, and the DICOM folder too, since this run made it; a file of the
    user's beside them stays."""
    (work / "notes.txt").write_text("mine")
    _fail_rename_onto(monkeypatch, "r.h5")
    before = sorted(p.name for p in work.iterdir())
    assert invdiff(*_recon_all(work)) != 0
    capsys.readouterr()
    assert sorted(p.name for p in work.iterdir()) == before
    assert (work / "notes.txt").read_text() == "mine"


def test_reconstruct_failed_rename_keeps_an_existing_dicom_folder_and_its_other_files(work, capsys, monkeypatch):
    (work / "dcm").mkdir()
    _fail_rename_onto(monkeypatch, "r.h5")
    assert invdiff(*_recon_all(work)) != 0
    capsys.readouterr()
    assert (work / "dcm").is_dir() and list((work / "dcm").iterdir()) == []  # the user's folder stays
    assert not (work / "p.png").exists() and not (work / "r.h5").exists()


def test_sample_failing_png_write_leaves_no_samples(work, capsys, monkeypatch):
    import invdiff.io.png as png

    def fails(path, *args, **kwargs):
        raise InputError(f"{path}: cannot write the PNG file (No space left on device).")

    monkeypatch.setattr(png, "save_grid", fails)
    expect_bad(work, capsys, ["sample", "--prior", work / "prior", "-n", "1", "--steps", "2", "--out", work / "s.h5",
                              "--png", work / "g.png", *CPU], work / "g.png", "no space left")


def test_reconstruct_and_sample_still_write_all_outputs(work, capsys):
    assert invdiff(*_recon_all(work)) == 0
    assert (work / "r.h5").is_file() and (work / "p.png").is_file() and len(list((work / "dcm").iterdir())) == 2
    assert invdiff("sample", "--prior", work / "prior", "-n", "1", "--steps", "2", "--out", work / "s.h5",
                   "--png", work / "g.png", *CPU) == 0
    assert (work / "s.h5").is_file() and (work / "g.png").is_file()
    assert not [p for p in work.rglob(".*")]  # no temporaries or probes left


# --- 3. no output may replace the prior a command reads -------------------------------------

def _prior_cases(w: Path) -> dict[str, tuple[list, Path]]:
    prior, ct = w / "prior", w / "ct.h5"
    recon = ["reconstruct", ct, "--prior", prior, "--solver", "dds", "--steps", "2", "--samples", "2", *CPU]
    sample = ["sample", "--prior", prior, "-n", "1", "--steps", "2", *CPU]
    return {
        "sample --out config": ([*sample, "--out", prior / "config.json"], prior / "config.json"),
        "sample --png": ([*sample, "--out", w / "s.h5", "--png", prior / "config.json"], prior / "config.json"),
        "sample --out new file": ([*sample, "--out", prior / "s.h5"], prior / "s.h5"),
        "reconstruct --out weights": ([*recon, "--out", prior / "weights_ema.safetensors"],
                                      prior / "weights_ema.safetensors"),
        "reconstruct --png config": ([*recon, "--out", w / "r.h5", "--png", prior / "config.json"],
                                     prior / "config.json"),
        "reconstruct --dicom": ([*recon, "--out", w / "r.h5", "--dicom", prior / "dcm"], prior / "dcm"),
        "reconstruct --dicom prior": ([*recon, "--out", w / "r.h5", "--dicom", prior], prior),
        "reconstruct --out-dir": (["reconstruct", ct, w / "img.npy", "--operator", "radon", "--prior", prior,
                                   "--steps", "2", "--out-dir", prior, *CPU], prior / "ct.h5"),
        "train --init": (["train", w / "train.npy", "--init", prior, "--out", prior, *TRAIN_TINY, "--steps", "1"],
                         prior),
    }


@pytest.mark.parametrize("case", list(_prior_cases(Path("w"))))
def test_output_inside_the_prior_is_refused(work, capsys, case):
    args, culprit = _prior_cases(work)[case]
    before = digests(work / "prior")
    expect_bad(work, capsys, args, culprit, "prior directory")
    assert digests(work / "prior") == before


def test_output_onto_the_calibration_file_is_refused(work, capsys):
    from invdiff.pipeline.calibration import Calibration

    cal = work / "cal.json"
    cal.write_text(Calibration(scale=1.5, alpha=0.1, z=2.0, images=10, risk_calibrated=0.1, risk_uncalibrated=0.2,
                               solver="dds", samples=2, std_window=1, operator="radon").to_json())
    for option in ("--out", "--png"):
        outputs = [option, cal] if option == "--out" else ["--out", work / "r.h5", "--png", cal]
        expect_bad(work, capsys, ["reconstruct", work / "ct.h5", "--prior", work / "prior", "--steps", "2",
                                  "--samples", "2", "--calibration", cal, *outputs, *CPU], cal, "overwrite")


def test_output_into_the_shipped_default_prior_is_refused(work, capsys, monkeypatch):
    """Without --prior the shipped prior is read, so it is protected as --prior is."""
    import invdiff.pipeline.defaults as defaults
    import invdiff.prior.store as store

    shipped = work / "shipped"
    shutil.copytree(work / "prior", shipped / defaults.DEFAULT_PRIOR)
    monkeypatch.setattr(defaults, "PRIORS_DIR", shipped)
    monkeypatch.setattr(store, "default_prior_path", lambda: shipped / defaults.DEFAULT_PRIOR)
    prior = shipped / defaults.DEFAULT_PRIOR
    before = digests(prior)
    expect_bad(work, capsys, ["reconstruct", work / "ct.h5", "--steps", "2", "--samples", "2",
                              "--out", prior / "config.json", *CPU], prior / "config.json", "prior directory")
    expect_bad(work, capsys, ["sample", "-n", "1", "--steps", "2", "--out", prior / "weights_ema.safetensors", *CPU],
               prior / "weights_ema.safetensors", "prior directory")
    assert digests(prior) == before


# --- 8, 10. ignored options and misleading messages ------------------------------------------------

def test_sample_ode_refuses_steps(work, capsys):
    message = expect_bad(work, capsys, ["sample", "--prior", work / "prior", "-n", "1", "--sampler", "ode",
                                        "--steps", "2", "--out", work / "s.h5", *CPU], "--steps", "adaptive")
    assert "--sampler ode" in message


def test_reconstruct_one_input_without_out_asks_for_out(work, capsys):
    message = expect_bad(work, capsys, ["reconstruct", work / "ct.h5", "--method", "fbp", *CPU], work / "ct.h5", "--out")
    assert "several" not in message


def test_prior_that_is_a_file_says_so(work, capsys):
    message = expect_bad(work, capsys, ["reconstruct", work / "ct.h5", "--prior", work / "img.npy", "--steps", "2",
                                        "--out", work / "r.h5", *CPU], work / "img.npy", "is a file")
    assert "does not exist" not in message


# --- 4. an output that is a device, FIFO or socket is refused, never replaced (QA D1) -----------

SPECIAL = "is not a regular file"


@pytest.fixture
def pipes(tmp_path_factory):
    """A folder outside `work` for FIFOs: expect_bad's snapshot reads every file under its root,
    and reading a FIFO with no writer would block."""
    return tmp_path_factory.mktemp("pipes")


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _is_fifo(path: Path) -> bool:
    import stat

    return stat.S_ISFIFO(os.lstat(path).st_mode)


def _special_cases(w: Path, fifo: Path) -> dict[str, list]:
    """Each output option of each command, given ``fifo`` as its path."""
    ct, prior = w / "ct.h5", w / "prior"
    recon = ["reconstruct", ct, "--method", "fbp", *CPU]
    sample = ["sample", "--prior", prior, "-n", "1", "--steps", "2", *CPU]
    return {
        "simulate --out": ["simulate", w / "img.npy", "--views", "10", "--out", fifo, *CPU],
        "reconstruct --out": [*recon, "--out", fifo],
        "reconstruct --png": [*recon, "--out", w / "r.h5", "--png", fifo],
        "calibrate --out": ["calibrate", ct, "--reference", w / "img.npy", "--out", fifo],
        "sample --out": [*sample, "--out", fifo],
        "sample --png": [*sample, "--out", w / "s.h5", "--png", fifo],
    }


@pytest.mark.parametrize("case", list(_special_cases(Path("w"), Path("f"))))
def test_output_that_is_a_fifo_is_refused_up_front(work, pipes, capsys, case):
    name = "out.png" if "--png" in case else "out.json" if "calibrate" in case else "out.h5"  # the name its format takes
    fifo = _fifo(pipes / name)
    expect_bad(work, capsys, _special_cases(work, fifo)[case], fifo, SPECIAL)
    assert _is_fifo(fifo) and sorted(p.name for p in pipes.iterdir()) == [name]


def test_output_that_links_to_a_fifo_is_refused(work, pipes, capsys):
    fifo = _fifo(pipes / "out.fifo")
    link = pipes / "link.h5"
    link.symlink_to(fifo)
    expect_bad(work, capsys, _special_cases(work, link)["simulate --out"], link, SPECIAL)
    assert link.is_symlink() and _is_fifo(fifo)


def test_train_output_folder_holding_a_fifo_is_refused_before_training(work, pipes, capsys, monkeypatch):
    import invdiff.prior.train as training

    def never(*args, **kwargs):
        raise AssertionError("training started although an output is a FIFO")

    monkeypatch.setattr(training, "train", never)
    fifo = _fifo(pipes / "tp" / "training_log.csv")
    expect_bad(work, capsys, ["train", work / "train.npy", "--out", pipes / "tp", *TRAIN_TINY, "--steps", "2"],
               fifo, SPECIAL)
    assert _is_fifo(fifo)


def test_atomic_writes_never_replace_a_fifo(tmp_path):
    """The writer's own check, for callers that skip the command's up-front one: before the
    temporary is made, and again just before the rename."""
    from invdiff.io.atomic import atomic_path, atomic_paths, atomic_write_text

    fifo = _fifo(tmp_path / "f")
    with pytest.raises(InputError, match=f"f: output exists and {SPECIAL} \\(a device or pipe\\); give a file path"):
        atomic_write_text(fifo, "x")
    with pytest.raises(InputError, match=SPECIAL), atomic_paths([tmp_path / "a.txt", fifo]):
        pass
    late = tmp_path / "late"
    with pytest.raises(InputError, match=SPECIAL), atomic_path(late) as tmp:
        tmp.write_text("x")
        os.mkfifo(late)  # the target turns into a FIFO while the output is written
    assert _is_fifo(fifo) and _is_fifo(late)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "late"]


# --- 5. a full disk while an output is written: exit 2 naming it, nothing left (QA D2) ------------

def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillingFile:
    """A file whose writes fail with ENOSPC once ``room`` bytes have been written, as on a disk
    that fills up; reads, seeks and the rest go to the real file."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data) -> int:
        size = len(memoryview(data))
        if size > self._room:
            _enospc()
        self._room -= size
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _disk_with_room(monkeypatch, room: int) -> None:
    """The HDF5 writer's files (invdiff/io/hdf5.py opens them) fill up after ``room`` bytes."""
    import builtins

    import invdiff.io.hdf5 as hdf5

    monkeypatch.setattr(hdf5, "open", lambda *a, **k: _FillingFile(builtins.open(*a, **k), room), raising=False)


def test_result_write_on_a_full_disk_is_an_input_error_at_every_point(tmp_path, monkeypatch):
    """Whichever write fails (a dataset, the metadata written when the file is closed), the
    result is an InputError naming the output, no file is left, and the interpreter survives
    (a failed close used to leave an HDF5 file id that crashed it at exit)."""
    import gc

    from invdiff.io.hdf5 import read_result, write_result

    rec = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    write_result(tmp_path / "whole.h5", rec, std=rec, provenance={"k": "x" * 500})
    size = (tmp_path / "whole.h5").stat().st_size  # less room than this can never hold the file
    out = tmp_path / "o.h5"
    with monkeypatch.context() as patch:
        for room in range(0, size, 499):
            _disk_with_room(patch, room)
            with pytest.raises(InputError, match=r"o.h5: cannot write the output \(No space left on device\)\.$"):
                write_result(out, rec, std=rec, provenance={"k": "x" * 500})
            assert [p.name for p in tmp_path.iterdir()] == ["whole.h5"]
        gc.collect()
        _disk_with_room(patch, 1 << 30)
        write_result(out, rec, std=rec)
    assert np.array_equal(read_result(out)["std"], rec)


def test_simulate_on_a_full_disk_exits_2_in_a_real_process(work):
    """The whole command in a child process: exit code 2 (no crash at exit: a segfault is 139)."""
    script = ("import builtins, errno, os, sys\n"
              "import invdiff.io.hdf5 as hdf5\n"
              "class Full:\n"
              "    def __init__(self, fh): self._fh = fh\n"
              "    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
              "    def __getattr__(self, name): return getattr(self._fh, name)\n"
              "hdf5.open = lambda *a, **k: Full(builtins.open(*a, **k))\n"
              "from invdiff.cli import app\n"
              "from invdiff.cli.common import run_app\n"
              "sys.exit(run_app(app, sys.argv[1:]))\n")
    child = subprocess.run([sys.executable, "-c", script, "simulate", "img.npy", "--views", "10", "--out", "o.h5", *CPU],
                           cwd=work, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == 2, child.stderr
    assert child.stderr.strip() == "invdiff: error: o.h5: cannot write the output (No space left on device)."
    assert not (work / "o.h5").exists() and not list(work.glob(".o.h5*"))


def test_reconstruct_on_a_full_disk_names_the_result(work, capsys, monkeypatch):
    _disk_with_room(monkeypatch, 2000)
    expect_bad(work, capsys, _recon_all(work), work / "r.h5", "cannot write the output (No space left on device)")


def test_dicom_series_on_a_full_disk_names_the_folder(work, capsys, monkeypatch):
    from pydicom.dataset import Dataset

    monkeypatch.setattr(Dataset, "save_as", _enospc)
    expect_bad(work, capsys, _recon_all(work), work / "dcm", "cannot write the DICOM series (No space left on device)")


def test_json_on_a_full_disk_is_an_input_error(tmp_path, monkeypatch):
    from invdiff.io.atomic import atomic_write_text

    monkeypatch.setattr(Path, "write_bytes", _enospc)
    with pytest.raises(InputError, match=r"c.json: cannot write the output \(No space left on device\)\.$"):
        atomic_write_text(tmp_path / "c.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_on_a_full_disk_names_the_output(work, capsys, monkeypatch):
    _fail_rename_onto(monkeypatch, "r.h5")
    expect_bad(work, capsys, _recon_all(work), work / "r.h5", "cannot write the output (No space left on device)")
