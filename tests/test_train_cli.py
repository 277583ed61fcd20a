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
    (["--lr", "inf"], "--lr must be positive and finite, got inf"),
    (["--lr", "nan"], "--lr must be positive and finite, got nan"),
    (["--sigma-data", "inf"], "--sigma-data"),
    (["--window", "0,1"], "--window needs --normalise window"),
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


def _nan_loss_from(monkeypatch, step: int) -> None:
    """Make the training loss NaN from the ``step``-th training step on (validation untouched)."""
    import torch

    import invdiff.prior.train as train_module

    real = train_module.make_loss

    def make_loss(kind, noise):
        loss = real(kind, noise)
        compute, calls = loss.compute, [0]

        def nan_compute(*args, **kwargs):
            value = compute(*args, **kwargs)
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] >= step:
                    return value * float("nan")
            return value

        loss.compute = nan_compute
        return loss

    monkeypatch.setattr(train_module, "make_loss", make_loss)


def test_diverged_run_exits_2_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    """A NaN loss at step 4 (a checkpoint step): exit 2, one sentence, and the prior and checkpoint
    of step 2 stay as they were (finite, loadable); --resume continues from them."""
    out = tmp_path / "prior"
    argv = ["train", str(data), "--out", str(out), *TINY, "--steps", "4", "--device", "cpu"]
    with monkeypatch.context() as patch:
        _nan_loss_from(patch, 4)
        assert run_app(app, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "invdiff: error: training diverged at step 4 (loss is NaN); lower --lr or check the data."
    prior = load_prior(out)  # refuses NaN weights
    assert prior.config["training"]["steps_done"] == 2
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2
    assert [row["step"] for row in json.loads((out / "training_log.json").read_text())] == [1, 2]
    assert run_app(app, argv + ["--resume"]) == 0
    assert load_prior(out).config["training"]["steps_done"] == 4


def test_divergence_before_the_first_checkpoint_writes_no_prior(data, tmp_path, capsys):
    out = tmp_path / "prior"
    argv = ["train", str(data), "--out", str(out), *TINY, "--steps", "3", "--checkpoint-every", "3", "--lr", "1e30",
            "--lr-warmup", "1", "--device", "cpu"]
    assert run_app(app, argv) == 2
    err = capsys.readouterr().err
    assert "training diverged at step" in err and "lower --lr" in err and len(err.strip().splitlines()) == 1
    assert not (out / "config.json").exists() and not (out / "checkpoint.safetensors").exists()


def test_nan_weights_are_not_written(tmp_path):
    """The loss of the last step is finite but its update made the weights infinite: nothing is written."""
    import math

    from invdiff.errors import InputError
    from invdiff.prior.data import Normalisation, SliceStack, build_sets
    from invdiff.prior.train import TrainSettings, train
    from invdiff.prior.unet import UNetConfig

    norm = Normalisation()
    images = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32)
    train_set, _ = build_sets([SliceStack(images, "a.npy")], 16, 1, "crop", norm, 0.0)
    s = TrainSettings(image_size=16, unet=UNetConfig(base_channels=8, channel_mults=(1, 2)), batch_size=2, steps=1,
                      lr=math.inf, lr_warmup=1, checkpoint_every=1, log_every=1)
    with pytest.raises(InputError, match=r"^training diverged at step 1 \(the weights hold NaN or Inf values\)"):
        train(s, train_set, tmp_path / "p", norm=norm, data_summary={})
    assert not (tmp_path / "p" / "config.json").exists()


def test_complex_data_with_one_channel_warns_it_trains_on_the_magnitude(tmp_path, capsys):
    path = tmp_path / "complex.npy"
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((6, 20, 20)) * np.exp(1j * rng.random((6, 20, 20)))).astype(np.complex64))
    argv = ["train", str(path), "--out", str(tmp_path / "p"), *[a for a in TINY if a != "--quiet"], "--dry-run"]
    assert run_app(app, argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("invdiff: warning")]
    assert len(warnings) == 1 and "complex.npy" in warnings[0] and "magnitude" in warnings[0]
    assert "--channels 2" in warnings[0]
    assert run_app(app, argv + ["--channels", "2"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert run_app(app, argv + ["--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
