"""`invdiff train`: exit codes, --dry-run, a tiny end-to-end run and --resume through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from invdiff.cli import app
from invdiff.cli.common import run_app
from invdiff.prior.store import load_prior

TINY = ["--image-size", "16", "--channels-base", "8", "--channel-mults", "1,2", "--batch-size", "4",
        "--checkpoint-every", "2", "--log-every", "1", "--quiet"]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "slices.npy"
    np.save(path, np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    return path


def test_help_lists_examples(capsys):
    assert run_app(app, ["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "torchrun" in out


def test_dry_run_prints_resolved_settings(data, tmp_path, capsys):
    assert run_app(app, ["train", str(data), "--out", str(tmp_path / "p"), *TINY, "--dry-run", "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["settings"]["image_size"] == 16 and resolved["data"]["slices"] == 5
    assert resolved["validation_slices"] == 1 and not (tmp_path / "p").exists()


def test_train_then_resume_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "prior"
    assert run_app(app, ["train", str(data), "--out", str(out), *TINY, "--steps", "2", "--augment"]) == 0
    assert run_app(app, ["train", str(data), "--out", str(out), *TINY, "--steps", "2"]) == 2  # checkpoint there
    assert "--resume" in capsys.readouterr().err
    assert run_app(app, ["train", str(data), "--out", str(out), *TINY, "--steps", "4", "--augment", "--resume",
                         "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["resumed_from"] == 2 and result["steps"] == 4
    prior = load_prior(out)
    assert prior.config["training"]["steps_done"] == 4
    assert prior.config["augmentation"]["p_flip"] == 0.5 and "invdiff train" in prior.config["command"]
    assert (out / "training_log.csv").read_text().count("\n") == 5


def test_bf16_on_the_cpu_is_recorded_and_changes_the_arithmetic(data, tmp_path):
    """--bf16 turns bfloat16 autocast on for a CPU run (default there: off): the settings record
    it, the loss stays finite, and the weights differ from the float32 run's after 2 steps;
    --no-bf16 (and the CPU default) record it off."""
    weights = {}
    for flag in ("--bf16", "--no-bf16", None):
        out = tmp_path / str(flag)
        argv = ["train", str(data), "--out", str(out), *TINY, "--steps", "2", "--device", "cpu"]
        assert run_app(app, argv + ([flag] if flag else [])) == 0
        prior = load_prior(out)
        training = prior.config["training"]
        assert (training["amp"], training["amp_cpu"]) == {"--bf16": (True, True), "--no-bf16": (False, False),
                                                          None: (True, False)}[flag]
        weights[flag] = [p.detach().clone() for p in prior.parameters()]
    assert all(np.isfinite(p.numpy()).all() for p in weights["--bf16"])
    assert all(np.array_equal(a, b) for a, b in zip(weights["--no-bf16"], weights[None]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights["--bf16"], weights[None]))


@pytest.mark.parametrize("args, message", [
    (["--image-size", "0"], "--image-size"),
    (["--channels", "3"], "--channels"),
    (["--channel-mults", "1,x"], "--channel-mults"),
    (["--image-size", "17"], "divisible"),
    (["--sde", "ddpm"], "--sde"),
    (["--loss", "ism"], "--loss"),
    (["--attention", "5"], "--attention"),
    (["--axis", "0"], "NIfTI"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--fit", "exact"], "--fit exact"),
    (["--image-size", "32"], "smaller"),
    (["--normalise", "window"], "--window"),
    (["--window", "1,0", "--normalise", "window"], "--window"),
    (["--sigma-data", "big"], "--sigma-data"),
    (["--device", "tpu"], "--device"),
    (["--dropout", "1.5"], "--dropout"),
    (["--ema", "1"], "--ema"),
])
def test_bad_options_exit_2_with_one_sentence(data, tmp_path, capsys, args, message):
    argv = ["train", str(data), "--out", str(tmp_path / "p"), *TINY, "--steps", "1"]
    for i in range(0, len(args), 2):  # later options override the defaults above
        if args[i] in argv:
            argv[argv.index(args[i]) + 1] = args[i + 1]
        else:
            argv += args[i:i + 2]
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


def test_out_folder_with_foreign_files_is_refused(data, tmp_path, capsys):
    """A folder holding a config.json (or logs, weights) that are not an invdiff prior's is not
    written into; a prior's own folder (retraining into it) is."""
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "config.json").write_text('{"dataset": "mine"}')
    argv = ["train", str(data), "--out", str(out), *TINY, "--steps", "1"]
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "Traceback" not in err
    assert (out / "config.json").read_text() == '{"dataset": "mine"}' and sorted(p.name for p in out.iterdir()) == ["config.json"]
    prior = tmp_path / "prior"
    assert run_app(app, ["train", str(data), "--out", str(prior), *TINY, "--steps", "1", "-q"]) == 0
    for name in ("checkpoint.safetensors", "checkpoint.json"):  # a finished prior, as shipped
        (prior / name).unlink(missing_ok=True)
    assert run_app(app, ["train", str(data), "--out", str(prior), *TINY, "--steps", "1", "-q"]) == 0


def test_bad_inputs_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_app(app, ["train", str(empty), "--out", str(tmp_path / "p")]) == 2
    assert "empty" in capsys.readouterr().err
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not an array")
    assert run_app(app, ["train", str(junk), "--out", str(tmp_path / "p")]) == 2
    assert "junk.npy" in capsys.readouterr().err
    assert run_app(app, ["train", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "p")]) == 2
