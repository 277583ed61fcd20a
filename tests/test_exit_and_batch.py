"""Exit codes and batch behaviour a pipeline relies on: Ctrl-C is not a success, a re-run skips
only finished results, a dry run prints one JSON object, clashing input names are named,
every command takes --device and --seed, and evaluate refuses another operator's data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer

from helpers_cli import brain32, expect_bad, invdiff
from invdiff.cli import app
from invdiff.cli.common import run_app

TINY = ["--image-size", "16", "--channels-base", "8", "--channel-mults", "1,2", "--batch-size", "4",
        "--checkpoint-every", "2", "--log-every", "1", "--quiet"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Two CT measurements (a.h5, b.h5) of 32x32 slices and an MRI one of the same slices."""
    root = tmp_path_factory.mktemp("batch")
    np.save(root / "img.npy", brain32(1))
    (root / "in").mkdir()
    for name, views in (("a", 20), ("b", 24)):
        assert invdiff("simulate", root / "img.npy", "--views", str(views), "--noise-rel", "0.01",
                       "--out", root / "in" / f"{name}.h5", "-q") == 0
    assert invdiff("simulate", root / "img.npy", "--operator", "mri", "--acceleration", "4", "--noise-std", "0.01",
                   "--out", root / "mri.h5", "-q") == 0
    return root


def test_interrupt_is_not_a_success(batch, tmp_path, monkeypatch, capsys):
    """typer turns Ctrl-C into Exit(130), which click returns (not raises) outside standalone
    mode: run_app must pass it on and say so, or `invdiff train ... && invdiff reconstruct`
    goes on with a half-trained prior."""
    import invdiff.cli.simulate as simulate_cli

    def interrupted(device):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate_cli, "resolve_device", interrupted)
    code = run_app(app, ["simulate", str(batch / "img.npy"), "--views", "10", "--out", str(tmp_path / "m.h5")])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "m.h5").exists()


def test_exit_code_of_a_command_is_passed_on(monkeypatch):
    """A command that ends with typer.Exit(code) exits with that code."""
    probe = typer.Typer()

    @probe.command()
    def fail() -> None:
        raise typer.Exit(3)

    assert run_app(probe, []) == 3


def _run_batch(batch: Path, out_dir: Path, *extra) -> None:
    assert invdiff("reconstruct", batch / "in", "--method", "fbp", "--out-dir", out_dir, "--json", *extra) == 0


def test_skip_existing_skips_only_finished_results(batch, tmp_path, capsys):
    out_dir = tmp_path / "out"
    _run_batch(batch, out_dir)
    capsys.readouterr()
    finished = (out_dir / "a.h5").read_bytes()
    (out_dir / "b.h5").write_bytes((out_dir / "b.h5").read_bytes()[:3000])  # truncated, not written by invdiff
    _run_batch(batch, out_dir, "--skip-existing")
    captured = capsys.readouterr()
    results = {Path(r["input"]).name: r for r in json.loads(captured.out)["results"]}
    assert results["a.h5"].get("skipped") is True and (out_dir / "a.h5").read_bytes() == finished
    assert not results["b.h5"].get("skipped") and "not a readable invdiff result" in captured.err
    with h5py.File(out_dir / "b.h5", "r") as f:  # done again, whole
        assert f["reconstruction"].shape == (1, 32, 32)
    (out_dir / "a.h5").write_bytes(b"")  # empty
    _run_batch(batch, out_dir, "--skip-existing")
    results = {Path(r["input"]).name: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert not results["a.h5"].get("skipped") and results["b.h5"].get("skipped") is True


def test_dry_run_prints_one_json_object(batch, tmp_path, capsys):
    assert invdiff("reconstruct", batch / "in", "--method", "fbp", "--out-dir", tmp_path / "out", "--dry-run") == 0
    plan = json.loads(capsys.readouterr().out)
    assert [Path(r["input"]).name for r in plan["results"]] == ["a.h5", "b.h5"] and plan["failed"] == []
    assert not (tmp_path / "out").exists()


def test_dry_run_reports_a_bad_input(batch, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "a.h5").write_bytes((batch / "in" / "a.h5").read_bytes())
    (bad / "c.h5").write_bytes(b"not hdf5")
    assert invdiff("reconstruct", bad, "--method", "fbp", "--out-dir", tmp_path / "out", "--dry-run") == 2
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert [Path(r["input"]).name for r in plan["results"]] == ["a.h5"]
    assert [Path(r["input"]).name for r in plan["failed"]] == ["c.h5"] and "1 of 2 input(s) failed" in captured.err


def test_inputs_sharing_a_name_are_named(batch, tmp_path, capsys):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "a.h5").write_bytes((batch / "in" / "a.h5").read_bytes())
    message = expect_bad(tmp_path, capsys, ["reconstruct", batch / "in" / "a.h5", tmp_path / "A" / "a.h5", "--method", "fbp",
                                            "--out-dir", tmp_path / "out"], tmp_path / "A" / "a.h5", "share the name 'a'")
    assert str(batch / "in" / "a.h5") in message and str(tmp_path / "out" / "a.h5") in message


def test_every_command_takes_device_and_seed():
    """DESIGN.md section 1: every command takes --device and --seed (a pipeline passes the same
    options to each)."""
    commands = typer.main.get_command(app).commands
    assert len(commands) >= 8
    for name, command in commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--device", "--seed", "--json", "--quiet"} <= options, (name, sorted(options))


@pytest.mark.parametrize("seed", ["-1", str(2**63 - 1), str(2**64), "99999999999999999999999"])
def test_a_seed_out_of_range_is_one_sentence_on_every_command(batch, tmp_path, capsys, seed):
    """--seed is checked once, where the option is declared (invdiff.cli.common.check_seed): the
    range every consumer takes, 0 to 2**63 - 2 (train also seeds a generator with seed + 1)."""
    img, meas = batch / "img.npy", batch / "in" / "a.h5"
    commands = {
        "simulate": ["simulate", img, "--out", tmp_path / "m.h5"],
        "reconstruct": ["reconstruct", meas, "--method", "fbp", "--out", tmp_path / "r.h5"],
        "sample": ["sample", "--out", tmp_path / "s.h5"],
        "train": ["train", img, "--out", tmp_path / "prior"],
        "likelihood": ["likelihood", img],
        "evaluate": ["evaluate", tmp_path / "r.h5"],
        "calibrate": ["calibrate", tmp_path / "r.h5", "--out", tmp_path / "c.json"],
        "info": ["info", meas],
    }
    assert set(commands) == set(typer.main.get_command(app).commands)
    for args in commands.values():
        message = expect_bad(tmp_path, capsys, [*args, "--seed", seed, "--device", "cpu", "-q"], "--seed")
        assert message == f"--seed must be a whole number from 0 to {2**63 - 2}, got {seed}."


def test_the_largest_seed_works_where_seeds_are_used(batch, tmp_path):
    """2**63 - 2 seeds every generator: an MRI mask (numpy's RandomState takes 32-bit seeds; the
    seed is folded into them) and training (whose noise generator takes seed + 1)."""
    top = str(2**63 - 2)
    for mask in ("random", "equispaced", "poisson"):
        assert invdiff("simulate", batch / "img.npy", "--operator", "mri", "--mask", mask, "--noise-std", "0.01",
                       "--seed", top, "--out", tmp_path / f"{mask}.h5", "-q") == 0
    np.save(tmp_path / "train.npy", np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    assert invdiff("train", tmp_path / "train.npy", "--out", tmp_path / "prior", *TINY, "--steps", "1",
                   "--seed", top, "--device", "cpu") == 0


def test_device_is_checked_on_commands_that_compute_on_the_cpu(batch, tmp_path, capsys):
    expect_bad(tmp_path, capsys, ["info", batch / "mri.h5", "--device", "tpu"], "tpu")


def test_info_quiet_prints_nothing_but_the_exit_code_says(batch, tmp_path, capsys):
    assert invdiff("info", batch / "mri.h5", "-q") == 0
    assert capsys.readouterr().out == ""
    (tmp_path / "x.h5").write_bytes(b"junk")
    expect_bad(tmp_path, capsys, ["info", tmp_path / "x.h5", "-q"], tmp_path / "x.h5")


def test_evaluate_refuses_another_operators_measurement(batch, tmp_path, capsys):
    result = tmp_path / "r.h5"
    assert invdiff("reconstruct", batch / "in" / "a.h5", "--method", "fbp", "--out", result, "-q") == 0
    message = expect_bad(tmp_path, capsys, ["evaluate", result, "--reference", batch / "mri.h5"], batch / "mri.h5",
                         "holds a mri measurement")
    assert "reconstructed from a radon one" in message


def test_resume_on_other_images_says_the_data_differ(tmp_path, capsys):
    rng = np.random.default_rng(0)
    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    np.save(first, rng.random((6, 20, 20)).astype(np.float32))
    np.save(second, (rng.random((6, 20, 20)) ** 4).astype(np.float32))  # another spread after normalisation
    out = tmp_path / "prior"
    assert invdiff("train", first, "--out", out, *TINY, "--steps", "2") == 0
    message = expect_bad(tmp_path, capsys, ["train", second, "--out", out, *TINY, "--steps", "4", "--resume"],
                         out, "resume on the images the checkpoint was trained on")
    assert "sigma_data" in message
