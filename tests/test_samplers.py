"""Samplers against exact answers: Gaussian (closed-form probability-flow map and moments) and
a 2D Gaussian mixture (sliced Wasserstein distance to exact draws, mode weights)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.integrate import solve_ivp

from invdiff.prior.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from invdiff.sampling.ode import dopri5
from invdiff.sampling.samplers import SAMPLERS, initial_noise, sample_heun, sigma_list
from invdiff.sampling.schedules import karras_sigmas

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def _gaussian(d: int = 4) -> tuple[GaussianDenoiser, torch.Tensor, torch.Tensor]:
    """N(mean, Q diag(lam) Q^T) with a random rotation Q: non-diagonal covariance, eigenvalues 0.3..2."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    lam = torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    mean = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    den = GaussianDenoiser(mean, q @ torch.diag(lam) @ q.T, (1, 1, d), SIGMA_MIN, SIGMA_MAX)
    return den, q, lam


def _exact_flow(den: GaussianDenoiser, q: torch.Tensor, lam: torch.Tensor, x: torch.Tensor,
                sigma_from: float, sigma_to: float) -> torch.Tensor:
    """The probability-flow ODE of a Gaussian in closed form: in the eigenbasis of the covariance,
    x - mean scales by sqrt((lam + sigma_to^2) / (lam + sigma_from^2)) (dx/dsigma = sigma (x - mu) / (lam + sigma^2))."""
    z = (x.reshape(x.shape[0], -1) - den.mean) @ q
    z = z * torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2))
    return den.mean + z @ q.T


def _run(name: str, den, n: int, steps: int, seed: int = 0, **options) -> tuple[torch.Tensor, torch.Tensor, int]:
    gen = torch.Generator().manual_seed(seed)
    x0 = initial_noise((n, *den.image_shape), SIGMA_MAX, generator=gen, dtype=torch.float64)
    infos: list[dict] = []
    out = SAMPLERS[name](den, x0, karras_sigmas(steps, SIGMA_MIN, SIGMA_MAX), generator=gen,
                         callback=infos.append, **options)
    return x0, out, infos[-1]["nfe"]


# --- deterministic samplers: pointwise against the exact flow map (no Monte-Carlo error) ---------


@pytest.mark.parametrize(
    "name, steps, options, tol, order",
    [
        # Heun is 2nd order: measured max relative error 3.9e-2 / 8.8e-3 / 2.1e-3 at 20/40/80 steps.
        ("heun", 40, {}, 1.5e-2, 2),
        # DDIM (eta = 0) is the Euler method, 1st order: 2.7e-2 at 100 steps, 1.3e-2 at 200.
        ("ddim", 100, {"eta": 0.0}, 4e-2, 1),
    ],
)
def test_deterministic_samplers_follow_the_exact_flow(name, steps, options, tol, order):
    den, q, lam = _gaussian()
    x0, out, _ = _run(name, den, 64, steps, **options)
    exact = _exact_flow(den, q, lam, x0, SIGMA_MAX, 0.0)
    scale = (exact - den.mean).norm(dim=1)
    err = ((out.reshape(64, -1) - exact).norm(dim=1) / scale).max().item()
    assert err < tol
    # halving the step size divides the error by ~2^order (between 0.7 and 1.4 times that)
    _, out2, _ = _run(name, den, 64, 2 * steps, **options)
    err2 = ((out2.reshape(64, -1) - exact).norm(dim=1) / scale).max().item()
    assert 0.7 * 2**order < err / err2 < 1.4 * 2**order


def test_adaptive_ode_sampler_is_accurate_and_counts_evaluations():
    den, q, lam = _gaussian()
    x0, out, nfe = _run("ode", den, 64, 2, rtol=1e-6, atol=1e-6)
    # ends with x = D(x, sigma_min): differs from the flow to sigma = 0 by O(sigma_min^2 / lam) ~ 1e-5
    exact = _exact_flow(den, q, lam, x0, SIGMA_MAX, 0.0)
    err = ((out.reshape(64, -1) - exact).norm(dim=1) / (exact - den.mean).norm(dim=1)).max().item()
    assert err < 1e-4
    calls = []

    class Counted(GaussianDenoiser):
        def __call__(self, x, sigma):
            calls.append(1)
            return super().__call__(x, sigma)

    counted = Counted(den.mean, den.cov, den.image_shape, SIGMA_MIN, SIGMA_MAX)
    assert nfe > 20  # adaptive stepping really happened
    _, _, nfe_counted = _run("ode", counted, 4, 2, rtol=1e-6, atol=1e-6)
    assert nfe_counted == len(calls)


def test_dopri5_matches_scipy_rk45():
    """Independent reference: scipy's RK45 on a stiff-ish linear + nonlinear system, integrating backwards."""
    a = torch.tensor([[-1.0, 2.0], [-2.0, -0.5]], dtype=torch.float64)

    def f(t, y):
        return a @ y + torch.sin(t * y)

    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    ours, nfe = dopri5(f, y0, 3.0, 0.5, rtol=1e-9, atol=1e-11)
    ref = solve_ivp(lambda t, y: (a @ torch.from_numpy(y) + torch.sin(t * torch.from_numpy(y))).numpy(),
                    (3.0, 0.5), y0.numpy(), method="RK45", rtol=1e-11, atol=1e-13)
    assert torch.allclose(ours, torch.from_numpy(ref.y[:, -1]), rtol=0, atol=1e-7)
    assert nfe > 0


# --- stochastic samplers: moments of N(mean, cov) ----------------------------------------------

N_GAUSS = 16384


@pytest.mark.parametrize(
    "name, steps, options",
    [
        ("em", 200, {}),
        ("pc", 100, {"snr": 0.16, "corrector_steps": 1}),
        ("ddim", 200, {"eta": 1.0}),
        ("heun", 40, {"churn": 10.0}),
    ],
)
def test_stochastic_samplers_reproduce_a_gaussian(name, steps, options):
    """Tolerances, d = 4, n = 16384 draws, moments whitened by the true covariance S:
    - mean: ||S^-1/2 (m - mu)|| has rms sqrt(d/n) = 0.016 for exact draws; the start
      N(0, sigma_max^2 I) instead of N(mu, S + sigma_max^2 I) adds ~|mu|/sigma_max = 0.016;
      bound 0.08 (4 MC sigmas + bias).
    - covariance: W = S^-1/2 C S^-1/2; tr(W)/d - 1 has MC std sqrt(2/(n d)) = 0.0055 and these
      first-order samplers, at these step counts, a measured bias of 2-5.5 %: bound 0.08.
      ||W - I||_F has MC rms sqrt((d^2 + d)/n) = 0.035 plus the bias: bound 0.2.
    A sampler that gets the variance 10 % wrong fails the trace bound."""
    den, q, lam = _gaussian()
    _, out, nfe = _run(name, den, N_GAUSS, steps, **options)
    out = out.reshape(N_GAUSS, -1)
    d = out.shape[1]
    whiten = torch.linalg.inv(torch.linalg.cholesky(den.cov))
    mean_err = (whiten @ (out.mean(0) - den.mean)).norm().item()
    w = whiten @ torch.cov(out.T) @ whiten.T
    assert mean_err < 0.08
    assert abs(torch.trace(w).item() / d - 1) < 0.08
    assert (w - torch.eye(d, dtype=w.dtype)).norm().item() < 0.2
    assert nfe == {"em": steps, "pc": 2 * steps, "ddim": steps, "heun": 2 * steps - 1}[name]


# --- a 2D Gaussian mixture ---------------------------------------------------------------------

N_MIX = 4096


def _mixture() -> GaussianMixtureDenoiser:
    weights = [0.5, 0.3, 0.2]
    means = [[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]
    covs = [[[0.15, 0.05], [0.05, 0.1]], [[0.1, -0.04], [-0.04, 0.2]], [[0.08, 0.0], [0.0, 0.08]]]
    return GaussianMixtureDenoiser(weights, means, covs, (1, 1, 2), SIGMA_MIN, SIGMA_MAX)


def _sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_dir: int = 64) -> float:
    """Mean over fixed directions of the 1D W1 distance between equal-size sample sets."""
    angles = torch.linspace(0, math.pi, n_dir + 1, dtype=torch.float64)[:-1]
    dirs = torch.stack([angles.cos(), angles.sin()], 1)
    pa, pb = (a.double() @ dirs.T).sort(0).values, (b.double() @ dirs.T).sort(0).values
    return (pa - pb).abs().mean().item()


@pytest.mark.parametrize(
    "name, steps, options",
    [
        ("em", 200, {}),
        ("pc", 100, {"snr": 0.16}),
        ("heun", 40, {}),
        ("ode", 2, {"rtol": 1e-5, "atol": 1e-5}),
        ("ddim", 100, {"eta": 0.0}),
    ],
)
def test_samplers_reproduce_a_gaussian_mixture(name, steps, options):
    """Bounds: two independent exact sets of n = 4096 are at sliced-W1 distance ~ c / sqrt(n)
    (measured here as `baseline`); a sampler may add a small discretisation error: bound
    3 * baseline + 0.03 (modes are 4 apart, so a missed or misweighted mode costs > 0.2).
    Mode weights: nearest-mean fractions within 0.04 of the true weights (binomial std <= 0.008)."""
    den = _mixture()
    _, out, _ = _run(name, den, N_MIX, steps, **options)
    out = out.reshape(N_MIX, 2).double()
    exact = den.sample(N_MIX, generator=torch.Generator().manual_seed(7)).reshape(N_MIX, 2)
    exact2 = den.sample(N_MIX, generator=torch.Generator().manual_seed(8)).reshape(N_MIX, 2)
    baseline = _sliced_wasserstein(exact, exact2)
    assert _sliced_wasserstein(out, exact) < 3 * baseline + 0.03
    nearest = torch.cdist(out, den.means).argmin(1)
    fractions = torch.bincount(nearest, minlength=3).double() / N_MIX
    assert torch.allclose(fractions, den.weights, atol=0.04)


def test_a_wrong_mixture_fails_the_distance_bound():
    """The mixture test can fail: exact draws with the weights permuted are far beyond the bound."""
    den = _mixture()
    wrong = GaussianMixtureDenoiser([0.2, 0.3, 0.5], den.means, den.covs, (1, 1, 2))
    a = wrong.sample(N_MIX, generator=torch.Generator().manual_seed(3)).reshape(N_MIX, 2)
    exact = den.sample(N_MIX, generator=torch.Generator().manual_seed(7)).reshape(N_MIX, 2)
    exact2 = den.sample(N_MIX, generator=torch.Generator().manual_seed(8)).reshape(N_MIX, 2)
    assert _sliced_wasserstein(a, exact) > 3 * _sliced_wasserstein(exact, exact2) + 0.03


# --- contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_samples_and_callback(name):
    den, _, _ = _gaussian()
    runs = [_run(name, den, 8, 6, seed=5)[1] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (8, 1, 1, 4) and torch.isfinite(runs[0]).all()
    seen = []
    SAMPLERS[name](den, initial_noise((2, 1, 1, 4), SIGMA_MAX), karras_sigmas(6, SIGMA_MIN, SIGMA_MAX),
                   callback=seen.append)
    assert seen and seen[-1]["sigma_next"] == 0.0 and seen[-1]["nfe"] >= 6
    assert [s["nfe"] for s in seen] == sorted(s["nfe"] for s in seen)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError):
        sigma_list([1.0, 0.5])  # does not end with 0
    with pytest.raises(ValueError):
        sigma_list([0.5, 1.0, 0.0])  # increasing
    den, _, _ = _gaussian()
    with pytest.raises(ValueError):
        sample_heun(den, torch.zeros(1, 1, 1, 4), torch.tensor([0.0]))
