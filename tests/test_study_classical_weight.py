"""examples/study_classical_weight.py scores blends of the posterior mean and TV correctly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from study_classical_weight import blends, psnr  # noqa: E402


def test_psnr_of_a_known_error():
    truth = np.zeros((4, 4))
    assert np.isclose(psnr(truth, truth + 0.1), 20.0)


def test_blends_find_the_weight_the_truth_was_made_with():
    rng = np.random.default_rng(0)
    mean, tv = rng.random((2, 3, 16, 16))
    spread = 0.01 * rng.standard_normal((4, 3, 16, 16))
    samples = mean + spread - spread.mean(0)  # K = 4 samples whose mean is exactly `mean`
    truth = 0.7 * mean + 0.3 * tv + 1e-4 * rng.standard_normal(mean.shape)
    out = blends(truth, tv, samples)
    fixed = {k: v for k, v in out.items() if k.startswith("b=")}
    assert max(fixed, key=fixed.get) == "b=0.3"
    assert out["best b per slice"] >= max(fixed.values()) - 1e-9  # the oracle bounds every fixed weight
    assert out["best b per slice"] > 70  # b = 0.3 is on its grid: only the 1e-4 noise is left
    assert out["tv"] < out["b=0.3"] and out["b=0"] < out["b=0.3"]


def test_per_pixel_blend_follows_the_sample_variance():
    rng = np.random.default_rng(1)
    truth = rng.random((2, 16, 16))
    tv = truth + 0.05 * rng.standard_normal(truth.shape)
    mean = truth.copy()
    mean[:, :8] += 0.3  # the prior is wrong on the left half, and its samples disagree there
    noise = rng.standard_normal((4, 2, 16, 16))
    noise[:, :, 8:] *= 1e-3
    samples = mean + 0.5 * (noise - noise.mean(0))
    out = blends(truth, tv, samples)
    assert out["per pixel, tau=0.02"] > out["b=0.5"] > out["b=0"]  # it keeps the prior only where it agrees
