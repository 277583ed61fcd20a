"""Issue 6: the same seed and device give bit-identical results, across separate processes.

tests/test_cli_reconstruct_prior.py and tests/test_cli_workflow.py check this within one process
for one solver (dds) and one noise model; here two fresh interpreters (different hash seeds) run
`simulate` with every noise model and `reconstruct` with stochastic prior solvers, and every
dataset must match bit for bit; a different seed must change them (so the test can fail); and
an input's result does not depend on which other inputs share its batch run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers_cli import REPO, brain32, invdiff, one_thread, tiny_prior

SCRIPT = r"""
import sys
from pathlib import Path
from invdiff.cli import app
from invdiff.cli.common import run_app

out, prior, image, seed = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def run(*args):
    code = run_app(app, [str(a) for a in args] + ["--seed", seed, "--device", "cpu", "-q"])
    assert code == 0, (args, code)
run("simulate", image, "--operator", "radon", "--views", "16", "--photons", "1e4", "--out", out / "ct.h5")
run("simulate", image, "--operator", "mri", "--acceleration", "4", "--coils", "2", "--noise-rel", "0.02", "--out", out / "mri.h5")
run("simulate", image, "--operator", "blur", "--psf", "gaussian:1.2", "--photons", "100", "--read-noise", "1", "--out", out / "blur.h5")
for solver in ("diffpir", "dps"):
    run("reconstruct", out / "ct.h5", "--prior", prior, "--solver", solver, "--steps", "4", "--samples", "2",
        "--keep-samples", "--out", out / f"{solver}.h5")
run("reconstruct", out / "blur.h5", "--prior", prior, "--solver", "pc", "--steps", "3", "--samples", "2", "--out", out / "blur_pc.h5")
"""

FILES = ["ct.h5", "mri.h5", "blur.h5", "diffpir.h5", "dps.h5", "blur_pc.h5"]


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}


def run_in_fresh_process(out: Path, prior: Path, image: Path, seed: int, hash_seed: str) -> None:
    out.mkdir()
    # one thread: fast on a loaded CI machine (results are compared between equal settings)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(prior), str(image), str(seed)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    np.save(root / "img.npy", brain32())
    prior = tiny_prior(root / "prior")
    run_in_fresh_process(root / "a", prior, root / "img.npy", 3, "1")
    run_in_fresh_process(root / "b", prior, root / "img.npy", 3, "987")
    run_in_fresh_process(root / "c", prior, root / "img.npy", 4, "1")
    return root


@pytest.mark.parametrize("name", FILES)
def test_same_seed_is_bit_identical_across_processes(runs, name):
    a, b = datasets(runs / "a" / name), datasets(runs / "b" / name)
    assert a.keys() == b.keys() and a
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), f"{name}:{key} differs between two runs with the same seed"


@pytest.mark.parametrize("name, key", [("ct.h5", "sinogram"), ("mri.h5", "kspace"), ("blur.h5", "image"),
                                       ("diffpir.h5", "reconstruction"), ("dps.h5", "samples"),
                                       ("blur_pc.h5", "std")])
def test_another_seed_changes_the_result(runs, name, key):
    a, c = datasets(runs / "a" / name)[key], datasets(runs / "c" / name)[key]
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_result_does_not_depend_on_the_batch(runs, tmp_path):
    """Reconstructing a file alone or as one of several inputs gives the same bits."""
    prior = runs / "prior"
    batch = tmp_path / "in"
    batch.mkdir()
    for name in ("ct.h5", "blur.h5"):
        (batch / name).write_bytes((runs / "a" / name).read_bytes())
    common = ["--prior", prior, "--solver", "pc", "--steps", "3", "--samples", "2", "--seed", "3", "--device", "cpu", "-q"]
    with one_thread():  # as in the fresh processes, whose results this is compared with
        assert invdiff("reconstruct", batch, "--out-dir", tmp_path / "out", *common) == 0
        assert invdiff("reconstruct", batch / "blur.h5", "--out", tmp_path / "alone.h5", *common) == 0
    together = datasets(tmp_path / "out" / "blur.h5")
    alone = datasets(tmp_path / "alone.h5")
    assert together["reconstruction"].tobytes() == alone["reconstruction"].tobytes()
    assert together["reconstruction"].tobytes() == datasets(runs / "a" / "blur_pc.h5")["reconstruction"].tobytes()
