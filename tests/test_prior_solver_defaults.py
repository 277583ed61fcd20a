"""Solver settings a prior ships (config.json ``solver_defaults``, invdiff/pipeline/reconstruct.py
``with_prior_defaults``): they replace the solver's own defaults for that prior and operator,
the command line wins over them, the provenance says which were taken, and a malformed entry
is one clear sentence with exit code 2 and no output file."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from helpers_cli import brain32, expect_bad, invdiff, tiny_prior


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior_defaults")
    prior = tiny_prior(root / "prior")
    np.save(root / "refs.npy", brain32(1)[:, ::2, ::2])  # one 16x16 slice
    meas = root / "ct.h5"
    assert invdiff("simulate", root / "refs.npy", "--operator", "radon", "--views", "12", "--noise-rel", "0.02",
                   "--out", meas, "-q") == 0
    tuned = root / "tuned"
    shutil.copytree(prior, tuned)
    config = json.loads((tuned / "config.json").read_text())
    config["solver_defaults"] = {"dds": {"radon": {"steps": 3, "guidance": 0.7, "options": {"eta": 0.5}}}}
    (tuned / "config.json").write_text(json.dumps(config))
    return root, prior, tuned, meas


def provenance(root, meas, prior, *extra):
    out = root / f"r{len(list(root.glob('r*.h5')))}.h5"
    assert invdiff("reconstruct", meas, "--prior", prior, "--samples", "2", "--device", "cpu", "-q", *extra,
                   "--out", out) == 0
    with h5py.File(out) as f:
        return json.loads(f.attrs["invdiff_provenance"])


def test_a_priors_solver_defaults_replace_the_solvers(setup):
    root, plain, tuned, meas = setup
    base = provenance(root, meas, plain, "--solver", "dds")
    assert "prior_solver_defaults" not in base and base["steps"] != 3
    prov = provenance(root, meas, tuned, "--solver", "dds")
    assert prov["steps"] == 3 and prov["guidance"] == pytest.approx(0.7)
    assert float(prov["options"]["eta"]) == pytest.approx(0.5)
    assert prov["prior_solver_defaults"] == {"steps": 3, "guidance": 0.7, "options": {"eta": "0.5"}}
    assert prov["nfe_per_sample"] == base["nfe_per_sample"] * 3 / base["steps"]


def test_the_command_line_wins_over_the_priors_defaults(setup):
    root, _, tuned, meas = setup
    prov = provenance(root, meas, tuned, "--solver", "dds", "--steps", "2", "--option", "eta=0.85")
    assert prov["steps"] == 2 and float(prov["options"]["eta"]) == pytest.approx(0.85)
    assert prov["guidance"] == pytest.approx(0.7) and prov["prior_solver_defaults"] == {"guidance": 0.7}
    other = provenance(root, meas, tuned, "--solver", "diffpir", "--steps", "2")  # none shipped for diffpir
    assert "prior_solver_defaults" not in other


def test_a_malformed_entry_is_refused(setup, tmp_path, capsys):
    _, _, tuned, meas = setup
    broken = tmp_path / "broken"
    shutil.copytree(tuned, broken)
    config = json.loads((broken / "config.json").read_text())
    for bad in ({"radon": {"stepz": 3}}, {"radon": {"options": [1]}}, ["radon"]):
        config["solver_defaults"]["dds"] = bad
        (broken / "config.json").write_text(json.dumps(config))
        expect_bad(tmp_path, capsys, ["reconstruct", meas, "--prior", broken, "--solver", "dds", "--samples", "2",
                                      "--out", tmp_path / "r.h5"], "solver_defaults", "steps, guidance and options")
