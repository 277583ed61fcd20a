"""--std-window: the posterior variance pooled over a neighbourhood (invdiff/pipeline/pooling.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from invdiff import metrics
from invdiff.errors import InputError
from invdiff.pipeline.pooling import check_window, pooled_std
from test_cli_reconstruct_prior import invdiff, setup  # noqa: F401  (module fixture)


def test_window_one_is_the_sample_std_and_three_is_the_mean_variance():
    std = np.random.default_rng(0).random((9, 11)).astype(np.float32)
    assert pooled_std(std, 1) is std
    pooled = pooled_std(std, 3)
    assert pooled.shape == std.shape and pooled.dtype == std.dtype
    assert pooled[4, 5] == pytest.approx(np.sqrt((std[3:6, 4:7] ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize("bad", [0, 2, -3, 4.5])
def test_window_must_be_odd_and_positive(bad):
    with pytest.raises(InputError, match="odd"):
        check_window(bad)


def test_pooling_brings_an_exact_k4_posterior_towards_its_coverage():
    """Truth and K = 4 samples drawn from the same Gaussian, with a std that varies slowly over
    the image: the 2-std interval of the per-pixel sample std covers about 83 % (Student-t,
    3 dof, scaled by sqrt(1 + 1/4)); pooled over 7x7 it approaches the 92.6 % of a known std."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96] / 96.0
    sigma = 0.05 + 0.1 * yy + 0.05 * np.sin(3 * xx)
    truth = sigma * rng.standard_normal((4, 96, 96))
    samples = sigma * rng.standard_normal((4, 4, 96, 96))
    mean, std = samples.mean(1), samples.std(1, ddof=1)
    plain = metrics.coverage(truth, mean, std)
    pooled = metrics.coverage(truth, mean, np.stack([pooled_std(s, 7) for s in std]))
    assert abs(plain - 0.83) < 0.015
    assert 0.90 < pooled < 0.935


def test_cli_std_window(setup, tmp_path):  # noqa: F811
    root, prior, meas = setup
    out = tmp_path / "r.h5"
    assert invdiff("reconstruct", meas, "--prior", prior, "--solver", "dds", "--steps", "3", "--samples", "3",
                   "--keep-samples", "--std-window", "3", "--device", "cpu", "--out", out, "-q") == 0
    with h5py.File(out) as f:
        std, samples = f["std"][()], f["samples"][()]
        assert '"std_window": 3' in f.attrs["invdiff_provenance"]
    expected = np.stack([pooled_std(s.astype(np.float32), 3) for s in samples.std(0, ddof=1)])
    assert np.allclose(std, expected, rtol=1e-4, atol=1e-7)
    assert invdiff("reconstruct", meas, "--prior", prior, "--std-window", "4", "--out", tmp_path / "x.h5", "-q") == 2
    assert invdiff("reconstruct", meas, "--method", "tv", "--std-window", "3", "--out", tmp_path / "y.h5", "-q") == 2
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
