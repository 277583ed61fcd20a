"""Issue 6: a run killed at any moment leaves the complete old output or the complete new one.

Two complementary checks, for `reconstruct` (HDF5 result, PNG preview, DICOM series) and for
`train` (prior directory, checkpoint, logs):

* crash images: every write step (each HDF5 dataset, each rename, each folder exchange) is
  hooked, and at each one the output folder is copied exactly as a SIGKILL at that instant would
  leave it on disk; every copy must hold only complete old or complete new outputs (and a
  training run must resume from each one to the same weights);
* real SIGKILLs at random moments of a child process that keeps rewriting its outputs, and of a
  training run that is then resumed until it finishes: its weights must be bit-identical to
  those of a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pydicom
import pytest
import torch

from helpers_cli import REPO, TRAIN_TINY, brain32, invdiff, tiny_prior
from invdiff.io.hdf5 import read_result
from invdiff.prior.store import EMA_NAME, RAW_NAME, load_prior, load_weights, save_prior
from invdiff.prior.train import CHECKPOINT, read_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}




@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    np.save(root / "img.npy", brain32())
    assert invdiff("simulate", root / "img.npy", "--operator", "radon", "--views", "20", "--noise-rel", "0.01",
                   "--out", root / "ct.h5", "-q", "--device", "cpu") == 0
    tiny_prior(root / "prior")
    np.save(root / "train.npy", np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    return root


# --- what a complete output is --------------------------------------------------------------

def result_arrays(path: Path) -> dict[str, np.ndarray]:
    r = read_result(path)  # raises on a partial file
    return {k: r[k] for k in ("reconstruction", "std") if r.get(k) is not None}


def dicom_pixels(folder: Path) -> list[np.ndarray]:
    files = sorted(folder.glob("*.dcm"))
    return [pydicom.dcmread(f).pixel_array for f in files]


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def check_recon_outputs(folder: Path, versions: list[dict]) -> None:
    """Each output present in ``folder`` equals the same output of one of the ``versions``
    (complete runs); nothing but outputs and hidden temporaries is there."""
    visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert set(visible) <= {"out.h5", "out.png", "out_dicom"}, visible
    if (folder / "out.h5").exists():
        arrays = result_arrays(folder / "out.h5")
        assert any(same(arrays, v["h5"]) for v in versions), "out.h5 is neither the old nor the new result"
    if (folder / "out.png").exists():
        assert any((folder / "out.png").read_bytes() == v["png"] for v in versions), "out.png is partial"
    if (folder / "out_dicom").exists():
        pixels = dicom_pixels(folder / "out_dicom")
        assert any(len(pixels) == len(v["dicom"]) and all(np.array_equal(a, b) for a, b in zip(pixels, v["dicom"]))
                   for v in versions), "out_dicom is neither the old nor the new series"


def recon_args(inputs: Path, folder: Path, seed: int) -> list:
    return ["reconstruct", inputs / "ct.h5", "--prior", inputs / "prior", "--solver", "dds", "--steps", "2",
            "--samples", "2", "--seed", str(seed), "--device", "cpu", "-q", "--out", folder / "out.h5",
            "--png", folder / "out.png", "--dicom", folder / "out_dicom"]


def version_of(folder: Path) -> dict:
    return {"h5": result_arrays(folder / "out.h5"), "png": (folder / "out.png").read_bytes(),
            "dicom": dicom_pixels(folder / "out_dicom")}


# --- crash images at every write step ---------------------------------------------------------

class CrashImages:
    """Hooks the write steps; at each, copies ``folder`` as a SIGKILL would leave it."""

    def __init__(self, folder: Path, images: Path, monkeypatch):
        self.folder, self.images, self.count = folder, images, 0
        real_replace = os.replace
        real_create = h5py.Group.create_dataset
        import invdiff.io.atomic as atomic
        import invdiff.io.dicom as dicom

        real_exchange = atomic.exchange_paths

        def replace(src, dst, *a, **k):
            self.snap()
            real_replace(src, dst, *a, **k)
            self.snap()

        def create(group, *a, **k):
            self.snap()
            return real_create(group, *a, **k)

        def exchange(a, b):
            self.snap()
            done = real_exchange(a, b)
            self.snap()
            return done

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(h5py.Group, "create_dataset", create)
        monkeypatch.setattr(dicom, "exchange_paths", exchange)

    def snap(self) -> None:
        self.count += 1
        target = self.images / f"{self.count:03d}"
        shutil.copytree(self.folder, target, symlinks=True, ignore_dangling_symlinks=True)


def test_reconstruct_crash_at_every_write_step(inputs, tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    assert invdiff(*recon_args(inputs, folder, 1)) == 0
    old = version_of(folder)
    crashes = CrashImages(folder, tmp_path / "crash", monkeypatch)
    assert invdiff(*recon_args(inputs, folder, 2)) == 0
    monkeypatch.undo()
    new = version_of(folder)
    assert not same(old["h5"], new["h5"])  # the two versions are distinguishable
    assert crashes.count >= 8, crashes.count
    for image in sorted((tmp_path / "crash").iterdir()):
        check_recon_outputs(image, [old, new])
        assert (image / "out.h5").exists() and (image / "out_dicom").exists()  # the old ones never vanish


def _weights_of(prior_dir: Path) -> dict[str, torch.Tensor]:
    return load_weights(prior_dir / EMA_NAME)


def _equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_crash_at_every_write_step_resumes_exactly(inputs, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert invdiff("train", inputs / "train.npy", "--out", straight, *TRAIN_TINY, "--steps", "4") == 0
    run = tmp_path / "run"
    assert invdiff("train", inputs / "train.npy", "--out", run, *TRAIN_TINY, "--steps", "2") == 0
    old_ema = _weights_of(run)
    crashes = CrashImages(run, tmp_path / "crash", monkeypatch)
    assert invdiff("train", inputs / "train.npy", "--out", run, *TRAIN_TINY, "--steps", "4", "--resume") == 0
    monkeypatch.undo()
    new_ema = _weights_of(run)
    assert not _equal_states(old_ema, new_ema)
    assert crashes.count >= 10, crashes.count
    final = load_weights(straight / RAW_NAME)
    for image in sorted((tmp_path / "crash").iterdir()):
        prior = load_prior(image)  # always a complete prior: the old one or the new one
        state = {k: v for k, v in prior.precond.state_dict().items()}
        assert _equal_states(state, old_ema) or _equal_states(state, new_ema), image.name
        _, ckpt = read_checkpoint(image / CHECKPOINT)
        assert ckpt["step"] in (2, 4)
        # training resumes from the crash image and ends with the uninterrupted run's weights
        assert invdiff("train", inputs / "train.npy", "--out", image, *TRAIN_TINY, "--steps", "4", "--resume") == 0
        assert _equal_states(load_weights(image / RAW_NAME), final), image.name


def test_prior_caught_between_weights_and_config_is_the_new_prior(inputs, tmp_path, monkeypatch):
    """The one window a directory cannot close by renames: the new EMA weights are in place, the
    new config.json is not. The weights carry their own config, so the prior loads as the new one."""
    from invdiff.io import atomic
    from invdiff.prior import store

    out = tmp_path / "prior"
    tiny_prior(out, seed=0)
    config = load_prior(out).config
    newer = tiny_prior(tmp_path / "other", seed=1)
    new_state = load_weights(newer / EMA_NAME)

    def killed(target, text):
        raise KeyboardInterrupt  # stands in for a kill just before config.json is replaced

    monkeypatch.setattr(store, "atomic_write_text", killed)
    changed = dict(config, training={**config["training"], "steps_done": 99})
    with pytest.raises(KeyboardInterrupt):
        save_prior(out, changed, new_state, new_state)
    monkeypatch.setattr(store, "atomic_write_text", atomic.atomic_write_text)
    prior = load_prior(out)
    assert _equal_states(prior.precond.state_dict(), new_state)
    assert prior.config["training"]["steps_done"] == 99 and prior.checksum == store.sha256_file(out / EMA_NAME)
    # ... but weights that were edited (not a save of the same network) are still refused
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in new_state.items()}, str(out / EMA_NAME),
              metadata=store.weights_metadata(out / EMA_NAME))
    with pytest.raises(Exception, match="checksum"):
        load_prior(out)


# --- real SIGKILLs at random moments ------------------------------------------------------------

RECON_CHILD = r"""
import sys, time
from pathlib import Path
from invdiff.cli import app
from invdiff.cli.common import run_app
args_for = lambda seed: [a.replace("SEED", str(seed)) for a in sys.argv[1:]]
assert run_app(app, args_for(1)) == 0  # imports and warm-up
start = time.perf_counter()
assert run_app(app, args_for(2)) == 0
print("ready", time.perf_counter() - start, flush=True)  # the time one rewrite takes
i = 0
while True:
    i += 1
    assert run_app(app, args_for(1 + i % 2)) == 0
"""


def _start(code: str, args: list) -> tuple[subprocess.Popen, float]:
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise AssertionError(f"child did not start: {line}{proc.stderr.read()}")
    return proc, float(line.split()[1])


def _kill_after(proc: subprocess.Popen, seconds: float) -> None:
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def test_reconstruct_killed_at_random_moments(inputs, tmp_path):
    rng = random.Random(6)
    versions = []
    for seed in (1, 2):
        ref = tmp_path / f"ref{seed}"
        ref.mkdir()
        assert invdiff(*recon_args(inputs, ref, seed)) == 0
        versions.append(version_of(ref))
    folder = tmp_path / "work"
    folder.mkdir()
    args = [str(a) for a in recon_args(inputs, folder, 0)]
    args[args.index("--seed") + 1] = "SEED"
    for _ in range(4):
        proc, one_run = _start(RECON_CHILD, args)
        _kill_after(proc, rng.uniform(0.0, 2 * one_run))
        check_recon_outputs(folder, versions)
        assert (folder / "out.h5").exists()


TRAIN_CHILD = r"""
import sys
from invdiff.cli import app
from invdiff.cli.common import run_app
print("ready 0", flush=True)
sys.exit(run_app(app, sys.argv[1:]))
"""


def test_training_killed_at_random_moments_resumes_to_the_same_weights(inputs, tmp_path):
    rng = random.Random(66)
    steps = 12
    straight = tmp_path / "straight"
    start = time.perf_counter()
    assert invdiff("train", inputs / "train.npy", "--out", straight, *TRAIN_TINY, "--steps", str(steps)) == 0
    duration = time.perf_counter() - start
    run = tmp_path / "run"
    kills = 0
    for attempt in range(8):
        resume = ["--resume"] if (run / CHECKPOINT).exists() else []
        args = ["train", inputs / "train.npy", "--out", run, *TRAIN_TINY, "--steps", str(steps), *resume]
        proc, _ = _start(TRAIN_CHILD, args)
        if kills < 3:
            _kill_after(proc, rng.uniform(0.3, 0.3 + 2 * duration))
            if proc.returncode == -signal.SIGKILL:
                kills += 1
        else:
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
            proc.stdout.close()
            proc.stderr.close()
            break
        # after each kill: what is there is complete
        if (run / "config.json").exists():
            load_prior(run)
        if (run / CHECKPOINT).exists():
            _, state = read_checkpoint(run / CHECKPOINT)
            assert state["step"] % 2 == 0
    assert kills == 3
    for name in (RAW_NAME, EMA_NAME):
        assert _equal_states(load_weights(run / name), load_weights(straight / name)), name
    assert load_prior(run).config["training"]["steps_done"] == steps
