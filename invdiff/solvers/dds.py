"""Decomposed diffusion sampler (DDS; Chung, Lee & Ye, ICLR 2024, Alg. 1).

DDIM steps in which the denoised estimate is moved towards the data by a few conjugate-gradient
iterations before re-noising; the Krylov subspace of few CG steps keeps the update on the
tangent of the clean-image manifold, so few NFE (~50) suffice:

    x0hat = D(x_t, sigma_t)
    x0'   = CG_M[(A^H W A + gamma/sigma_t^2 I) x = A^H W y + gamma/sigma_t^2 x0hat], started at x0hat
    x_t-1 = x0' + sigma_down eps(x_t) + sigma_up z,    eps = (x_t - x0hat)/sigma_t  (DDIM, eta)

gamma = 0 is the paper's noiseless data step (plain CG on the normal equations, regularised
only by early stopping after M = cg_iters steps); gamma > 0 adds the ridge term of its noisy
variant, scaled like DiffPIR's so that gamma = 1 (the default) weighs the data by the noise
level (plain early stopping over-fitted the noise of ill-conditioned blur in the Gaussian test). NFE = steps. Not an exact sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

from invdiff.solvers.base import CommonOptions, Solver, report_step, start
from invdiff.solvers.cg import solve_data_proximal, solve_discrepancy_proximal
from invdiff.solvers.integrators import ancestral_sigmas, ddim_step
from invdiff.solvers.likelihood import is_auto, measurement_dof, precision, resolve_data_weight


@dataclass
class DDSOptions(CommonOptions):
    RANGES = {"eta": (0.0, 1.0), "cg_iters": (1, None)}

    eta: float = 0.85
    """DDIM stochasticity (0: deterministic, 1: ancestral); the paper uses 0.85."""
    cg_iters: int = 5
    """CG iterations M of each data step."""


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: DDSOptions, generator, callback=None):
    """DDS sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (see module docstring)."""
    weight = precision(operator, y, resolve_data_weight(opts.data_weight, operator, y))
    auto, dof = is_auto(opts.data_weight), measurement_dof(operator)
    x, sigmas = start(denoiser, operator, y, steps, opts, generator)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0hat = denoiser(x, sigma)
        if auto:
            x0 = solve_discrepancy_proximal(operator, y, weight, x0hat, guidance / sigma**2, opts.cg_iters, dof)
        else:
            x0 = solve_data_proximal(operator, y, weight, x0hat, guidance / sigma**2, opts.cg_iters)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, opts.eta)
        x = ddim_step(x0, (x - x0hat) / sigma, sigma_down, sigma_up, generator)
        report_step(callback, i + 1, steps, sigma, x0)
    return x


SOLVER = Solver(
    name="dds",
    run=run,
    options_type=DDSOptions,
    defaults={"*": {"steps": 50, "guidance": 1.0}},
    description="Decomposed diffusion sampler (Chung et al. 2024): DDIM with a few CG data steps; few NFE.",
    exact=False,
    auto_data_weight=True,
    guidance_meaning="gamma, the ridge weight of the CG data step (0: plain early-stopped CG)",
)
