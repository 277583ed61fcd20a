"""(b) Resume: N steps straight == N/2 steps, checkpoint, fresh RNG state, --resume, N/2 steps (bitwise, CPU)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from invdiff.errors import InputError
from invdiff.prior.augment import AugmentConfig
from invdiff.prior.data import Normalisation, build_sets, SliceStack
from invdiff.prior.store import EMA_NAME, RAW_NAME, load_weights
from invdiff.prior.train import TrainSettings, train
from invdiff.prior.unet import UNetConfig


def tiny_settings(steps: int, **overrides) -> TrainSettings:
    base = dict(image_size=16, unet=UNetConfig(base_channels=8, channel_mults=(1, 2), dropout=0.1),
                batch_size=4, steps=steps, checkpoint_every=3, log_every=1, lr_warmup=2, augment=AugmentConfig(p_noise=0.5))
    base.update(overrides)
    return TrainSettings(**base)


def tiny_data():
    rng = np.random.default_rng(0)
    stacks = [SliceStack(rng.random((6, 24, 20)).astype(np.float32), "a.npy"),
              SliceStack(rng.random((5, 16, 16)).astype(np.float32), "b.npy")]
    norm = Normalisation()
    train_set, val_set = build_sets(stacks, 16, 1, "crop", norm, 0.2)
    return train_set, val_set, norm


def run(out, steps, resume=False, **overrides):
    train_set, val_set, norm = tiny_data()
    return train(tiny_settings(steps, **overrides), train_set, out, norm=norm, data_summary=train_set.summary(),
                 val_set=val_set, resume=resume)


def test_resume_continues_exactly(tmp_path):
    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "split", 3)
    half = load_weights(tmp_path / "split" / RAW_NAME)
    torch.manual_seed(1234)  # a "fresh process": every global RNG elsewhere
    np.random.seed(4321)
    random.seed(99)
    resumed = run(tmp_path / "split", 6, resume=True)
    assert resumed["resumed_from"] == 3
    for name in (RAW_NAME, EMA_NAME):
        a = load_weights(tmp_path / "straight" / name)
        b = load_weights(tmp_path / "split" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert straight["weights_digest"] == resumed["weights_digest"]
    moved = any(not torch.equal(half[k], a[k]) for k in half)  # the second half did change the weights
    assert moved
    import json
    log = json.loads((tmp_path / "split" / "training_log.json").read_text())
    assert [row["step"] for row in log] == list(range(1, 7))
    assert "val_loss" in log[-1]


def test_resume_refuses_changed_settings(tmp_path):
    run(tmp_path / "p", 3)
    with pytest.raises(InputError, match="lr"):
        run(tmp_path / "p", 6, resume=True, lr=1e-3)


def test_resume_without_checkpoint_is_input_error(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        run(tmp_path / "none", 3, resume=True)
