"""Denoising diffusion null-space model (DDNM and DDNM+; Wang, Yu & Zhang, ICLR 2023).

Range-null space decomposition of the denoised estimate (eq. 13):

    x0hat = D(x_t, sigma_t)
    x0'   = x0hat - lambda_t A^+ (A x0hat - y)        (keeps the null-space part of x0hat)
    x_t-1 = x0' + sigma_down eps + sqrt(max(sigma_up^2 - (lambda_t s_y)^2, 0)) z    (DDIM, eta)

A^+ is applied by CG on the weighted normal equations from zero (cg.py ``pseudo_inverse``),
exact for any linear A as cg_iters grows, and the plain projection for orthogonal A (masked
Fourier sampling). DDNM+ for noisy data (eq. 17-19): the correction carries measurement noise of
std ``s_y = rms(A^+ e)``, e ~ N(0, v(y)) (measured once per run through the same CG
pseudo-inverse), into the image, so ``lambda_t = guidance * min(1,
sigma_t-1 / s_y)`` and the fresh noise is reduced by what the correction adds. Data whose s_y
is below the prior's sigma_min give lambda_t = guidance (plain DDNM). NFE = steps. Not an exact sampler.

Limitation: the null-space step assumes A A^H is (close to) a projection, as for single-coil
masked Fourier sampling or inpainting. For ill-conditioned operators (multi-coil SENSE with
weak coil sensitivities, strong blur) the pseudo-inverse amplifies the noise; prefer dds or
diffpir there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invdiff.solvers.base import CommonOptions, Solver, report_step, start
from invdiff.solvers.cg import pseudo_inverse
from invdiff.solvers.integrators import ancestral_sigmas, measurement_noise, randn_like
from invdiff.solvers.likelihood import precision, resolve_data_weight


@dataclass
class DDNMOptions(CommonOptions):
    RANGES = {"eta": (0.0, 1.0), "cg_iters": (1, None)}

    eta: float = 0.85
    """DDIM stochasticity (0: deterministic, 1: ancestral); the paper uses 0.85."""
    cg_iters: int = 10
    """CG iterations of each pseudo-inverse."""


def _carried_noise_std(operator, y, weight, cg_iters) -> float:
    """RMS of ``A^+ e`` for a noise draw e ~ N(0, W^-1) shaped like y: the noise that the
    correction carries into the image, measured through the same truncated CG pseudo-inverse
    (fixed seed, one host synchronisation per run)."""
    gen = torch.Generator(device="cpu").manual_seed(4321)
    noise = measurement_noise(y, weight, gen)
    return float(pseudo_inverse(operator, noise, weight, cg_iters).pow(2).mean().sqrt())


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: DDNMOptions, generator, callback=None):
    """DDNM(+) sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (see module docstring)."""
    data_weight = resolve_data_weight(opts.data_weight, operator, y)
    weight = precision(operator, y, data_weight)
    s_y = _carried_noise_std(operator, y, weight, opts.cg_iters)
    x, sigmas = start(denoiser, operator, y, steps, opts, generator)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0hat = denoiser(x, sigma)
        lam = guidance if s_y <= denoiser.sigma_min else guidance * min(1.0, sigma_next / s_y)
        x0 = x0hat
        if lam > 0:
            x0 = x0hat - lam * pseudo_inverse(operator, operator.forward(x0hat) - y, weight, opts.cg_iters)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, opts.eta)
        carried = (lam * s_y) ** 2
        fresh = math.sqrt(max(sigma_up**2 - carried, 0.0))
        if carried > sigma_up**2:  # the correction's noise exceeds the stochastic part
            sigma_down = math.sqrt(max(sigma_next**2 - carried, 0.0))
        x = x0 + sigma_down * (x - x0hat) / sigma
        if fresh > 0:
            x = x + fresh * randn_like(x, generator)
        report_step(callback, i + 1, steps, sigma, x0)
    return x


SOLVER = Solver(
    name="ddnm",
    run=run,
    options_type=DDNMOptions,
    defaults={"*": {"steps": 100, "guidance": 1.0}},
    description="DDNM / DDNM+ (Wang et al. 2023): null-space projection with a CG pseudo-inverse.",
    exact=False,
    guidance_meaning="the scale of the range-space correction (1: full projection)",
)
