"""Issue 6: loading priors, checkpoints and arrays never unpickles anything.

A pickle whose unpickling creates a marker file is planted wherever invdiff reads weights, a
checkpoint or an array (as a raw pickle, as a torch.save zip, inside NPY/NPZ); every command must
refuse it with exit code 2 and one sentence naming the file, and the marker must not appear.
Then a whole good workflow runs with every unpickling entry point booby-trapped, which shows that
no code path unpickles even valid files. (tests/test_prior_store.py covers load_prior alone.)
"""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_cli import REPO, TRAIN_TINY, brain32, expect_bad, invdiff, prior_command, tiny_prior
from invdiff.prior.store import EMA_NAME, RAW_NAME



class Exploit:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def payloads(marker: Path) -> dict[str, bytes]:
    """The same exploit as a raw pickle, a torch.save zip and an NPY of dtype object."""
    buf = io.BytesIO()
    torch.save({"net.conv_in.weight": Exploit(marker)}, buf)
    npy = io.BytesIO()
    np.save(npy, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    return {"pickle": pickle.dumps({"net.conv_in.weight": Exploit(marker)}), "torch": buf.getvalue(), "npy": npy.getvalue()}


def test_the_payloads_do_run_when_unpickled(tmp_path):
    """The exploit is real: each payload creates the marker when loaded the unsafe way."""
    marker = tmp_path / "marker"
    data = payloads(marker)
    pickle.loads(data["pickle"])
    assert marker.exists()
    marker.unlink()
    torch.load(io.BytesIO(data["torch"]), weights_only=False)
    assert marker.exists()
    marker.unlink()
    np.load(io.BytesIO(data["npy"]), allow_pickle=True)
    assert marker.exists()




@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    np.save(root / "img.npy", brain32())
    assert invdiff("simulate", root / "img.npy", "--operator", "radon", "--views", "20", "--out", root / "ct.h5", "-q", "--device", "cpu") == 0
    tiny_prior(root / "prior")
    np.save(root / "train.npy", np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    assert invdiff("train", root / "train.npy", "--out", root / "run", *TRAIN_TINY, "--steps", "2") == 0
    return root


@pytest.mark.parametrize("kind", ["pickle", "torch"])
@pytest.mark.parametrize("command", ["reconstruct", "sample", "likelihood", "info", "train_init"])
def test_planted_weights_are_refused(base, tmp_path, capsys, kind, command):
    marker = tmp_path / "marker"
    prior = tmp_path / "prior"
    shutil.copytree(base / "prior", prior)
    (prior / EMA_NAME).write_bytes(payloads(marker)[kind])
    (prior / RAW_NAME).write_bytes(payloads(marker)[kind])
    args = prior_command(command, prior, measurement=base / "ct.h5", image=base / "img.npy",
                         train=base / "train.npy", out=tmp_path)
    expect_bad(tmp_path, capsys, args, prior / EMA_NAME, "not a valid safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "torch"])
def test_planted_checkpoint_is_refused(base, tmp_path, capsys, kind):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / "checkpoint.safetensors").write_bytes(payloads(marker)[kind])
    args = ["train", base / "train.npy", "--out", run, *TRAIN_TINY, "--steps", "4", "--resume"]
    expect_bad(tmp_path, capsys, args, run / "checkpoint.safetensors", "not a valid safetensors")
    assert not marker.exists()


def _npz_with(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", member)
    return path


@pytest.mark.parametrize("where", ["simulate_npy", "simulate_npz", "train_npy", "likelihood_npy", "reconstruct_npy",
                                   "psf_npy", "evaluate_reference"])
def test_object_arrays_are_refused(base, tmp_path, capsys, where):
    marker = tmp_path / "marker"
    npy = payloads(marker)["npy"]
    bad = tmp_path / ("bad.npz" if where.endswith("npz") else "bad.npy")
    if where.endswith("npz"):
        _npz_with(bad, npy)
    else:
        bad.write_bytes(npy)
    args = {
        "simulate_npy": ["simulate", bad, "--out", tmp_path / "m.h5", "-q"],
        "simulate_npz": ["simulate", bad, "--out", tmp_path / "m.h5", "-q"],
        "train_npy": ["train", bad, "--out", tmp_path / "p", *TRAIN_TINY, "--steps", "1"],
        "likelihood_npy": ["likelihood", bad, "--prior", base / "prior", "-q", "--device", "cpu"],
        "reconstruct_npy": ["reconstruct", bad, "--operator", "radon", "--views", "20", "--method", "fbp", "--out", tmp_path / "r.h5", "-q"],
        "psf_npy": ["simulate", base / "img.npy", "--operator", "blur", "--psf", bad, "--out", tmp_path / "m.h5", "-q"],
        "evaluate_reference": ["evaluate", base / "ct.h5", "--reference", bad],
    }[where]
    if where == "evaluate_reference":
        # evaluate needs a result file first: use a real one, the reference is the planted array
        assert invdiff("reconstruct", base / "ct.h5", "--method", "fbp", "--out", tmp_path / "res.h5", "-q") == 0
        args[1] = tmp_path / "res.h5"
    expect_bad(tmp_path, capsys, args, bad)
    assert not marker.exists()


def test_planted_pickle_refused_in_a_real_process(base, tmp_path):
    """The installed entry point, in its own process: exit code 2, the file named, no marker."""
    marker = tmp_path / "marker"
    prior = tmp_path / "prior"
    shutil.copytree(base / "prior", prior)
    (prior / EMA_NAME).write_bytes(payloads(marker)["torch"])
    proc = subprocess.run(
        [sys.executable, "-m", "invdiff", "sample", "--prior", str(prior), "-n", "1", "--steps", "2",
         "--out", str(tmp_path / "s.h5"), "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2, proc.stderr
    assert str(prior / EMA_NAME) in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "s.h5").exists()


def test_no_command_unpickles_anything(base, tmp_path, monkeypatch):
    """Every unpickling entry point raises; a full workflow over valid files still succeeds."""

    def trap(*args, **kwargs):
        raise AssertionError("invdiff tried to unpickle something")

    class TrappedUnpickler:
        def __init__(self, *args, **kwargs):
            trap()

    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "Unpickler", TrappedUnpickler)
    monkeypatch.setattr(torch, "load", trap)
    real_np_load = np.load

    def np_load(*args, allow_pickle=False, **kwargs):
        assert not allow_pickle, "np.load with allow_pickle=True"
        return real_np_load(*args, allow_pickle=False, **kwargs)

    monkeypatch.setattr(np, "load", np_load)
    prior = base / "prior"
    out = tmp_path
    assert invdiff("simulate", base / "img.npy", "--operator", "radon", "--views", "20", "--out", out / "ct.h5", "-q") == 0
    assert invdiff("reconstruct", out / "ct.h5", "--prior", prior, "--solver", "dds", "--steps", "2", "--samples", "2",
                   "--out", out / "r.h5", "-q", "--device", "cpu") == 0
    assert invdiff("evaluate", out / "r.h5", "--json") == 0
    assert invdiff("sample", "--prior", prior, "-n", "2", "--steps", "2", "--out", out / "s.h5", "-q", "--device", "cpu") == 0
    assert invdiff("likelihood", base / "img.npy", "--prior", prior, "-q", "--device", "cpu", "--rtol", "1e-2", "--atol", "1e-2") == 0
    assert invdiff("info", prior, "--json") == 0
    shutil.copytree(base / "run", out / "run")
    assert invdiff("train", base / "train.npy", "--out", out / "run", *TRAIN_TINY, "--steps", "4", "--resume") == 0
    assert invdiff("train", base / "train.npy", "--init", prior, "--out", out / "fine", *TRAIN_TINY, "--steps", "1") == 0
