"""Unconditional samplers over a decreasing sigma schedule, as plain functions (k-diffusion style).

All work in the VE parametrisation of invdiff/prior/denoiser.py: x = x0 + sigma n,
score = (D(x, sigma) - x) / sigma^2, and

- reverse SDE        dx = -2 sigma score dsigma + sqrt(2 sigma) dw        (Song et al. 2021, eq. 6, VE)
- probability flow   dx/dsigma = (x - D(x, sigma)) / sigma                 (Karras et al. 2022, eq. 4)

Common signature: ``sampler(denoiser, x, sigmas, *, generator=None, callback=None, ...) -> x``

- ``x`` ``(B, C, H, W)``: the start, ``sigmas[0] * N(0, I)`` (see ``initial_noise``).
- ``sigmas``: 1D, decreasing, ending with 0 (invdiff/sampling/schedules.py).
- ``generator``: a CPU torch.Generator; noise is drawn on the CPU and moved to x.device, so a
  seed gives the same numbers on every device.
- ``callback(info)`` after every step with ``info`` = {"i", "x", "sigma", "sigma_next",
  "denoised", "nfe"}; ``nfe`` is the running count of denoiser evaluations, so the last
  call's ``info["nfe"]`` is the sampler's total cost.
- The step to sigma = 0 is the Tweedie denoising step x = D(x, sigma) for every sampler
  (Song et al. 2021's ``denoise=True``; the Euler step of the ODE to sigma = 0 is the same).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from invdiff.prior.denoiser import Denoiser
from invdiff.sampling.ode import dopri5

Callback = Callable[[dict[str, Any]], None]


def initial_noise(shape: tuple[int, ...], sigma_max: float, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The start ``x = sigma_max * n``, n ~ N(0, I) drawn on the CPU then moved to ``device``."""
    return (sigma_max * torch.randn(shape, generator=generator, dtype=dtype)).to(device)


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return denoiser(x, x.new_full((x.shape[0],), sigma))


def sigma_list(sigmas: torch.Tensor | list[float]) -> list[float]:
    """Check a schedule (>= 2 entries, positive, decreasing, last entry 0) and return floats."""
    values = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist()]
    if len(values) < 2 or values[-1] != 0.0:
        raise ValueError("a sigma schedule needs at least two entries and must end with 0.")
    if any(s <= 0 or not math.isfinite(s) for s in values[:-1]):
        raise ValueError("sigmas before the last must be finite and positive.")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError("sigmas must decrease strictly.")
    return values


def _report(callback: Callback | None, i: int, x: torch.Tensor, sigma: float, sigma_next: float,
            denoised: torch.Tensor, nfe: int) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised, "nfe": nfe})


def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                          generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler-Maruyama on the VE reverse SDE with sigma as time (Song et al. 2021, eq. 6):
    x' = x + 2 sigma (sigma - sigma') score + sqrt(2 sigma (sigma - sigma')) z. One NFE per step."""
    s = sigma_list(sigmas)
    nfe = 0
    for i, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        denoised = _denoise(denoiser, x, sigma)
        nfe += 1
        if sigma_next == 0.0:
            x = denoised
        else:
            dvar = 2 * sigma * (sigma - sigma_next)
            x = x + (dvar / sigma**2) * (denoised - x) + math.sqrt(dvar) * _noise(x, generator)
        _report(callback, i, x, sigma, sigma_next, denoised, nfe)
    return x


def sample_pc(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              snr: float = 0.16, corrector_steps: int = 1) -> torch.Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 2 with Alg. 4, VE SDE).

    At each sigma: ``corrector_steps`` Langevin steps x += eps score + sqrt(2 eps) z with
    eps = 2 (snr ||z|| / ||score||)^2 (norms averaged over the batch, as in the reference
    code), then the reverse-diffusion predictor
    x' = x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z.
    NFE per step: corrector_steps + 1.
    """
    if snr <= 0 or corrector_steps < 0:
        raise ValueError("snr must be positive and corrector_steps non-negative.")
    s = sigma_list(sigmas)
    nfe = 0
    for i, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        for _ in range(corrector_steps):
            grad = (_denoise(denoiser, x, sigma) - x) / sigma**2
            nfe += 1
            z = _noise(x, generator)
            grad_norm = grad.flatten(1).norm(dim=1).mean()
            noise_norm = z.flatten(1).norm(dim=1).mean()
            eps = 2 * (snr * noise_norm / grad_norm.clamp_min(1e-30)) ** 2
            x = x + eps * grad + (2 * eps).sqrt() * z
        denoised = _denoise(denoiser, x, sigma)
        nfe += 1
        if sigma_next == 0.0:
            x = denoised
        else:
            dvar = sigma**2 - sigma_next**2
            x = x + (dvar / sigma**2) * (denoised - x) + math.sqrt(dvar) * _noise(x, generator)
        _report(callback, i, x, sigma, sigma_next, denoised, nfe)
    return x


def sample_heun(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                churn: float = 0.0, churn_tmin: float = 0.0, churn_tmax: float = math.inf,
                churn_noise: float = 1.0) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1; with
    ``churn`` > 0, Alg. 2: sigma_hat = sigma (1 + gamma), gamma = min(churn / N, sqrt 2 - 1)
    for sigma in [churn_tmin, churn_tmax], fresh noise of std churn_noise sqrt(sigma_hat^2 - sigma^2)).
    NFE: 2 per step, 1 for the last (Euler to sigma = 0)."""
    s = sigma_list(sigmas)
    n = len(s) - 1
    nfe = 0
    for i, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        gamma = min(churn / n, math.sqrt(2) - 1) if churn > 0 and churn_tmin <= sigma <= churn_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + churn_noise * math.sqrt(sigma_hat**2 - sigma**2) * _noise(x, generator)
        denoised = _denoise(denoiser, x, sigma_hat)
        nfe += 1
        d = (x - denoised) / sigma_hat
        x_next = x + (sigma_next - sigma_hat) * d
        if sigma_next != 0.0:
            d_next = (x_next - _denoise(denoiser, x_next, sigma_next)) / sigma_next
            nfe += 1
            x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        x = x_next
        _report(callback, i, x, sigma, sigma_next, denoised, nfe)
    return x


def sample_ddim(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) in sigma form:
    x' = D + sqrt(sigma'^2 - c^2) (x - D) / sigma + c z, c = eta sigma' sqrt(1 - sigma'^2 / sigma^2)
    (their sigma_t(eta) divided by sqrt(alpha_{t-1})). eta = 0: deterministic, the Euler step of
    the probability-flow ODE; eta = 1: ancestral DDPM sampling. One NFE per step."""
    if eta < 0:
        raise ValueError("eta must be non-negative.")
    s = sigma_list(sigmas)
    nfe = 0
    for i, (sigma, sigma_next) in enumerate(zip(s, s[1:])):
        denoised = _denoise(denoiser, x, sigma)
        nfe += 1
        c = min(sigma_next, eta * sigma_next * math.sqrt(1 - sigma_next**2 / sigma**2))
        x = denoised + math.sqrt(sigma_next**2 - c**2) * (x - denoised) / sigma
        if c > 0:
            x = x + c * _noise(x, generator)
        _report(callback, i, x, sigma, sigma_next, denoised, nfe)
    return x


def sample_ode_adaptive(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """The probability-flow ODE dx/dsigma = (x - D) / sigma integrated by adaptive dopri5
    (RK45; Song et al. 2021, Sec. 4.3) from sigmas[0] to the smallest positive sigma, then the
    denoising step x = D(x, sigma_min). Only the two ends of ``sigmas`` are used; the step
    sizes follow from rtol/atol. ``generator`` is unused (deterministic). The callback's
    "i" counts accepted steps."""
    del generator  # deterministic; accepted for the common signature
    s = sigma_list(sigmas)
    sigma_max, sigma_min = s[0], s[-2]
    steps = [0]

    def velocity(sigma: float, y: torch.Tensor) -> torch.Tensor:
        return (y - _denoise(denoiser, y, sigma)) / sigma

    def on_step(sigma: float, y: torch.Tensor, nfe: int) -> None:
        if callback is not None:
            callback({"i": steps[0], "x": y, "sigma": sigma, "sigma_next": sigma, "denoised": None, "nfe": nfe})
        steps[0] += 1

    x, nfe = dopri5(velocity, x, sigma_max, sigma_min, rtol=rtol, atol=atol, on_step=on_step)
    denoised = _denoise(denoiser, x, sigma_min)
    _report(callback, steps[0], denoised, sigma_min, 0.0, denoised, nfe + 1)
    return denoised


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "em": sample_euler_maruyama,
    "pc": sample_pc,
    "heun": sample_heun,
    "ode": sample_ode_adaptive,
    "ddim": sample_ddim,
}
"""Name -> sampler, exactly the choices of ``invdiff sample --sampler``."""
