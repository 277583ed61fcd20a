"""examples/study_samples.py scores K-sample posteriors as the closed form of an exact sampler says."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from study_samples import scores  # noqa: E402


def exact_posterior(total: int, n: int = 4, size: int = 64, sigma: float = 0.05):
    """Truth and `total` samples drawn independently from one Gaussian posterior N(mu, sigma^2)."""
    rng = np.random.default_rng(0)
    mu = 0.5 + 0.1 * rng.random((n, size, size))
    truth = mu + sigma * rng.standard_normal(mu.shape)
    samples = mu + sigma * rng.standard_normal((total, *mu.shape))
    return truth, torch.from_numpy(samples), sigma


def test_psnr_of_k_sample_means_follows_mmse_times_one_plus_one_over_k():
    truth, samples, sigma = exact_posterior(16)
    out = scores(truth, torch.zeros(truth.shape, dtype=torch.float64), samples, beta=0.0)
    for k in (1, 2, 4, 8, 16):
        expected = -10 * np.log10(sigma**2 * (1 + 1 / k))
        assert out[f"K={k}"] == pytest.approx(expected, abs=0.05)
    assert out["K=16"] - out["K=4"] == pytest.approx(10 * np.log10(1.25 / (1 + 1 / 16)), abs=0.05)  # 0.71 dB


def test_coverage_at_k4_is_the_t_distributions():
    truth, samples, _ = exact_posterior(4)
    out = scores(truth, torch.zeros(truth.shape, dtype=torch.float64), samples, beta=0.0)
    # (truth - mean) / (s sqrt(1 + 1/4)) follows Student's t with 3 degrees of freedom
    expected = 100 * (2 * stats.t(3).cdf(2 / np.sqrt(1.25)) - 1)  # 83 %
    assert out["coverage 2 std, K=4 (%)"] == pytest.approx(expected, abs=1.0)
    assert list(out)[-1] == "coverage 2 std, K=4 (%)"  # after the PSNR columns


def test_the_classical_blend_is_applied():
    truth, samples, _ = exact_posterior(4)
    tv = torch.from_numpy(truth)  # a classical estimate that is exactly right
    plain = scores(truth, tv, samples, beta=0.0)
    blended = scores(truth, tv, samples, beta=0.5)
    assert blended["K=1"] == pytest.approx(plain["K=1"] + 10 * np.log10(4), abs=1e-6)  # error halved
