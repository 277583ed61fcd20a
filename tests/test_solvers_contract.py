"""Every solver keeps the contract of invdiff/solvers/base.py on every registered operator."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from helpers_operators import DenseOperator, FastGaussianDenoiser, random_covariance
from invdiff.errors import DivergenceError, InputError
from invdiff.operators.base import OPERATORS, get_operator_class
from invdiff.operators.noise import NoiseModel
from invdiff.solvers.base import (SOLVERS, CommonOptions, Solver, StepInfo, get_solver, parse_options, run_solver,
                                 run_solver_with_info)
from invdiff.solvers.cg import conjugate_gradient, normal_matvec, pseudo_inverse, solve_data_proximal
from invdiff.solvers.langevin import _sqrt_series, coupling_schedule

BUILTIN = {"dps", "pc", "diffpir", "dds", "ddnm", "langevin"}
#: cheapest settings per solver for the smoke runs
CHEAP = {"langevin": {"inner_steps": 2, "cg_iters": 3}}


def tiny_prior(image_shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = math.prod(image_shape)
    return FastGaussianDenoiser(torch.zeros(d, dtype=torch.float64), random_covariance(d, gen, 0.01, 0.25), image_shape)


def example_operator(name):
    cls = get_operator_class(name)
    assert hasattr(cls, "example"), f"operator {name} lacks the example() classmethod the contract tests use"
    return cls.example()


@pytest.fixture(scope="module")
def dense_op():
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(6, 16, generator=gen, dtype=torch.float64) / 4
    return DenseOperator(matrix, (1, 4, 4), NoiseModel("gaussian", std=0.05))


def measurement(op, prior, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = prior.sample(batch, gen).to(op.dtype).reshape(batch, *op.image_shape).to(op.device)
    return op.noise.sample(op.forward(x), gen)


def test_builtin_solvers_registered():
    assert BUILTIN <= set(SOLVERS.names())
    for name in SOLVERS.names():
        solver = get_solver(name)
        assert isinstance(solver, Solver) and solver.name == name
        assert dataclasses.is_dataclass(solver.options_type) and issubclass(solver.options_type, CommonOptions)
        assert solver.description
    assert get_solver("langevin").exact and not get_solver("dps").exact


@pytest.mark.parametrize("operator_name", OPERATORS.names())
@pytest.mark.parametrize("solver_name", sorted(BUILTIN))
def test_every_solver_on_every_operator(operator_name, solver_name):
    op = example_operator(operator_name)
    prior = tiny_prior(op.image_shape)
    y = measurement(op, prior)
    x = run_solver(solver_name, op, y, prior, steps=3, options=CHEAP.get(solver_name), generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, *op.image_shape) and x.dtype == op.dtype
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("solver_name", sorted(BUILTIN))
def test_dense_and_seed_reproducible(dense_op, solver_name):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    runs = [
        run_solver(solver_name, dense_op, y, prior, steps=4, options=CHEAP.get(solver_name), generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize(
    "solver_name, steps, options, expected_nfe",
    [("dps", 7, None, 7), ("diffpir", 7, None, 7), ("dds", 7, None, 7), ("ddnm", 7, None, 7),
     ("pc", 7, {"corrector_steps": 2}, 7 * 3 - 2), ("langevin", 7, {"inner_steps": 3}, 21)],
)
def test_nfe_reported(dense_op, solver_name, steps, options, expected_nfe):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    seen: list[StepInfo] = []
    _, info = run_solver_with_info(solver_name, dense_op, y, prior, steps=steps, options=options,
                                   generator=torch.Generator().manual_seed(0), callback=seen.append)
    assert info.nfe == expected_nfe
    assert [s.step for s in seen] == list(range(1, steps + 1)) and seen[-1].nfe == expected_nfe
    assert all(s.total == steps for s in seen)
    assert len(info.discrepancy) == 2 and all(math.isfinite(v) for v in info.discrepancy)


def test_defaults_and_string_options(dense_op):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    _, info = run_solver_with_info("dds", dense_op, y, prior, options={"eta": "0.5", "cg_iters": "3", "data_weight": "auto"},
                                   generator=torch.Generator().manual_seed(0))
    assert info.steps == get_solver("dds").defaults_for("dense")["steps"]
    assert info.options == {"data_weight": "auto", "eta": 0.5, "cg_iters": 3, "sigma_start": 0.0, "sigma_end": 0.0,
                            "init": "direct", "classical_weight": 0.0, "classical_method": "tv",
                            "adapt_iters": 0, "adapt_rank": 4, "adapt_lr": 3e-4}


def test_scaled_operator_uses_base_defaults(dense_op):
    solver = get_solver("dps")
    solver_defaults = dict(solver.defaults)
    try:
        solver.defaults["dense"] = {"steps": 3}
        prior = tiny_prior(dense_op.image_shape)
        y = measurement(dense_op, prior)
        _, info = run_solver_with_info("dps", dense_op.scaled(2.0), y, prior, generator=torch.Generator().manual_seed(0))
        assert info.steps == 3
    finally:
        solver.defaults.clear()
        solver.defaults.update(solver_defaults)


@pytest.mark.parametrize(
    "options, phrase",
    [({"nonsense": 1}, "valid options: data_weight, sigma_start, sigma_end, init, classical_weight, classical_method, adapt_iters, adapt_rank, adapt_lr, eta"), ({"eta": "abc"}, "must be a finite number"),
     ({"cg_iters": "2.5"}, "must be an integer"), ({"data_weight": "-1"}, "data_weight")],
)
def test_bad_options_raise_input_error(dense_op, options, phrase):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    with pytest.raises(InputError, match=phrase):
        run_solver("dds", dense_op, y, prior, steps=2, options=options)


def test_bad_steps_guidance_solver_and_measurement(dense_op):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    with pytest.raises(InputError, match="steps"):
        run_solver("dps", dense_op, y, prior, steps=0)
    with pytest.raises(InputError, match="guidance"):
        run_solver("dps", dense_op, y, prior, steps=2, guidance=float("nan"))
    with pytest.raises(InputError, match="Unknown solver 'nope'"):
        run_solver("nope", dense_op, y, prior)
    bad = y.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        run_solver("dps", dense_op, bad, prior, steps=2)


def test_huge_step_diverges(dense_op):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    with pytest.raises(DivergenceError, match="diverged"):
        run_solver("dps", dense_op, y, prior, steps=10, guidance=1e9, generator=torch.Generator().manual_seed(0))


# --- the numerical helpers --------------------------------------------------------------------
def test_cg_solves_spd_system():
    gen = torch.Generator().manual_seed(0)
    mats = torch.stack([random_covariance(12, gen, 0.5, 2.0) for _ in range(3)])
    rhs = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", mats, v), rhs, torch.zeros_like(rhs), 40)
    torch.testing.assert_close(x, torch.linalg.solve(mats, rhs), rtol=1e-8, atol=1e-8)


def test_proximal_and_pseudo_inverse_match_closed_form(dense_op):
    gen = torch.Generator().manual_seed(1)
    a = dense_op.matrix
    y = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    anchor = torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    weight = torch.tensor(3.0, dtype=torch.float64)
    rho = torch.tensor([0.5, 2.0], dtype=torch.float64)
    x = solve_data_proximal(dense_op, y, weight, anchor, rho, 40).reshape(2, 16)
    for b in range(2):
        lhs = 3.0 * a.T @ a + rho[b] * torch.eye(16, dtype=torch.float64)
        ref = torch.linalg.solve(lhs, 3.0 * a.T @ y[b] + rho[b] * anchor[b].reshape(16))
        torch.testing.assert_close(x[b], ref, rtol=1e-7, atol=1e-7)
    u = pseudo_inverse(dense_op, y, weight, 40).reshape(2, 16)
    torch.testing.assert_close(u, y @ torch.linalg.pinv(a).T, rtol=1e-7, atol=1e-7)


def test_sqrt_series_and_coupling_schedule(dense_op):
    gen = torch.Generator().manual_seed(2)
    a = dense_op.matrix
    c = 0.5 / float(torch.linalg.matrix_norm(a, 2) ** 2)
    xi = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = _sqrt_series(normal_matvec(dense_op, torch.tensor(c, dtype=torch.float64)), xi, 20).reshape(16)
    evals, evecs = torch.linalg.eigh(torch.eye(16, dtype=torch.float64) - c * a.T @ a)
    torch.testing.assert_close(out, evecs @ (evals.sqrt() * (evecs.T @ xi.reshape(16))), rtol=1e-6, atol=1e-6)
    sched = coupling_schedule(10, 1.0, 0.01, 0.5)
    assert len(sched) == 10 and sched[0] == 1.0 and sched[4:] == [pytest.approx(0.01)] * 6
    assert all(a >= b for a, b in zip(sched, sched[1:]))


def test_sigma_end_stops_the_schedule(dense_op):
    prior = tiny_prior(dense_op.image_shape)
    y = measurement(dense_op, prior)
    for end in (0.0, 0.05):
        seen: list[StepInfo] = []
        run_solver_with_info("diffpir", dense_op, y, prior, steps=6, options={"sigma_start": 1.0, "sigma_end": end},
                             generator=torch.Generator().manual_seed(0), callback=seen.append)
        sigmas = [s.sigma for s in seen]
        assert sigmas[0] == pytest.approx(1.0)
        assert sigmas[-1] == pytest.approx(end if end > 0 else prior.sigma_min)
        assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


class _NaNAfter:
    """A denoiser that returns NaN from its ``bad_call``-th call on (counts its calls)."""

    def __init__(self, inner, bad_call: int):
        self.inner, self.bad_call, self.calls = inner, bad_call, 0
        self.sigma_min, self.sigma_max, self.sigma_data = inner.sigma_min, inner.sigma_max, inner.sigma_data

    def __call__(self, x, sigma):
        self.calls += 1
        out = self.inner(x, sigma)
        return out * float("nan") if self.calls >= self.bad_call else out


@pytest.mark.parametrize("solver_name", ["diffpir", "dds", "ddnm"])
def test_divergence_stops_the_run_at_the_bad_step(dense_op, solver_name):
    bad = _NaNAfter(tiny_prior(dense_op.image_shape), bad_call=3)
    y = measurement(dense_op, bad.inner)
    with pytest.raises(DivergenceError, match=r"diverged at step 3 of 10"):
        run_solver(solver_name, dense_op, y, bad, steps=10, generator=torch.Generator().manual_seed(0))
    assert bad.calls == 3  # stopped at once, not after all ten steps


@pytest.mark.parametrize(
    "solver_name, options, phrase",
    [("diffpir", {"zeta": "1.5"}, "zeta of solver diffpir must be between 0 and 1"),
     ("dds", {"eta": "-0.1"}, "eta of solver dds must be between 0 and 1"),
     ("ddnm", {"cg_iters": "0"}, "cg_iters of solver ddnm must be >= 1"),
     ("dps", {"eta": "2"}, "eta of solver dps"),
     ("pc", {"snr": "-1"}, "snr of solver pc must be >= 0"),
     ("pc", {"corrector_steps": "-1"}, "corrector_steps"),
     ("langevin", {"inner_steps": "0"}, "inner_steps"),
     ("langevin", {"anneal": "1.5"}, "anneal"),
     ("langevin", {"rho_min": "-1"}, "rho_min"),
     ("diffpir", {"sigma_start": "-1"}, "sigma_start of solver diffpir must be >= 0"),
     ("diffpir", {"sigma_end": "-0.5"}, "sigma_end"),
     ("diffpir", {"sigma_start": "0.2", "sigma_end": "0.3"}, "sigma_end .0.3. must be below sigma_start"),
     ("diffpir", {"classical_weight": "2"}, "classical_weight of solver diffpir must be between 0 and 1"),
     ("diffpir", {"adapt_rank": "0"}, "adapt_rank"),
     ("diffpir", {"adapt_lr": "0"}, "adapt_lr")],
)
def test_option_outside_its_range_is_refused(solver_name, options, phrase):
    with pytest.raises(InputError, match=phrase):
        parse_options(get_solver(solver_name), options)


@pytest.mark.parametrize("solver_name", sorted(SOLVERS.names()))
def test_every_tuned_default_lies_in_its_range(solver_name):
    """The shipped per-operator defaults (and the bare dataclass defaults) pass the range check."""
    solver = get_solver(solver_name)
    parse_options(solver, {})
    for operator_name in solver.defaults:
        preset = {k: v for k, v in solver.defaults_for(operator_name).items() if k not in ("steps", "guidance")}
        parse_options(solver, preset)
