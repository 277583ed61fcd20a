"""Diffusion posterior sampling (DPS; Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, Alg. 1).

Each step of an ancestral VE sampler is followed by a likelihood step through the denoiser:

    x0hat = D(x, sigma_i)                          (Tweedie estimate of the clean image)
    x'    = x0hat + sigma_down eps + sigma_up z    (ancestral step, integrators.py)
    x     = x' - zeta / ||A|| * grad_x ||A x0hat(x) - y||_w

with the gradient taken by autograd through D, and the paper's normalised step
``zeta_i = zeta' / ||y - A x0hat||`` realised by differentiating the norm itself (as in the
authors' code). The norm is weighted by ``w = W / mean(W)`` (W = inverse noise variance, the
mean taken over the measured entries), which is the plain Euclidean norm for white Gaussian
noise and the weighted/Poisson likelihood of ``operator.noise.nll`` otherwise. Dividing by the
spectral norm ``||A||`` makes zeta free of the operator's scale. ``--guidance`` sets zeta (times
``data_weight``). DPS is not an exact sampler: it approximates p(y | x_t) by p(y | x0hat(x_t)).

NFE = steps; each evaluation also back-propagates through the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from invdiff.solvers.base import CommonOptions, Solver, report_step, start
from invdiff.solvers.integrators import ancestral_sigmas, ddim_step
from invdiff.solvers.likelihood import operator_norm, precision, resolve_data_weight, squared_abs


@dataclass
class DPSOptions(CommonOptions):
    RANGES = {"eta": (0.0, 1.0)}

    eta: float = 1.0
    """Ancestral noise of the sampler (1: DDPM-like as in the paper, 0: DDIM)."""


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: DPSOptions, generator, callback=None):
    """DPS sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (see module docstring)."""
    data_weight = resolve_data_weight(opts.data_weight, operator, y)
    weight = precision(operator, y)
    weight = weight / (weight.sum() / torch.count_nonzero(weight).clamp(min=1))  # mean 1 where measured
    step = guidance * data_weight / max(operator_norm(operator), 1e-30)
    x, sigmas = start(denoiser, operator, y, steps, opts, generator)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0hat = denoiser(xg, sigma)
            misfit = (squared_abs(operator.forward(x0hat) - y) * weight).reshape(x.shape[0], -1).sum(1)
            norm = misfit.clamp(min=1e-30).sqrt()
            (grad,) = torch.autograd.grad(norm.sum(), xg)
        x0hat = x0hat.detach()
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, opts.eta)
        x = ddim_step(x0hat, (x - x0hat) / sigma, sigma_down, sigma_up, generator) - step * grad
        report_step(callback, i + 1, steps, sigma, x0hat)
    return x


SOLVER = Solver(
    name="dps",
    run=run,
    options_type=DPSOptions,
    # zeta per operator: the best of a sweep over 1 to 64 on one held-out brain slice at 200 steps
    # (BENCHMARKS.md, "DPS guidance"); the paper's zeta = 1 (1000 steps) is 2.5 to 12 dB worse here.
    defaults={
        "*": {"steps": 200, "guidance": 1.0},
        "radon": {"steps": 200, "guidance": 4.0},
        "mri": {"steps": 200, "guidance": 3.0},
        "blur": {"steps": 200, "guidance": 3.0},
    },
    description="Diffusion posterior sampling (Chung et al. 2023): likelihood gradient through the denoiser.",
    exact=False,
    guidance_meaning="zeta, the normalised likelihood step",
)
