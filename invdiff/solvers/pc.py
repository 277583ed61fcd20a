"""Predictor-corrector with data consistency (Song, Shen, Xing & Ermon, ICLR 2022, Alg. 1-2).

VE reverse-diffusion predictor and Langevin corrector (Song et al. 2021, Alg. 2), each
followed by a data-consistency step on a measurement noised to the current level
(Song et al. 2022, eq. 7-9): with ``y_t = y + sigma_t A z``,

    u  = argmin_u 0.5 ||A u - y_t||_W^2 + 0.5 / sigma_t^2 ||u - x||^2    (CG, cg.py)
    x <- x + lambda (u - x)

W is the inverse noise variance, so the step is weighted by the noise level: for noiseless
masked Fourier data and lambda = 1 it replaces the sampled k-space with y_t, as in the paper;
for noisy data the prior keeps the components the data cannot pin down. ``--guidance`` sets
lambda in [0, 1]. The last step denoises and projects onto the data without added noise.

Corrector step size: ``eps = 2 (snr ||z|| / ||score||)^2`` per batch element (Song et al.
2021, Alg. 4). NFE = steps * (1 + corrector_steps) - corrector_steps. Not an exact sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invdiff.solvers.base import CommonOptions, Solver, report_step, start
from invdiff.solvers.cg import solve_data_proximal
from invdiff.solvers.integrators import randn_like
from invdiff.solvers.likelihood import precision, resolve_data_weight


@dataclass
class PCOptions(CommonOptions):
    RANGES = {"snr": (0.0, None), "corrector_steps": (0, None), "cg_iters": (1, None)}

    snr: float = 0.16
    """Signal-to-noise ratio of the Langevin corrector (Song et al. 2021 use 0.16 for VE)."""
    corrector_steps: int = 1
    """Langevin corrector steps after each predictor step."""
    cg_iters: int = 5
    """CG iterations of each data-consistency step."""


def _consistency(operator, y, weight, x, sigma, lam, cg_iters, generator):
    y_t = y + sigma * operator.forward(randn_like(x, generator)) if sigma > 0 else y
    rho = 1.0 / max(sigma, 1e-12) ** 2
    u = solve_data_proximal(operator, y_t, weight, x, rho, cg_iters)
    return x + lam * (u - x)


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: PCOptions, generator, callback=None):
    """PC sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (see module docstring)."""
    weight = precision(operator, y, resolve_data_weight(opts.data_weight, operator, y))
    x, sigmas = start(denoiser, operator, y, steps, opts, generator)
    b = x.shape[0]
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0hat = denoiser(x, sigma)
        if sigma_next == 0:
            x = _consistency(operator, y, weight, x0hat, 0.0, guidance, opts.cg_iters, generator)
            report_step(callback, i + 1, steps, sigma, x)
            break
        # predictor: reverse diffusion from sigma to sigma_next
        var = sigma**2 - sigma_next**2
        x = x + var * (x0hat - x) / sigma**2 + var**0.5 * randn_like(x, generator)
        x = _consistency(operator, y, weight, x, sigma_next, guidance, opts.cg_iters, generator)
        for _ in range(opts.corrector_steps):
            score = (denoiser(x, sigma_next) - x) / sigma_next**2
            z = randn_like(x, generator)
            ratio = z.reshape(b, -1).norm(dim=1) / score.reshape(b, -1).norm(dim=1).clamp(min=1e-30)
            eps = (2 * (opts.snr * ratio) ** 2).view(b, *([1] * (x.ndim - 1)))
            x = x + eps * score + torch.sqrt(2 * eps) * z
            x = _consistency(operator, y, weight, x, sigma_next, guidance, opts.cg_iters, generator)
        report_step(callback, i + 1, steps, sigma, x0hat)
    return x


SOLVER = Solver(
    name="pc",
    run=run,
    options_type=PCOptions,
    defaults={"*": {"steps": 100, "guidance": 1.0}},
    description="Predictor-corrector with data consistency (Song et al. 2022).",
    exact=False,
    guidance_meaning="lambda, the data-consistency mixing weight in [0, 1]",
)
