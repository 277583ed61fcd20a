"""The solver contract: a registry of posterior samplers and the one call that runs them.

A solver draws ONE sample of p(x | y) per batch element from a prior given as a denoiser
D(x, sigma) (invdiff/prior/denoiser.py) and any operator of invdiff/operators/base.py. The
pipeline draws K samples by repeating the batch K times.

Each solver module exposes ``SOLVER = Solver(...)`` and is registered through the entry-point
group ``invdiff.solvers``. Its ``run`` function has the signature

    run(operator, y, denoiser, *, steps: int, guidance: float, opts: <options_type>,
        generator: torch.Generator, callback: Callable[[StepInfo], None] | None) -> x

with y ``(B, *measurement_shape)`` on the operator's device and x ``(B, C, H, W)``.

NFE (network function evaluations): :func:`run_solver` wraps the denoiser in a counter. One
call of D on the whole batch counts as one evaluation (the usual convention; DPS also pays a
backward pass per evaluation); each test-time adaptation iteration (``adapt_iters``) counts
as one evaluation too. The count reaches the caller through the callback
(``StepInfo.nfe``, after every step) and through :class:`SolverInfo` from
:func:`run_solver_with_info` (the pipeline records it in the provenance).
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from invdiff.errors import DivergenceError, InputError
from invdiff.operators.base import Operator, ScaledOperator
from invdiff.prior.denoiser import Denoiser
from invdiff.registry import Registry
from invdiff.solvers.likelihood import (
    discrepancy_ratio,
    expected_misfit,
    is_auto,
    measured_residual,
    on_measured,
    squared_abs,
)

SOLVERS = Registry("invdiff.solvers", "solver")

#: a run whose residual ||A x - y|| exceeds this many times max(||y||, expected noise norm)
#: has diverged (the zero image scores 1; any sensible reconstruction scores below 1).
DIVERGENCE_FACTOR = 10.0

#: key of ``Solver.defaults`` used for operators without their own entry.
ANY_OPERATOR = "*"


@dataclass
class CommonOptions:
    """Options every solver accepts.

    ``RANGES`` maps a numeric option to its allowed closed interval (None: unbounded); a
    subclass adds its own, and ``parse_options`` refuses a value outside with one sentence.
    """

    RANGES: ClassVar[dict[str, tuple[float | None, float | None]]] = {
        "sigma_start": (0.0, None), "sigma_end": (0.0, None), "classical_weight": (0.0, 1.0),
        "adapt_iters": (0, None), "adapt_rank": (1, None),
    }

    data_weight: str = "1"
    """Likelihood multiplier (a positive number), or 'auto' for diffpir and dds: every data
    step then takes the weight that makes its result fit the data to the known noise level
    (Morozov's discrepancy principle, invdiff/solvers/cg.py). 1 trusts the noise model: the
    Bayesian posterior."""
    sigma_start: float = 0.0
    """0: start the reverse diffusion from pure noise at the prior's sigma_max. > 0: start
    from a classical estimate (``init``) plus noise of this std, in prior units, and run the
    schedule from there (Chung et al. 2022, "Come-closer-diffuse-faster"): fewer network
    evaluations, and the classical estimate anchors the result on unfamiliar images."""
    sigma_end: float = 0.0
    """0: the schedule ends at the prior's sigma_min. > 0: it ends at this noise level (prior
    units) and the last denoised, data-consistent estimate is returned. Stopping at the level
    of the residual artefacts rather than far below it keeps a weak or mismatched prior from
    hallucinating fine texture (as in DPIR, Zhang et al. 2021, whose schedule ends at the noise
    level)."""
    init: str = "direct"
    """The classical estimate a warm start begins from: 'direct' (FBP, zero-filled, Wiener)
    or a classical method name such as 'tv' or 'cgls' (see ``invdiff info --methods``)."""
    classical_weight: float = 0.0
    """Weight beta in [0, 1] of the classical estimate ``classical_method`` in the reported
    posterior (model averaging, invdiff/solvers/averaging.py): mean (1 - beta) m + beta x_c,
    variance (1 - beta) s^2 + beta (1 - beta) |m - x_c|^2. 0: the diffusion posterior alone.
    Keeps the reconstruction from losing to the classical method on images unlike the prior's
    training data, and widens the uncertainty where the two disagree."""
    classical_method: str = "tv"
    """The classical method averaged in when ``classical_weight > 0`` ('direct' or a method
    name, as for ``init``)."""
    adapt_iters: int = 0
    """Test-time adaptation: > 0 fits low-rank adapters of the prior network to this
    measurement for this many Adam iterations before sampling (invdiff/solvers/adaptation.py,
    Barbano et al. 2023), from the ``init`` estimate; each counts as one network evaluation.
    0: the trained prior as it is (measured in BENCHMARKS.md: it does not pay with the shipped
    brain prior)."""
    adapt_rank: int = 4
    """Rank of each convolution's adapter when ``adapt_iters > 0``."""
    adapt_lr: float = 3e-4
    """Adam step size of the adaptation (1e-3 already damages the prior)."""


@dataclass
class StepInfo:
    """What a solver reports after each step (the callback's argument)."""

    step: int
    """Steps finished so far (1-based)."""
    total: int
    """Total number of steps."""
    sigma: float
    """Noise level (or coupling) of the step just finished, in prior units."""
    denoised: torch.Tensor | None = None
    """Current estimate of the clean image ``(B, C, H, W)`` (not a copy; do not modify)."""
    nfe: int = 0
    """Network evaluations so far (filled in by run_solver)."""


@dataclass
class SolverInfo:
    """Summary of one run (for the provenance and benchmarks)."""

    solver: str
    steps: int
    guidance: float
    options: dict[str, Any]
    nfe: int
    seconds: float
    discrepancy: list[float]
    """Per batch element ``||A x - y||^2_{1/v} / dof``: about 1 when the sample fits the data to
    the noise level (Morozov), much less when it fits the noise."""
    adaptation_losses: list[float] = dataclasses.field(default_factory=list)
    """The test-time adaptation's loss per iteration (empty without ``adapt_iters``)."""


@dataclass
class Solver:
    """A registered posterior solver (see the module docstring for ``run``'s signature)."""

    name: str
    run: Callable[..., torch.Tensor]
    options_type: type
    """A dataclass (subclass of CommonOptions) of this solver's options with defaults."""
    defaults: dict[str, dict[str, Any]]
    """Operator name (or '*') -> tuned defaults: 'steps', 'guidance' and option values."""
    description: str
    exact: bool = False
    """True when the samples follow the exact posterior as the step count grows."""
    guidance_meaning: str = ""
    """What ``--guidance`` sets for this solver (one phrase, for --help and provenance)."""
    auto_data_weight: bool = False
    """True when ``run`` carries out ``data_weight=auto`` itself (a proximal data step fitted to
    the noise level); any other solver is refused that option before it runs, so a plug-in
    that never looks at it cannot silently use weight 1."""

    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options_type)]

    def defaults_for(self, operator_name: str) -> dict[str, Any]:
        merged = dict(self.defaults.get(ANY_OPERATOR, {}))
        merged.update(self.defaults.get(operator_name, {}))
        return merged


def get_solver(name: str) -> Solver:
    """The solver registered as ``name`` (InputError listing the choices if unknown)."""
    solver = SOLVERS.get(name)
    if not isinstance(solver, Solver):
        raise InputError(f"solver plug-in '{name}' does not provide an invdiff Solver object.")
    return solver


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (NFE); forwards sigma_min/max/data."""

    def __init__(self, denoiser: Denoiser):
        self.inner = denoiser
        self.nfe = 0
        self.sigma_min = float(denoiser.sigma_min)
        self.sigma_max = float(denoiser.sigma_max)
        self.sigma_data = float(denoiser.sigma_data)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        self.nfe += 1
        return self.inner(x, sigma)


def operator_name(operator: Operator) -> str:
    """The registered name, looking through ScaledOperator wrappers."""
    while isinstance(operator, ScaledOperator):
        operator = operator.base
    return operator.name


# --- options -----------------------------------------------------------------------------
def _parse_value(solver: str, key: str, raw: Any, kind: Any) -> Any:
    text = str(raw).strip()
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a finite number"}[kind]
        raise InputError(f"option {key} of solver {solver} must be {what}, got '{raw}'.") from None
    return text


def check_ranges(solver_name: str, opts: Any) -> None:
    """InputError for the first option outside its interval in ``RANGES`` (merged over the class's bases)."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for cls in reversed(type(opts).__mro__):
        ranges.update(cls.__dict__.get("RANGES", {}))
    for name, (low, high) in ranges.items():
        value = getattr(opts, name)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else (
                f">= {low:g}" if low is not None else f"<= {high:g}")
            raise InputError(f"option {name} of solver {solver_name} must be {bounds}, got {value:g}.")


def parse_options(solver: Solver, options: dict[str, Any] | None, preset: dict[str, Any] | None = None) -> Any:
    """Build ``solver.options_type`` from preset values overridden by the user's ``options``.

    Values may be strings (from the command line) or numbers; unknown names raise InputError
    with one sentence listing the valid ones.
    """
    names = solver.option_names()
    hints = typing.get_type_hints(solver.options_type)
    values: dict[str, Any] = {}
    for source in (preset or {}, options or {}):
        for key, raw in source.items():
            if key not in names:
                raise InputError(
                    f"Unknown option '{key}' for solver {solver.name}; valid options: {', '.join(names)}."
                )
            values[key] = _parse_value(solver.name, key, raw, hints[key])
    opts = solver.options_type(**values)
    check_ranges(solver.name, opts)
    if isinstance(opts, CommonOptions):
        from invdiff.classical.methods import get_method

        if not opts.adapt_lr > 0:
            raise InputError(f"option adapt_lr of solver {solver.name} must be > 0, got {opts.adapt_lr:g}.")
        if 0 < opts.sigma_start <= opts.sigma_end:
            raise InputError(f"solver {solver.name}: sigma_end ({opts.sigma_end:g}) must be below sigma_start "
                             f"({opts.sigma_start:g}); the schedule runs from sigma_start down to sigma_end.")
        for field in ("init", "classical_method"):
            method = getattr(opts, field)
            if method != "direct":
                try:
                    get_method(method)
                except InputError as err:
                    raise InputError(f"option {field} of solver {solver.name}: {err}") from None
    return opts


def resolve_settings(
    solver: Solver,
    operator: Operator | str,
    steps: int | None,
    guidance: float | None,
    options: dict[str, Any] | None,
) -> tuple[int, float, Any]:
    """Fill steps, guidance and options from the solver's defaults for this operator (an
    operator or its registered name)."""
    preset = solver.defaults_for(operator if isinstance(operator, str) else operator_name(operator))
    steps = int(preset.get("steps", 100)) if steps is None else steps
    guidance = float(preset.get("guidance", 1.0)) if guidance is None else guidance
    if not (isinstance(steps, int) and steps >= 1):
        raise InputError(f"--steps must be a positive integer, got {steps!r}.")
    if not (math.isfinite(float(guidance)) and guidance >= 0):
        raise InputError(f"--guidance must be a finite number >= 0, got {guidance!r}.")
    preset_opts = {k: v for k, v in preset.items() if k not in ("steps", "guidance")}
    opts = parse_options(solver, options, preset_opts)
    if is_auto(getattr(opts, "data_weight", "1")):
        check_auto_data_weight(solver)
    return steps, float(guidance), opts


def resolved_settings(
    name: str, operator: str, steps: int | None, guidance: float | None, options: dict[str, Any] | None
) -> dict[str, Any]:
    """``{"steps", "guidance", "options"}`` that solver ``name`` runs with on operator kind
    ``operator`` (defaults filled in, every option named): what a result's provenance records
    and what a std calibration must match."""
    steps, guidance, opts = resolve_settings(get_solver(name), operator, steps, guidance, options)
    return {"steps": steps, "guidance": guidance, "options": dataclasses.asdict(opts)}


def option_defaults(name: str) -> dict[str, Any]:
    """Every option of solver ``name`` at its own default (its options dataclass), before any
    per-operator default: the value at which an option added later keeps the old behaviour."""
    fields = dataclasses.fields(get_solver(name).options_type)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def check_auto_data_weight(solver: Solver) -> None:
    """InputError unless ``solver`` carries out ``data_weight=auto`` (``Solver.auto_data_weight``)."""
    if not solver.auto_data_weight:
        able = [n for n in SOLVERS.names() if _carries_out_auto(n)]
        raise InputError(f"option data_weight=auto (discrepancy principle) needs a solver with a proximal data step "
                         f"({', '.join(able)}), not {solver.name}; give a number instead.")


def _carries_out_auto(name: str) -> bool:
    try:
        return bool(getattr(SOLVERS.get(name), "auto_data_weight", False))
    except Exception:  # a broken plug-in is reported when it is used, not here
        return False


# --- running -----------------------------------------------------------------------------
def check_result(solver_name: str, operator: Operator, x: torch.Tensor, y: torch.Tensor) -> None:
    """DivergenceError if x is not finite or its data residual exploded (one host sync)."""
    res = squared_abs(measured_residual(operator, x, y)).reshape(x.shape[0], -1).sum(1)
    scale = squared_abs(on_measured(operator, y)).reshape(y.shape[0], -1).sum(1).clamp(min=expected_misfit(operator, y))
    ratio = (res / scale.clamp(min=1e-30)).sqrt()
    bad = ~torch.isfinite(x).reshape(x.shape[0], -1).all(1) | ~(ratio <= DIVERGENCE_FACTOR)
    if bool(bad.any()):
        if not bool(torch.isfinite(x).all()):
            raise DivergenceError(
                f"solver {solver_name} diverged: the result contains NaN or Inf; lower --guidance or the step option, or raise --steps."
            )
        raise DivergenceError(
            f"solver {solver_name} diverged: the data residual is {float(ratio.max()):.3g} times the "
            f"measurement's norm; lower --guidance or the step option, or raise --steps."
        )


def run_solver_with_info(
    name: str,
    operator: Operator,
    y: torch.Tensor,
    denoiser: Denoiser,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    options: dict[str, str | float] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> tuple[torch.Tensor, SolverInfo]:
    """Like :func:`run_solver`, also returning a :class:`SolverInfo` (NFE, time, discrepancy)."""
    solver = get_solver(name)
    operator.check_measurement(y)
    steps, guidance, opts = resolve_settings(solver, operator, steps, guidance, options)
    start_time = time.perf_counter()
    adaptation = None
    if getattr(opts, "adapt_iters", 0) > 0:
        denoiser, adaptation = adapt(denoiser, operator, y, opts, generator)
    counter = CountingDenoiser(denoiser)
    counter.nfe = adaptation.iterations if adaptation is not None else 0

    def report(info: StepInfo) -> None:
        info.nfe = counter.nfe
        if info.denoised is not None and not bool(torch.isfinite(info.denoised).all()):
            raise DivergenceError(
                f"solver {name} diverged at step {info.step} of {info.total} (sigma {info.sigma:.3g}): the estimate "
                "contains NaN or Inf; lower --guidance or the step option, or raise --steps."
            )
        if callback is not None:
            callback(info)

    with torch.no_grad():
        x = solver.run(
            operator, y, counter, steps=steps, guidance=guidance, opts=opts, generator=generator, callback=report
        )
    check_result(name, operator, x, y)
    info = SolverInfo(
        solver=name,
        steps=steps,
        guidance=guidance,
        options=dataclasses.asdict(opts),
        nfe=counter.nfe,
        seconds=time.perf_counter() - start_time,
        discrepancy=[float(v) for v in discrepancy_ratio(operator, x, y).cpu()],
        adaptation_losses=adaptation.losses if adaptation is not None else [],
    )
    return x, info


def adapt(denoiser: Denoiser, operator: Operator, y: torch.Tensor, opts: CommonOptions, generator):
    """The prior fitted to this measurement (invdiff/solvers/adaptation.py) from the solver's
    ``init`` estimate over its noise range; returns ``(denoiser, AdaptationInfo)``."""
    from invdiff.solvers.adaptation import adapt_to_measurement, noise_range

    x_init = initial_estimate(operator, y, opts.init)
    return adapt_to_measurement(
        denoiser, operator, y, x_init, iterations=opts.adapt_iters, rank=opts.adapt_rank, lr=opts.adapt_lr,
        sigma_range=noise_range(denoiser, opts.sigma_start, opts.sigma_end), generator=generator,
    )


def run_solver(
    name: str,
    operator: Operator,
    y: torch.Tensor,
    denoiser: Denoiser,
    *,
    steps: int | None = None,
    guidance: float | None = None,
    options: dict[str, str | float] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
) -> torch.Tensor:
    """One posterior sample ``(B, C, H, W)`` per measurement in y ``(B, *measurement_shape)``.

    steps / guidance / options default to the solver's tuned values for ``operator.name``
    (``Solver.defaults``); options are strings or numbers (unknown name -> InputError). The
    result is checked: NaN/Inf or an exploding data residual raises DivergenceError. The NFE
    count reaches ``callback`` as ``StepInfo.nfe``; use :func:`run_solver_with_info` to get
    it (and the wall time and discrepancy) returned.
    """
    x, _ = run_solver_with_info(
        name, operator, y, denoiser, steps=steps, guidance=guidance, options=options,
        generator=generator, callback=callback,
    )
    return x


def report_step(
    callback: Callable[[StepInfo], None] | None, step: int, total: int, sigma: float, denoised: torch.Tensor | None
) -> None:
    """Call ``callback(StepInfo(...))`` when there is a callback (used by every solver)."""
    if callback is not None:
        callback(StepInfo(step=step, total=total, sigma=float(sigma), denoised=denoised))


def start(denoiser: Denoiser, operator: Operator, y: torch.Tensor, steps: int, opts: CommonOptions, generator):
    """Initial state and noise schedule ``(x, sigmas)`` of a reverse diffusion.

    Cold start: ``x = sigma_max * n`` with the Karras schedule from sigma_max down to
    sigma_min (or ``opts.sigma_end``), then 0. Warm start
    (``opts.sigma_start > 0``): ``x = x_init + sigma_start * n`` with the schedule from
    sigma_start, where x_init is the classical estimate named by ``opts.init``."""
    from invdiff.sampling.schedules import karras_sigmas

    top = float(denoiser.sigma_max)
    warm = float(opts.sigma_start) > 0
    if warm:
        top = min(float(opts.sigma_start), top)
    bottom = float(denoiser.sigma_min)
    if float(opts.sigma_end) > 0:
        bottom = min(max(float(opts.sigma_end), bottom), top)
    sigmas = karras_sigmas(steps, bottom, top).tolist()
    x = prior_noise(denoiser, operator, y, sigmas[0], generator)
    if warm:
        x = x + initial_estimate(operator, y, opts.init)
    return x, sigmas


def repeats_one_row(y: torch.Tensor) -> bool:
    """True when every row of y ``(B, ...)``, B > 1, is the first one (the K posterior samples
    of one slice): work that depends only on the measurement is then done once."""
    return y.shape[0] > 1 and bool((y == y[:1]).all())


#: the last iterative estimate: (operator, method, measurement, estimate); see initial_estimate
_last_estimate: tuple[Operator, str, torch.Tensor, torch.Tensor] | None = None


def initial_estimate(operator: Operator, y: torch.Tensor, init: str) -> torch.Tensor:
    """A classical reconstruction ``(B, C, H, W)`` for warm starts and model averaging (no
    gradients).

    Rows of y that all repeat one measurement (the K posterior samples of one slice) are
    reconstructed once and the result expanded. An iterative method's last result is kept, so
    asking again for the same operator object, method and measurement (the pipeline's
    ``classical_weight`` average after the solver's warm start) costs nothing."""
    global _last_estimate
    with torch.no_grad():
        if init == "direct":
            return operator.direct(y)
        repeated = repeats_one_row(y)
        one = y[:1] if repeated else y
        last = _last_estimate
        if last is not None and last[0] is operator and last[1] == init and last[2].shape == one.shape \
                and torch.equal(last[2], one):
            x = last[3]
        else:
            from invdiff.classical.methods import run_method

            x = run_method(init, operator, one)
            _last_estimate = (operator, init, one.clone(), x)
        return x.expand(y.shape[0], *x.shape[1:]).clone() if repeated else x.clone()


def prior_noise(denoiser: Denoiser, operator: Operator, y: torch.Tensor, sigma: float, generator) -> torch.Tensor:
    """The start of a reverse diffusion: ``sigma * n``, n ~ N(0, I) ``(B, C, H, W)``."""
    shape = (y.shape[0], *operator.image_shape)
    return sigma * torch.randn(shape, generator=generator, dtype=operator.dtype, device="cpu").to(operator.device)

