"""`torchrun -m invdiff reconstruct FILES... --out-dir` shares the files out across processes:
each file once, by one rank, with the result a single process would write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from invdiff.cli import app
from invdiff.cli.common import run_app
from invdiff.errors import InputError
from invdiff.prior.distributed import DistInfo

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_ranks_deal_every_file_exactly_once(world):
    files = [f"f{i}" for i in range(7)]
    shares = [DistInfo(r, world, r).deal(files) for r in range(world)]
    assert sorted(sum(shares, [])) == sorted(files)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "x"}, {"WORLD_SIZE": "0"}])
def test_bad_torchrun_environment_is_one_sentence(env, monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(InputError):
        DistInfo.from_env()


def test_torchrun_shares_files_and_matches_one_process(tmp_path):
    image = np.load(REPO / "data" / "samples" / "brain_heldout_128.npy")[:3, ::4, ::4]  # 3 x 32 x 32
    files = []
    for i in range(3):
        np.save(tmp_path / f"img{i}.npy", image[i])
        files.append(tmp_path / f"m{i}.h5")
        assert run_app(app, ["simulate", str(tmp_path / f"img{i}.npy"), "--operator", "radon", "--views", "20",
                             "--noise-rel", "0.01", "--seed", str(i), "--out", str(files[-1]), "-q"]) == 0
    single = tmp_path / "single"
    assert run_app(app, ["reconstruct", *map(str, files), "--method", "tv", "--out-dir", str(single), "-q"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    shared = tmp_path / "shared"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "invdiff", "reconstruct", *map(str, files), "--method", "tv", "--out-dir", str(shared),
                          "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    wrote = [line for line in run.stdout.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == 3, run.stdout  # each file once (all files on both ranks would write 6)
    for f in files:
        with h5py.File(single / f"{f.stem}.h5") as a, h5py.File(shared / f"{f.stem}.h5") as b:
            assert np.array_equal(a["reconstruction"][()], b["reconstruction"][()])
