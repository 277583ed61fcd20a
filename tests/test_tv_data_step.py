"""DiffPIR's data step with a TV term (``--option tv_weight=B``): the Chambolle-Pock solve of
``0.5 ||A x - y||_W^2 + 0.5 rho ||x - a||^2 + mu TV(x)`` against CG without TV, and its
objective against the points it should beat."""

from __future__ import annotations

import pytest
import torch

from invdiff.classical.data_term import make_data_term
from invdiff.classical.finite_differences import total_variation
from invdiff.errors import InputError
from invdiff.operators.radon import RadonOperator
from invdiff.solvers.cg import solve_data_proximal
from invdiff.solvers.diffpir import DiffPIROptions, _tv_data_step
from invdiff.solvers.likelihood import precision


@pytest.fixture
def problem():
    torch.manual_seed(0)
    op = RadonOperator.example()
    x = 0.3 + 0.7 * torch.rand(1, *op.image_shape)
    y = op.noise.sample(op.forward(x), torch.Generator().manual_seed(1))
    anchor = x + 0.05 * torch.randn_like(x)
    return op, y, anchor


def test_without_tv_it_is_the_cg_proximal_step(problem):
    op, y, anchor = problem
    rho = 1e4  # well conditioned: both solvers converge
    cg = solve_data_proximal(op, y, precision(op, y, 1.0), anchor, rho, 200)
    got = _tv_data_step(op, y, DiffPIROptions(tv_weight=1e-9, tv_iters=500))(anchor, rho)
    assert float((got - cg).norm() / cg.norm()) < 1e-2


def test_with_tv_it_lowers_the_whole_objective(problem):
    op, y, anchor = problem
    rho = 1e4
    opts = DiffPIROptions(tv_weight=1.0, tv_iters=500)
    data = make_data_term(op, y)
    from invdiff.classical.tv import DEFAULT_WEIGHTS

    mu = DEFAULT_WEIGHTS["radon"] * data.image_norm_scale()

    def objective(x):  # in the data term's units (times the noise variance)
        return float(data.value(x) + 0.5 * rho * data.sigma**2 * ((x - anchor) ** 2).sum() + mu * total_variation(x))

    got = _tv_data_step(op, y, opts)(anchor, rho)
    cg = solve_data_proximal(op, y, precision(op, y, 1.0), anchor, rho, 200)
    assert objective(got) < objective(cg) and objective(got) < objective(anchor)
    assert float(total_variation(got)) < float(total_variation(cg))


def test_tv_term_needs_a_numeric_data_weight(problem):
    op, y, _ = problem
    with pytest.raises(InputError, match="tv_weight needs a numeric data_weight"):
        _tv_data_step(op, y, DiffPIROptions(tv_weight=0.5, data_weight="auto"))
