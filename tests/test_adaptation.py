"""Test-time adaptation of the prior to a measurement (invdiff/prior/lora.py,
invdiff/solvers/adaptation.py): adapters start as the identity, only they change, the fit to
the measurement improves, the run counts the extra network evaluations and is reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from helpers_operators import DenseOperator, FastGaussianDenoiser, random_covariance
from invdiff.errors import InputError
from invdiff.operators.noise import NoiseModel
from invdiff.prior.data import Normalisation
from invdiff.prior.lora import LoRAConv2d, adapted_copy
from invdiff.prior.store import Prior
from invdiff.prior.train import TrainSettings, build_model, prior_config
from invdiff.prior.unet import UNetConfig
from invdiff.solvers.adaptation import adapt_to_measurement, noise_range
from invdiff.solvers.base import run_solver_with_info
from invdiff.solvers.likelihood import discrepancy_ratio

SHAPE = (1, 8, 8)


def network_prior(seed: int = 0) -> Prior:
    s = TrainSettings(image_size=8, unet=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1))
    torch.manual_seed(seed)
    model = build_model(s)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return Prior(model, prior_config(s, Normalisation(), {"slices": 1}, {"command": "test"}))


@pytest.fixture(scope="module")
def problem():
    """A random 24 x 64 operator on 8x8 images (underdetermined), noise std 0.02, and y."""
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(24, 64, generator=gen) / 8
    op = DenseOperator(matrix, SHAPE, NoiseModel("gaussian", std=0.02), dtype=torch.float32)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    truth = torch.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 8).reshape(1, *SHAPE)
    y = op.noise.sample(op.forward(truth), gen)
    return op, y


def test_adapters_start_as_the_identity_and_leave_the_original_alone():
    prior = network_prior()
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    clone, params = adapted_copy(prior, rank=2)
    convs = [m for m in prior.modules() if isinstance(m, torch.nn.Conv2d)]
    adapters = [m for m in clone.modules() if isinstance(m, LoRAConv2d)]
    assert len(adapters) == len(convs) > 0 and len(params) == 2 * len(convs)
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in clone.named_parameters() if ".base." in n)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.05, 0.3, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(clone(x, sigma), prior(x, sigma), rtol=0, atol=0)
        with torch.no_grad():
            for p in params:
                p.add_(0.1)
        assert not torch.allclose(clone(x, sigma), prior(x, sigma))
    for key, value in prior.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # a rank above what a layer can hold is capped at min(C_out, C_in k k)
    first = next(m for m in clone.modules() if isinstance(m, LoRAConv2d))
    assert first.down.out_channels <= min(first.base.out_channels, first.base.in_channels * 9)


def test_adaptation_improves_the_fit_to_the_measurement(problem):
    op, y = problem
    prior = network_prior()
    x_init = op.adjoint(y)
    sigma = 0.1
    adapted, info = adapt_to_measurement(prior, op, y, x_init, iterations=60, rank=4, lr=3e-3,
                                         sigma_range=(sigma, sigma), generator=torch.Generator().manual_seed(0))
    assert info.iterations == 60 and len(info.losses) == 60 and all(math.isfinite(v) for v in info.losses)
    noise = torch.randn(x_init.shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        x_in = x_init + sigma * noise
        before = float(discrepancy_ratio(op, prior(x_in, sigma), y))
        after = float(discrepancy_ratio(op, adapted(x_in, sigma), y))
    assert after < 0.5 * before, (before, after)
    assert not any(p.requires_grad for p in adapted.parameters())


def test_repeated_rows_are_fitted_once(problem):
    op, y = problem
    prior = network_prior()
    kwargs = dict(iterations=5, rank=2, lr=1e-3, sigma_range=(0.05, 0.5))
    one, info_one = adapt_to_measurement(prior, op, y, op.adjoint(y), generator=torch.Generator().manual_seed(3), **kwargs)
    y4 = y.expand(4, *y.shape[1:]).clone()
    x4 = op.adjoint(y).expand(4, *SHAPE).clone()
    four, info_four = adapt_to_measurement(prior, op, y4, x4, generator=torch.Generator().manual_seed(3), **kwargs)
    assert info_one.losses == info_four.losses
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(one(x, 0.2), four(x, 0.2), rtol=0, atol=0)


def test_solver_run_counts_adaptation_and_is_reproducible(problem):
    op, y = problem
    prior = network_prior()
    options = {"adapt_iters": 7, "adapt_rank": 2, "sigma_start": 0.5, "sigma_end": 0.05, "init": "direct"}
    runs = [run_solver_with_info("diffpir", op, y.expand(2, -1).clone(), prior, steps=4, options=options,
                                 generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    (x0, info0), (x1, info1) = runs
    torch.testing.assert_close(x0, x1, rtol=0, atol=0)
    assert info0.nfe == 4 + 7 and len(info0.adaptation_losses) == 7
    assert info0.options["adapt_iters"] == 7 and info0.options["adapt_lr"] == 3e-4
    plain, info_plain = run_solver_with_info("diffpir", op, y.expand(2, -1).clone(), prior, steps=4,
                                             options={k: v for k, v in options.items() if not k.startswith("adapt")},
                                             generator=torch.Generator().manual_seed(5))
    assert info_plain.nfe == 4 and info_plain.adaptation_losses == []
    assert not torch.equal(plain, x0)


def test_noise_range_follows_the_schedule():
    prior = network_prior()
    assert noise_range(prior, 0.5, 0.02) == (0.02, 0.5)
    assert noise_range(prior, 0.0, 0.0) == (prior.sigma_min, prior.sigma_data)
    assert noise_range(prior, 500.0, 0.0) == (prior.sigma_min, prior.sigma_max)


@pytest.mark.parametrize("options, phrase", [({"adapt_iters": -1}, "adapt_iters"), ({"adapt_lr": 0}, "adapt_lr"),
                                             ({"adapt_rank": 0}, "adapt_rank")])
def test_bad_adaptation_options(problem, options, phrase):
    op, y = problem
    with pytest.raises(InputError, match=phrase):
        run_solver_with_info("diffpir", op, y, network_prior(), steps=2, options=options)


def test_an_analytic_prior_cannot_be_adapted(problem):
    op, y = problem
    gen = torch.Generator().manual_seed(0)
    analytic = FastGaussianDenoiser(torch.zeros(64, dtype=torch.float64), random_covariance(64, gen, 0.01, 0.25), SHAPE)
    op64 = DenseOperator(op.matrix.double(), SHAPE, op.noise)
    with pytest.raises(InputError, match="needs a trained network prior"):
        run_solver_with_info("diffpir", op64, y.double(), analytic, steps=2, options={"adapt_iters": 2})
