"""Model averaging of the diffusion posterior with a classical estimate (classical_weight)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from invdiff.errors import InputError
from invdiff.solvers.averaging import check_weight, posterior_moments
from test_cli_reconstruct_prior import invdiff, setup  # noqa: F401  (module fixture)


def _mixture_moments(samples: np.ndarray, classical: np.ndarray, beta: float):
    """Mean and variance of the discrete mixture: the K samples with weight (1 - beta) / K
    each, the classical image with weight beta (population moments, by definition)."""
    k = samples.shape[0]
    atoms = np.concatenate([samples, classical[None]])
    w = np.array([(1 - beta) / k] * k + [beta])[:, None, None]
    mean = (w * atoms).sum(0)
    return mean, (w * np.abs(atoms - mean) ** 2).sum(0)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("complex_valued", [False, True])
def test_moments_are_those_of_the_mixture(beta, complex_valued):
    rng = np.random.default_rng(3)
    k = 6
    samples = rng.standard_normal((k, 5, 7))
    classical = rng.standard_normal((5, 7)) + 2
    if complex_valued:
        samples = samples + 1j * rng.standard_normal((k, 5, 7))
        classical = classical - 0.5j
    mean, std = posterior_moments(torch.from_numpy(samples), torch.from_numpy(classical), beta)
    ref_mean, _ = _mixture_moments(samples, classical, beta)
    # the diffusion part uses the unbiased sample variance: the mixture's with K/(K-1) on it
    m = samples.mean(0)
    var_d = (np.abs(samples - m) ** 2).sum(0) / (k - 1)
    ref_var = (1 - beta) * var_d + beta * (1 - beta) * np.abs(m - classical) ** 2
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std.numpy() ** 2, ref_var, rtol=1e-12, atol=1e-12)
    if beta == 0:
        np.testing.assert_allclose(std.numpy(), np.sqrt(var_d), rtol=1e-12)


def test_population_mixture_variance_matches_for_large_k():
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((4000, 2, 3))
    classical = np.full((2, 3), 3.0)
    _, std = posterior_moments(torch.from_numpy(samples), torch.from_numpy(classical), 0.25)
    _, var = _mixture_moments(samples, classical, 0.25)
    np.testing.assert_allclose(std.numpy() ** 2, var, rtol=1e-3)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_weight_outside_unit_interval_is_refused(bad):
    with pytest.raises(InputError, match="classical_weight"):
        check_weight(bad)


def test_reconstruct_averages_with_the_classical_estimate(setup, tmp_path):  # noqa: F811
    root, prior, meas = setup
    fbp, out = tmp_path / "fbp.h5", tmp_path / "avg.h5"
    assert invdiff("reconstruct", meas, "--method", "fbp", "--out", fbp, "--quiet") == 0
    assert invdiff("reconstruct", meas, "--prior", prior, "--solver", "diffpir", "--steps", "3", "--samples", "3",
                   "--keep-samples", "--option", "classical_weight=0.4", "--option", "classical_method=direct",
                   "--seed", "1", "--out", out, "--quiet") == 0
    with h5py.File(fbp) as f:
        x_c = f["reconstruction"][()]
    with h5py.File(out) as f:
        rec, std, samples = f["reconstruction"][()], f["std"][()], f["samples"][()]
    m = samples.astype(np.float64).mean(0)
    var_d = samples.astype(np.float64).var(0, ddof=1)
    scale = np.abs(x_c).max()
    np.testing.assert_allclose(rec, 0.6 * m + 0.4 * x_c, atol=1e-4 * scale)
    np.testing.assert_allclose(std**2, 0.6 * var_d + 0.24 * (m - x_c) ** 2, atol=1e-4 * scale**2)


def test_bad_classical_weight_exits_2_without_output(setup, tmp_path, capsys):  # noqa: F811
    root, prior, meas = setup
    out = tmp_path / "bad.h5"
    code = invdiff("reconstruct", meas, "--prior", prior, "--solver", "diffpir", "--steps", "2",
                   "--option", "classical_weight=2", "--out", out, "--quiet")
    assert code == 2 and not out.exists()
    assert "classical_weight" in capsys.readouterr().err


def test_evaluate_reports_predictive_coverage(setup, tmp_path, capsys):  # noqa: F811
    import json

    from invdiff import metrics

    root, prior, meas = setup
    out = tmp_path / "k3.h5"
    assert invdiff("reconstruct", meas, "--prior", prior, "--solver", "diffpir", "--steps", "3", "--samples", "3",
                   "--seed", "2", "--out", out, "--quiet") == 0
    capsys.readouterr()
    assert invdiff("evaluate", out, "--reference", meas, "--json") == 0
    scores = json.loads(capsys.readouterr().out)
    with h5py.File(out) as f:
        rec, std = f["reconstruction"][()], f["std"][()]
    truth = np.load(root / "img.npy")
    assert scores["coverage_pred95"] == pytest.approx(metrics.predictive_coverage(truth, rec, std, 3), abs=1e-6)
    assert scores["coverage_pred95"] >= scores["coverage_2std"]


@pytest.mark.parametrize("option", ["classical_method=nonsense", "init=nonsense"])
def test_unknown_classical_method_is_refused_before_running(option):
    from invdiff.solvers.base import get_solver, parse_options

    with pytest.raises(InputError, match="Unknown classical method 'nonsense'"):
        parse_options(get_solver("diffpir"), dict([option.split("=")]))


def test_tv_runs_once_per_slice_for_warm_start_and_average(setup, tmp_path, monkeypatch):  # noqa: F811
    """The warm start of K samples and the TV average share one TV run per slice."""
    import invdiff.classical.methods as methods

    root, prior, meas = setup
    calls = []
    real = methods.run_method
    monkeypatch.setattr(methods, "run_method", lambda name, op, y, *a, **k: calls.append((name, y.shape[0])) or real(name, op, y, *a, **k))
    assert invdiff("reconstruct", meas, "--prior", prior, "--solver", "diffpir", "--steps", "2", "--samples", "3",
                   "--option", "init=tv", "--option", "sigma_start=0.5", "--option", "classical_weight=0.3",
                   "--out", tmp_path / "r.h5", "--quiet") == 0
    assert calls == [("tv", 1), ("tv", 1)]  # two slices, batch 1 each
