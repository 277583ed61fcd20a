"""The priors shipped in data/priors/: complete directories (weights with verified checksums,
training command, loss curve, sample grid, licence), under 40 MB, working denoisers, and the
one `invdiff reconstruct` picks for each operator without --prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from invdiff.pipeline.defaults import DEFAULT_PRIOR, PRIOR_FOR_OPERATOR, PRIORS_DIR, default_prior_for
from invdiff.prior.store import load_prior

SHIPPED = sorted(p.name for p in PRIORS_DIR.iterdir() if (p / "config.json").exists())
SAMPLE = Path(__file__).resolve().parent.parent / "data" / "samples" / "brain_heldout_128.npy"


def test_every_prior_named_for_an_operator_is_shipped():
    assert DEFAULT_PRIOR in SHIPPED
    assert set(PRIOR_FOR_OPERATOR.values()) <= set(SHIPPED)
    for operator, name in PRIOR_FOR_OPERATOR.items():
        assert default_prior_for(operator) == PRIORS_DIR / name
    assert default_prior_for("mri") == PRIORS_DIR / DEFAULT_PRIOR
    assert default_prior_for("a-plug-in-operator") == PRIORS_DIR / DEFAULT_PRIOR


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prior_directory_is_complete(name):
    folder = PRIORS_DIR / name
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "weights.safetensors", "weights_ema.safetensors", "TRAINING.md", "samples.png",
            "training_log.csv"} <= files
    assert sum(p.stat().st_size for p in folder.iterdir()) < 40e6
    training = (folder / "TRAINING.md").read_text()
    assert "invdiff train" in training and "val" in training.lower()
    prior = load_prior(folder)  # verifies the weights' sha256 against config.json
    assert prior.channels == 1 and prior.image_shape[1] is None  # fully convolutional
    if name == "ct128":  # trained on GPL-2 data: the weights carry that licence
        assert "GNU GENERAL PUBLIC LICENSE" in (folder / "LICENSE").read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prior_denoises(name):
    """D(x + sigma n, sigma) is closer to x than x + sigma n is, at sigma 0.1 and 0.3 (in the
    prior's units: slices scaled to their 99.5th percentile), on committed brain slices: a
    check that the weights are a working denoiser, whatever images they were trained on."""
    prior = load_prior(PRIORS_DIR / name)
    x, _ = prior.normalise(np.load(SAMPLE)[:2])
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.1, 0.3):
        noisy = x + sigma * torch.randn(x.shape, generator=gen)
        with torch.no_grad():
            denoised = prior(noisy, sigma)
        assert float((denoised - x).square().mean()) < 0.5 * float((noisy - x).square().mean())
