"""(a) Learning: a small MLP trained through our loss and preconditioning recovers the exact score.

Data: a 2D Gaussian mixture (points as images of shape (2, 1, 1)); reference: the closed-form
denoiser of invdiff/prior/analytic.py. Errors are relative RMS score errors over x ~ p_sigma.
"""

from __future__ import annotations

import torch
from torch import nn

from invdiff.prior.analytic import GaussianMixtureDenoiser
from invdiff.prior.denoiser import score
from invdiff.prior.losses import DSMLoss, SSMLoss
from invdiff.prior.precond import Precond
from invdiff.prior.sde import NoiseDistribution


class PointMLP(nn.Module):
    """F(x_in, c_noise) for points ``(B, 2, 1, 1)``: an MLP on x_in and Fourier features of c_noise."""

    def __init__(self, dim: int = 2, hidden: int = 128):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, 9, dtype=torch.float32))
        self.body = nn.Sequential(nn.Linear(dim + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, c_noise, class_labels=None):
        e = c_noise[:, None] * self.freqs
        return self.body(torch.cat([x.flatten(1), e.sin(), e.cos()], 1)).view_as(x)


def mixture() -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]],
                                   [[[0.1, 0.02], [0.02, 0.05]], [[0.05, 0.0], [0.0, 0.1]]], (2, 1, 1))


def relative_score_error(model, gmm, sigma: float, gen: torch.Generator) -> float:
    x = gmm.sample(2000, gen) + sigma * torch.randn(2000, 2, 1, 1, generator=gen)
    exact = score(gmm, x, sigma)
    with torch.no_grad() if not getattr(model, "energy", False) else torch.enable_grad():
        learned = score(model, x, sigma).detach()
    return float((learned - exact).pow(2).sum((1, 2, 3)).mean().sqrt() / exact.pow(2).sum((1, 2, 3)).mean().sqrt())


def fit(loss_cls, steps: int, energy: bool = False):
    torch.manual_seed(0)
    gmm = mixture()
    noise = NoiseDistribution("edm", sigma_data=gmm.sigma_data, p_mean=-0.5, p_std=1.2)
    model = Precond(PointMLP(), "edm", sigma_data=gmm.sigma_data, energy=energy)
    loss_fn = loss_cls(noise)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    untrained = relative_score_error(model, gmm, 0.3, torch.Generator().manual_seed(1))
    for step in range(steps):
        loss = loss_fn(model, gmm.sample(256, gen), None, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == int(0.7 * steps):
            for group in opt.param_groups:
                group["lr"] = 5e-4
    return model, gmm, untrained


def test_dsm_learns_exact_mixture_score():
    model, gmm, untrained = fit(DSMLoss, 1000)
    assert untrained > 0.5  # the check can fail: an untrained denoiser is far off
    gen = torch.Generator().manual_seed(1)
    bounds = {0.1: 0.3, 0.3: 0.2, 1.0: 0.08, 3.0: 0.04}
    errors = {s: relative_score_error(model, gmm, s, gen) for s in bounds}
    assert all(errors[s] < b for s, b in bounds.items()), errors


def test_sliced_score_matching_learns_mixture_score():
    model, gmm, _ = fit(SSMLoss, 400)
    gen = torch.Generator().manual_seed(1)
    bounds = {0.3: 0.3, 1.0: 0.15, 3.0: 0.12}
    errors = {s: relative_score_error(model, gmm, s, gen) for s in bounds}
    assert all(errors[s] < b for s, b in bounds.items()), errors


def test_energy_parametrisation_learns_mixture_score():
    model, gmm, _ = fit(DSMLoss, 400, energy=True)
    gen = torch.Generator().manual_seed(1)
    bounds = {0.3: 0.3, 1.0: 0.12, 3.0: 0.05}
    errors = {s: relative_score_error(model, gmm, s, gen) for s in bounds}
    assert all(errors[s] < b for s, b in bounds.items()), errors
