"""Augmentation settings from the command line and the T2/PD-like contrast inversion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from invdiff.cli import app
from invdiff.cli.common import run_app
from invdiff.errors import InputError
from invdiff.prior.augment import AugmentConfig, Augmenter, invert


def t1_phantom() -> torch.Tensor:
    """A T1-like head (1, 1, 40, 40): white matter 1.0 in a disc of radius 15, a dark ventricle
    (0.05, radius 4) at its centre and grey matter 0.6 in a ring, on a zero background."""
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    r = ((yy - 20) ** 2 + (xx - 20) ** 2).sqrt()
    x = torch.zeros(40, 40)
    x[r < 15] = 0.6
    x[r < 12] = 1.0
    x[r < 4] = 0.05
    return x.view(1, 1, 40, 40)


def test_object_inversion_keeps_background_dark_and_makes_csf_brightest():
    x = t1_phantom()
    for offset in (0.0, 0.4):
        y = invert(x, 0.15, torch.tensor([offset]), 8)[0, 0]
        assert y[0, 0] == 0 and y[20, 2] == 0  # background stays black
        ventricle, white, grey = y[20, 20], y[20, 28], y[20, 6]
        assert ventricle > grey > white  # T1 order reversed inside the head
        torch.testing.assert_close(ventricle, torch.tensor((1.4 - 0.05) / 1.4 if offset else 0.95))
        torch.testing.assert_close(white, torch.tensor(offset / (1 + offset)))
    full = Augmenter(AugmentConfig(**{**{k: 0.0 for k in AugmentConfig().to_dict() if k.startswith("p_")},
                                     "p_invert": 1.0, "invert_mode": "full"}))
    y = full.apply(x, full.draw(x.shape, torch.Generator().manual_seed(0), x.device))
    assert y[0, 0, 0, 0] == 1.0  # the photographic negative turns the background white


def test_overrides_parse_validate_and_old_configs_keep_full_inversion():
    c = AugmentConfig.from_overrides(["p_invert=0.3", "invert-close=4", "invert_mode=full"])
    assert c.p_invert == 0.3 and c.invert_close == 4 and c.invert_mode == "full" and c.p_flip == 0.5
    for bad, message in [("p_spin=1", "KEY one of"), ("p_invert", "KEY=VALUE"), ("p_invert=lots", "not a number"),
                         ("p_invert=2", "p_invert"), ("max_blur_sigma=-1", "negative"), ("invert_mode=half", "invert_mode"),
                         ("invert_floor=0", "invert_floor"), ("max_noise_std=nan", "finite")]:
        with pytest.raises(InputError, match=message):
            AugmentConfig.from_overrides([bad])
    old = AugmentConfig().to_dict()
    for key in ("invert_mode", "invert_floor", "max_invert_offset", "invert_close"):
        del old[key]
    assert AugmentConfig.from_dict(old).invert_mode == "full"  # what priors trained before 'object' existed did
    assert AugmentConfig.from_dict(AugmentConfig().to_dict()) == AugmentConfig()


def test_train_cli_records_augment_options(tmp_path, capsys):
    data = tmp_path / "slices.npy"
    np.save(data, np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
    argv = ["train", str(data), "--out", str(tmp_path / "p"), "--image-size", "16", "--channel-mults", "1,2",
            "--dry-run", "--json"]
    assert run_app(app, [*argv, "--augment-option", "p_invert=0.4", "--augment-option", "p_elastic=0"]) == 0
    augment = json.loads(capsys.readouterr().out)["settings"]["augment"]
    assert augment["p_invert"] == 0.4 and augment["p_elastic"] == 0.0 and augment["p_flip"] == 0.5
    assert run_app(app, argv) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["augment"] is None
    assert run_app(app, [*argv, "--augment-option", "p_spin=1"]) == 2
    err = capsys.readouterr().err
    assert "--augment-option 'p_spin=1'" in err and "Traceback" not in err
