"""Coverage metrics against the closed form: an exact Gaussian "posterior sampler"."""

import numpy as np
import pytest
from scipy.stats import t as student_t

from invdiff import metrics
from invdiff.errors import InputError


def draws(samples: int, pixels: int = 200_000, seed: int = 0):
    """Truth and K samples, all independent draws of the same per-pixel Gaussian posterior."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0, 1, pixels)
    sd = rng.uniform(0.01, 0.1, pixels)
    truth = mu + sd * rng.standard_normal(pixels)
    x = mu + sd * rng.standard_normal((samples, pixels))
    return truth.reshape(1, 400, -1), x.mean(0).reshape(1, 400, -1), x.std(0, ddof=1).reshape(1, 400, -1)


@pytest.mark.parametrize("samples", [2, 4, 8])
def test_predictive_coverage_of_an_exact_sampler_is_the_nominal_level(samples):
    truth, mean, std = draws(samples)
    # binomial standard error at 2e5 pixels is 0.05 %; 0.5 % leaves room for nothing but a bug
    assert metrics.predictive_coverage(truth, mean, std, samples) == pytest.approx(0.95, abs=0.005)


@pytest.mark.parametrize("samples", [2, 4, 8])
def test_two_std_coverage_of_an_exact_sampler_follows_student_t(samples):
    truth, mean, std = draws(samples)
    expected = 2 * student_t.cdf(2 / np.sqrt(1 + 1 / samples), samples - 1) - 1  # 0.83 at K = 4
    assert metrics.coverage(truth, mean, std, 2.0) == pytest.approx(expected, abs=0.005)
    assert expected < 0.9


def test_overconfident_std_scores_below_the_level():
    truth, mean, std = draws(4)
    assert metrics.predictive_coverage(truth, mean, std / 5, 4) < 0.5


def test_predictive_coverage_needs_two_samples():
    truth, mean, std = draws(2, pixels=4000)
    with pytest.raises(InputError):
        metrics.predictive_coverage(truth, mean, std, 1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0])
def test_a_given_data_range_must_be_positive_and_finite(bad):
    ref = np.ones((1, 8, 8))
    with pytest.raises(InputError, match="--data-range must be a positive finite number"):
        metrics.psnr(ref, ref * 0.9, data_range=bad)


def test_an_all_zero_reference_needs_a_data_range():
    ref = np.zeros((1, 8, 8))
    with pytest.raises(InputError, match="all zero"):
        metrics.psnr(ref, ref + 0.1)
    assert metrics.psnr(ref, ref + 0.1, data_range=1.0) == pytest.approx(20.0)
