"""Asymptotically exact posterior sampling: annealed split Gibbs with an exact coupling.

Why this scheme (and not Langevin dynamics on x): ULA at the final noise level needs a step
below 1/L, where L grows like 1/sigma_min^2 (the prior) plus ||A||^2 / noise variance (the
data), so it needs a number of network calls that explodes for sharp priors or accurate data.
Split Gibbs sampling (Vono, Dobigeon & Chainais 2019; with a diffusion prior: Coeurdoux et al.
2023, Xu & Chi 2024 "DPnP") never takes a step against either stiffness: it alternates two
exact conditional draws of the augmented target

    pi(x, z) ~ p(x) N(z; x, rho^2 I) N(y; A z, Sigma - c A A^H),     0 <= c <= rho^2,

whose x-marginal is p(x) N(y; A x, Sigma + (rho^2 - c) A A^H) (Sigma = W^-1, the noise).

* data step, z | x: in the chain ``w = x + tau xi``, ``z = w + sqrt(c) xi'``, ``y = A z + e'``
  (tau^2 = rho^2 - c), draw w | x, y by perturb-and-optimise (Papandreou & Yuille 2010):
  ``w = argmin 0.5||A w - (y + Sigma^1/2 n)||_W^2 + ||w - (x + tau n')||^2 / (2 tau^2)`` by CG;
  then z | w, y is Gaussian with mean ``w + c A^H W (y - A w)`` and covariance
  ``c (I - c A^H W A)``, drawn with a binomial series for the matrix square root (converges
  because c ||A^H W A|| <= 1/2).
* prior step, x | z: ``p(x) N(z; x, rho^2)`` is the posterior of a clean image given a noisy
  one at level rho, i.e. exactly what reverse diffusion started from z at sigma = rho samples
  (``inner_steps`` ancestral steps from rho down to sigma_min, then denoise).

With ``c = rho^2`` (possible once ``rho^2 <= rho_c^2 = 1 / (2 ||A||^2 max W)``) the target is the
EXACT posterior p(x | y); larger couplings trade bias for mixing, so rho is annealed
geometrically from rho_max to rho_min = max(rho_c, sigma_min) over the first ``anneal`` fraction
of the ``steps`` outer iterations (Xu & Chi 2024's annealing), and kept at rho_min after.
The samples converge to p(x | y) as steps and inner_steps grow (up to the prior's own
sigma_min floor for nearly noiseless data). ``--guidance`` tempers the likelihood (W is
multiplied by it); keep 1 for the exact posterior. NFE = steps * inner_steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invdiff.sampling.schedules import karras_sigmas
from invdiff.solvers.base import CommonOptions, Solver, report_step
from invdiff.solvers.cg import normal_matvec, solve_data_proximal
from invdiff.solvers.integrators import ancestral_sigmas, ddim_step, measurement_noise, randn_like
from invdiff.solvers.likelihood import operator_norm, precision, resolve_data_weight

_SAFETY = 0.5  # c * ||A^H W A|| <= _SAFETY keeps the square-root series fast and convergent


@dataclass
class LangevinOptions(CommonOptions):
    RANGES = {"inner_steps": (1, None), "inner_rho": (1e-3, None), "cg_iters": (1, None), "series_terms": (1, None),
              "rho_max": (0.0, None), "rho_min": (0.0, None), "anneal": (0.0, 1.0)}

    inner_steps: int = 8
    """Reverse-diffusion steps of each prior draw x | z (from rho to sigma_min)."""
    inner_rho: float = 1.0
    """Karras rho of the inner schedule (1: uniform in sigma, which converged fastest on the
    closed-form Gaussian test; 7: EDM's, denser at small sigma)."""
    cg_iters: int = 20
    """CG iterations of each perturb-and-optimise data draw."""
    series_terms: int = 12
    """Terms of the binomial series for (I - c A^H W A)^(1/2)."""
    rho_max: float = 0.0
    """Initial coupling; 0 picks 2 * sigma_data (at most sigma_max)."""
    rho_min: float = 0.0
    """Final coupling; 0 picks the exact coupling rho_c (at least sigma_min)."""
    anneal: float = 0.5
    """Fraction of the outer steps over which rho decreases from rho_max to rho_min."""


def coupling_schedule(steps: int, rho_max: float, rho_min: float, anneal: float) -> list[float]:
    """Geometric decrease from rho_max to rho_min over round(anneal * steps) steps, then flat."""
    n_anneal = min(steps, max(1, round(anneal * steps)))
    if n_anneal == 1:
        head = [rho_min]
    else:
        head = [rho_max * (rho_min / rho_max) ** (k / (n_anneal - 1)) for k in range(n_anneal)]
    return head + [rho_min] * (steps - n_anneal)


def _sqrt_series(apply_m, xi: torch.Tensor, terms: int) -> torch.Tensor:
    """(I - M)^(1/2) xi = sum_k binom(1/2, k) (-M)^k xi, for ||M|| <= 1/2."""
    out, term, coef = xi, xi, 1.0
    for k in range(1, terms + 1):
        term = apply_m(term)
        coef *= (k - 1.5) / k
        out = out + coef * term
    return out


def _data_draw(operator, y, weight, x, rho, rho_c, opts, generator):
    """One exact draw of z | x, y under pi (module docstring)."""
    c = min(rho**2, rho_c**2)
    tau2 = rho**2 - c
    w = x
    if tau2 > 0:
        y_pert = y + measurement_noise(y, weight, generator)
        x_pert = x + math.sqrt(tau2) * randn_like(x, generator)
        w = solve_data_proximal(operator, y_pert, weight, x_pert, 1.0 / tau2, opts.cg_iters)
    if c <= 0:
        return w
    mean = w + c * operator.adjoint(weight * (y - operator.forward(w)))
    apply_m = normal_matvec(operator, c * weight)
    return mean + math.sqrt(c) * _sqrt_series(apply_m, randn_like(x, generator), opts.series_terms)


def _prior_draw(denoiser, z, rho, inner_steps, inner_rho, generator):
    """Reverse diffusion from z at level rho to a clean image: a draw of p(x | x_rho = z)."""
    if rho > denoiser.sigma_min * (1 + 1e-6):
        sigmas = karras_sigmas(inner_steps, denoiser.sigma_min, rho, rho=inner_rho).tolist()
    else:
        sigmas = [rho, 0.0]
    x = z
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x0hat = denoiser(x, sigma)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, 1.0)
        x = ddim_step(x0hat, (x - x0hat) / sigma, sigma_down, sigma_up, generator)
    return x


def run(operator, y, denoiser, *, steps: int, guidance: float, opts: LangevinOptions, generator, callback=None):
    """Posterior sample ``(B, C, H, W)`` for y ``(B, *measurement_shape)`` (module docstring)."""
    data_weight = resolve_data_weight(opts.data_weight, operator, y) * guidance
    prior_only = data_weight <= 0
    weight = precision(operator, y, max(data_weight, 1e-30))
    lipschitz = operator_norm(operator) ** 2 * float(weight.max())
    rho_c = math.sqrt(_SAFETY / lipschitz) if lipschitz > 0 else denoiser.sigma_max
    rho_max = opts.rho_max if opts.rho_max > 0 else min(2.0 * denoiser.sigma_data, denoiser.sigma_max)
    rho_min = opts.rho_min if opts.rho_min > 0 else max(min(rho_c, rho_max), denoiser.sigma_min)
    rho_max = max(rho_max, rho_min)
    x = torch.zeros((y.shape[0], *operator.image_shape), dtype=operator.dtype, device=operator.device)
    for k, rho in enumerate(coupling_schedule(steps, rho_max, rho_min, opts.anneal)):
        if prior_only:  # guidance 0: the likelihood is switched off, z | x is N(x, rho^2)
            z = x + rho * randn_like(x, generator)
        else:
            z = _data_draw(operator, y, weight, x, rho, rho_c, opts, generator)
        x = _prior_draw(denoiser, z, rho, max(opts.inner_steps, 1), opts.inner_rho, generator)
        report_step(callback, k + 1, steps, rho, x)
    return x


SOLVER = Solver(
    name="langevin",
    run=run,
    options_type=LangevinOptions,
    defaults={"*": {"steps": 100, "guidance": 1.0}},
    description="Annealed split Gibbs with an exact coupling: samples the exact posterior as steps grow.",
    exact=True,
    guidance_meaning="likelihood temperature (1: the exact posterior)",
)
