"""data_weight=auto: Morozov's discrepancy principle in the proximal data step."""

from __future__ import annotations

import math

import pytest
import torch

from helpers_operators import DenseOperator
from invdiff.errors import InputError
from invdiff.operators.noise import NoiseModel
from invdiff.solvers.base import run_solver_with_info
from invdiff.solvers.cg import solve_data_proximal, solve_discrepancy_proximal
from invdiff.solvers.likelihood import measurement_dof, precision, resolve_data_weight, weighted_misfit
from test_solvers_contract import measurement, tiny_prior

STD = 0.05


@pytest.fixture(scope="module")
def problem():
    """A well-posed 40 x 16 dense operator, so that the truth's misfit is near dof = 40."""
    gen = torch.Generator().manual_seed(1)
    op = DenseOperator(torch.randn(40, 16, generator=gen, dtype=torch.float64), (1, 4, 4), NoiseModel("gaussian", std=STD))
    truth = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = op.noise.sample(op.forward(truth), gen)
    return op, truth, y, precision(op, y)


def test_far_anchor_is_pulled_exactly_to_the_noise_level(problem):
    op, truth, y, w = problem
    anchor = torch.zeros_like(truth)  # misfit >> dof
    dof = measurement_dof(op)
    x = solve_discrepancy_proximal(op, y, w, anchor, rho=1.0, iterations=40, dof=dof)
    misfit = weighted_misfit(op, x, y, w)
    # bisection resolution 2 ln(1e6) / 2^12 = 0.7 % in r: the misfit lands just under dof
    assert torch.all(misfit <= dof) and torch.all(misfit >= 0.9 * dof), misfit
    # and it is the proximal point of some r: closer to the anchor than least squares
    ls = solve_data_proximal(op, y, w, anchor, 1e-9, 40)
    assert torch.all((x - anchor).flatten(1).norm(dim=1) < (ls - anchor).flatten(1).norm(dim=1))


def test_anchor_that_fits_is_kept(problem):
    op, truth, y, w = problem
    ls = solve_data_proximal(op, y, w, truth, 1e-9, 60)  # overfits the noise: misfit << dof
    assert torch.all(weighted_misfit(op, ls, y, w) < measurement_dof(op))
    x = solve_discrepancy_proximal(op, y, w, ls, rho=1.0, iterations=40, dof=measurement_dof(op))
    assert torch.equal(x, ls)


def test_fixed_weight_overfits_where_auto_does_not():
    """Underdetermined (12 x 16): trusting the data far too much fits the noise exactly;
    auto stops at the noise level."""
    gen = torch.Generator().manual_seed(2)
    op = DenseOperator(torch.randn(12, 16, generator=gen, dtype=torch.float64), (1, 4, 4), NoiseModel("gaussian", std=STD))
    y = op.noise.sample(op.forward(torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)), gen)
    w, dof = precision(op, y), measurement_dof(op)
    anchor = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    fixed = weighted_misfit(op, solve_data_proximal(op, y, w, anchor, 1e-3, 40), y, w)
    auto = weighted_misfit(op, solve_discrepancy_proximal(op, y, w, anchor, 1e-3, 40, dof), y, w)
    assert torch.all(fixed < 0.01 * dof) and torch.all(auto > 0.9 * dof) and torch.all(auto <= dof)


@pytest.mark.parametrize("solver", ["diffpir", "dds"])
def test_auto_solvers_end_near_the_noise_level(solver):
    gen = torch.Generator().manual_seed(0)
    op = DenseOperator(torch.randn(12, 16, generator=gen, dtype=torch.float64) / 4, (1, 4, 4), NoiseModel("gaussian", std=STD))
    prior = tiny_prior(op.image_shape)
    y = measurement(op, prior, batch=4)
    _, info = run_solver_with_info(solver, op, y, prior, steps=10, options={"data_weight": "auto", "cg_iters": 20},
                                   generator=torch.Generator().manual_seed(0))
    assert info.options["data_weight"] == "auto"
    assert all(math.isfinite(d) and d <= 1.3 for d in info.discrepancy), info.discrepancy


@pytest.mark.parametrize("solver", ["dps", "pc", "ddnm", "langevin"])
def test_auto_is_refused_by_solvers_without_a_proximal_step(solver, problem):
    op, _, y, _ = problem
    with pytest.raises(InputError, match="discrepancy principle"):
        resolve_data_weight("auto", op, y, solver)
    with pytest.raises(InputError, match="discrepancy principle"):
        run_solver_with_info(solver, op, y, tiny_prior(op.image_shape), steps=2, options={"data_weight": "auto"},
                             generator=torch.Generator().manual_seed(0))


def test_auto_is_refused_for_a_plug_in_that_does_not_carry_it_out(problem):
    """A plug-in solver that ignores data_weight (and never calls resolve_data_weight with its
    name) is stopped before it runs instead of silently using weight 1."""
    from invdiff.solvers.base import SOLVERS, CommonOptions, Solver

    calls = []

    def run(operator, y, denoiser, *, steps, guidance, opts, generator, callback=None):
        calls.append(opts.data_weight)
        return operator.direct(y)

    SOLVERS.register("plain-plugin", Solver(name="plain-plugin", run=run, options_type=CommonOptions, defaults={},
                                            description="test plug-in"))
    try:
        op, _, y, _ = problem
        with pytest.raises(InputError, match=r"needs a solver with a proximal data step \(.*diffpir.*\), not plain-plugin"):
            run_solver_with_info("plain-plugin", op, y, tiny_prior(op.image_shape), steps=1,
                                 options={"data_weight": "auto"})
        assert calls == []
        run_solver_with_info("plain-plugin", op, y, tiny_prior(op.image_shape), steps=1, options={"data_weight": "2"})
        assert calls == ["2"]
    finally:
        SOLVERS._extra.pop("plain-plugin", None)


# --- unmeasured entries: MRI k-space outside the mask ---------------------------------------
def _mri_problem(zero_filled: bool):
    """A 4x-undersampled single-coil MRI measurement whose unsampled k-space holds either
    noise (as invdiff simulate writes it) or zeros (as scanner files store it)."""
    from invdiff.operators.masks import random_line_mask
    from invdiff.operators.mri import MRIOperator

    mask = random_line_mask((16, 16), 4.0, 0.25, seed=0)
    op = MRIOperator((1, 16, 16), mask, None, NoiseModel("gaussian", std=STD), dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    truth = torch.rand(64, 1, 16, 16, generator=gen, dtype=torch.float64)
    y = op.forward(truth)
    y = y + STD * torch.complex(torch.randn(y.shape, generator=gen, dtype=torch.float64),
                                torch.randn(y.shape, generator=gen, dtype=torch.float64))
    if zero_filled:
        y = y * op.mask
    return op, truth, y


def test_dof_and_target_count_only_sampled_kspace():
    op, truth, y = _mri_problem(zero_filled=True)
    sampled = int(op.mask.sum())
    assert sampled < 16 * 16 / 2
    assert measurement_dof(op) == 2 * sampled
    from invdiff.solvers.likelihood import discrepancy_ratio, expected_misfit

    assert expected_misfit(op, y) == pytest.approx(2 * sampled * STD**2)
    # the truth fits both kinds of file to the noise level (64 draws of 2 x sampled dof: +-5 %)
    for zero_filled in (True, False):
        op, truth, y = _mri_problem(zero_filled)
        assert float(discrepancy_ratio(op, truth, y).mean()) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("solver", ["diffpir", "dps"])
def test_what_unsampled_kspace_holds_does_not_change_the_result(solver):
    """Zeros or noise outside the mask: the same reconstruction (data_weight=auto included)."""
    results = []
    for zero_filled in (True, False):
        op, _, y = _mri_problem(zero_filled)
        options = {"data_weight": "auto", "cg_iters": 10} if solver == "diffpir" else {}
        x, _ = run_solver_with_info(solver, op, y[:2], tiny_prior(op.image_shape), steps=4, options=options,
                                    generator=torch.Generator().manual_seed(0))
        results.append(x)
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-9)
