"""DiffPIR: diffusion plug-and-play by half-quadratic splitting (Zhu et al., CVPRW 2023, Alg. 1).

In VE form, for each level sigma_t of the schedule:

    x0hat = D(x_t, sigma_t)                                            (prior step)
    x0'   = argmin_x 0.5 ||A x - y||_W^2 + 0.5 rho_t ||x - x0hat||^2,  rho_t = lambda / sigma_t^2
            i.e. (A^H W A + rho_t I) x = A^H W y + rho_t x0hat         (data step, CG)
    eps   = (x_t - x0')/sigma_t
    x_t-1 = x0' + sigma_t-1 (sqrt(1 - zeta) eps + sqrt(zeta) z)        (re-noising)

W = 1/variance is the paper's 1/sigma_n^2, so rho_t matches its ``lambda sigma_n^2 / sigma_t^2``.
``--guidance`` sets lambda (larger: trust the prior more). NFE = steps. Not an exact sampler.
With ``data_weight=auto`` each data step instead takes the rho that puts its result at the
noise level, ``||A x0' - y||_W^2 = dof`` (Morozov's discrepancy principle; cg.py). The reported
posterior is averaged with the TV estimate by ``classical_weight`` (averaging.py). With
``tv_weight > 0`` the data step also carries a TV term (`_tv_data_step`; measured not to help,
BENCHMARKS.md "TV inside the data step").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from invdiff.errors import InputError
from invdiff.solvers.base import CommonOptions, Solver, report_step, start
from invdiff.solvers.cg import solve_data_proximal, solve_discrepancy_proximal
from invdiff.solvers.integrators import randn_like
from invdiff.solvers.likelihood import is_auto, measurement_dof, precision, resolve_data_weight


@dataclass
class DiffPIROptions(CommonOptions):
    RANGES = {"zeta": (0.0, 1.0), "cg_iters": (1, None), "tv_weight": (0.0, None), "tv_iters": (1, None)}

    zeta: float = 0.3
    """Fraction of fresh noise when re-noising (0: deterministic, 1: all fresh)."""
    cg_iters: int = 10
    """CG iterations of each data proximal step."""
    tv_weight: float = 0.0
    """> 0: the data step also carries a TV term, this fraction of the TV method's own weight
    (invdiff/classical/tv.py), solved by ``tv_iters`` Chambolle-Pock iterations instead of CG."""
    tv_iters: int = 30
    """Chambolle-Pock iterations of each data step when ``tv_weight > 0``."""


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: DiffPIROptions, generator, callback=None):
    """DiffPIR sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (see module docstring)."""
    weight = precision(operator, y, resolve_data_weight(opts.data_weight, operator, y))
    auto, dof = is_auto(opts.data_weight), measurement_dof(operator)
    zeta = opts.zeta
    tv_step = _tv_data_step(operator, y, opts) if opts.tv_weight > 0 else None
    x, sigmas = start(denoiser, operator, y, steps, opts, generator)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0hat = denoiser(x, sigma)
        if tv_step is not None:
            x0 = tv_step(x0hat, guidance / sigma**2)
        elif auto:
            x0 = solve_discrepancy_proximal(operator, y, weight, x0hat, guidance / sigma**2, opts.cg_iters, dof)
        else:
            x0 = solve_data_proximal(operator, y, weight, x0hat, guidance / sigma**2, opts.cg_iters)
        if sigma_next > 0:
            eps = (x - x0) / sigma
            x = x0 + sigma_next * (math.sqrt(1 - zeta) * eps + math.sqrt(zeta) * randn_like(x, generator))
        else:
            x = x0
        report_step(callback, i + 1, steps, sigma, x0)
    return x


def _tv_data_step(operator, y, opts: DiffPIROptions):
    """The map ``(x0hat, rho) -> argmin_x 0.5 ||A x - y||_W^2 + 0.5 rho ||x - x0hat||^2 + mu TV(x)``,
    with W = data_weight / variance and mu ``tv_weight`` times the TV method's weight, both in
    the classical data term's units (data_term.py: everything times the mean noise variance)."""
    from invdiff.classical.arguments import default_for
    from invdiff.classical.data_term import make_data_term
    from invdiff.classical.tv import DEFAULT_WEIGHT, DEFAULT_WEIGHTS, solve_tv

    if is_auto(opts.data_weight):
        raise InputError("option tv_weight needs a numeric data_weight, not 'auto'.")
    data = make_data_term(operator, y)
    data_weight = float(opts.data_weight)
    lam = opts.tv_weight * default_for(DEFAULT_WEIGHTS, operator, DEFAULT_WEIGHT) * data.image_norm_scale()
    nonnegative = operator.image_shape[0] == 1

    def step(x0hat, rho):
        return solve_tv(data, lam, opts.tv_iters, nonnegative=nonnegative, x0=x0hat,
                        anchor=x0hat, anchor_weight=rho * data.sigma**2 / data_weight)

    return step


SOLVER = Solver(
    name="diffpir",
    run=run,
    options_type=DiffPIROptions,
    # Tuned on held-out brain slices with the shipped prior (BENCHMARKS.md, "Posterior
    # reconstruction"): a warm start from TV, all-fresh re-noising (zeta = 1) and a schedule
    # that stops at the artefact level. 20 NFE per sample for CT and blur, where more steps
    # buy nothing; 100 for MRI, where 20 -> 50 -> 100 steps gave 20.26 -> 20.83 -> 21.20 dB
    # at 8x and 50 -> 100 only +0.1 dB at 4x with the earlier prior (BENCHMARKS.md, "MRI 8x,
    # the weakest row"; the whole-slice prior below).
    # classical_weight (model averaging with TV, invdiff/solvers/averaging.py) was chosen on
    # 4 slices of both image sets: it costs about 0.1 dB on slices like the training data,
    # gains 0.1-0.4 dB on other subjects and raises the 2-std coverage by about 10 points.
    # Retuned for the whole-slice prior of 2026-12-04 (3 slices per set, K = 4; BENCHMARKS.md,
    # "Retuning the default for the whole-slice prior"): MRI sigma_start 0.2 -> 0.5 gained
    # 1.1 dB at 8x on held-out slices (-0.07 on other subjects; 4x -0.27 / +0.01), CT
    # guidance 1 -> 0.5 gained 0.3 dB on other subjects at 30 and 60 views (held-out +-0.1).
    # With that prior, MRI 50 -> 100 steps (2026-12-05, same 3 slices) gained 0.39 dB at 8x on
    # held-out slices and 0.10 dB on other subjects, with better coverage, so MRI takes the 100
    # network evaluations per sample the reconstruction issue allows; CT 20 -> 50 steps gained
    # nothing (held-out 28.94 -> 28.94, other 29.86 -> 29.76 dB at 30 views).
    defaults={
        "*": {"steps": 100, "guidance": 1.0},
        "radon": {"steps": 20, "guidance": 0.5, "zeta": 1.0, "sigma_start": 0.5, "sigma_end": 0.02, "init": "tv",
                  "classical_weight": 0.3},
        "mri": {"steps": 100, "guidance": 1.0, "zeta": 1.0, "sigma_start": 0.5, "sigma_end": 0.01, "init": "tv",
                "classical_weight": 0.3},
        "blur": {"steps": 20, "guidance": 1.0, "zeta": 1.0, "sigma_start": 0.3, "sigma_end": 0.02, "init": "direct",
                 "classical_weight": 0.2},
    },
    description="DiffPIR (Zhu et al. 2023): half-quadratic splitting with a CG data proximal step.",
    exact=False,
    auto_data_weight=True,
    guidance_meaning="lambda, the prior-vs-data balance of the proximal step",
)
