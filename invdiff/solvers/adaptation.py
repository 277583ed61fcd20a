"""Test-time adaptation of the prior to the measurement (Barbano et al. 2023, "Steerable
conditional diffusion for out-of-distribution adaptation in medical image reconstruction").

A prior trained on a few volumes pulls every image towards their anatomy and contrast. Before
sampling, low-rank adapters (invdiff/prior/lora.py) of a copy of the network are fitted to the
measurement y itself, so that denoising a noisy version of the classical estimate x_c gives
images that explain y:

    min_Delta  E_{sigma, n} ||A D_{theta + Delta}(x_c + sigma n, sigma) - y||^2_{1/v} / dof,

sigma log-uniform over the solver's noise range (sigma_end .. sigma_start, or the prior's
sigma_min .. sigma_data for a cold start), n ~ N(0, I), ``v`` the noise model's variance and
``dof`` the real degrees of freedom of one measurement, so the loss is the discrepancy ratio of
Morozov's principle (1 = fits to the noise level). Adam with step ``lr``; the adapters start at
zero, so ``iterations = 0`` is the trained prior exactly. The solver then samples with the
adapted denoiser; each iteration is one network evaluation (plus its backward pass) and is
counted in the run's NFE. Measurements that repeat one row (the K samples of one slice) are
fitted once, on that row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from invdiff.errors import InputError
from invdiff.prior.lora import adapted_copy
from invdiff.solvers.base import repeats_one_row
from invdiff.solvers.likelihood import discrepancy_ratio


@dataclass
class AdaptationInfo:
    losses: list[float] = field(default_factory=list)
    """Discrepancy ratio of each iteration (the minimised loss; noisy: one sigma per iteration)."""

    @property
    def iterations(self) -> int:
        """Adapter updates made (one network evaluation and backward pass each)."""
        return len(self.losses)


def noise_range(denoiser, sigma_start: float, sigma_end: float) -> tuple[float, float]:
    """``(low, high)`` noise levels the adaptation trains over, in prior units."""
    high = float(sigma_start) if sigma_start > 0 else float(denoiser.sigma_data)
    high = min(high, float(denoiser.sigma_max))
    low = float(sigma_end) if sigma_end > 0 else float(denoiser.sigma_min)
    return min(max(low, float(denoiser.sigma_min)), high), high


def adapt_to_measurement(
    denoiser,
    operator,
    y: torch.Tensor,
    x_init: torch.Tensor,
    *,
    iterations: int,
    rank: int,
    lr: float,
    sigma_range: tuple[float, float],
    generator: torch.Generator | None,
):
    """The adapted denoiser and an :class:`AdaptationInfo` (see module docstring).

    y ``(B, *measurement_shape)``, x_init ``(B, C, H, W)`` the classical estimate in prior units.
    InputError when the denoiser has no network to adapt."""
    adapted, params = adapted_copy(denoiser, rank)
    if not params:
        raise InputError("test-time adaptation (adapt_iters > 0) needs a trained network prior; this prior has "
                         "no convolutions to adapt.")
    if repeats_one_row(y):
        y, x_init = y[:1], x_init[:1]
    x_init = x_init.detach()
    low, high = sigma_range
    optimiser = torch.optim.Adam(params, lr=lr)
    losses = []
    with torch.enable_grad():
        for _ in range(iterations):
            u = float(torch.rand((), generator=generator))
            sigma = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            noise = torch.randn(x_init.shape, generator=generator, dtype=x_init.dtype, device="cpu")
            x_in = x_init + sigma * noise.to(x_init.device)
            loss = discrepancy_ratio(operator, adapted(x_in, sigma), y).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            losses.append(loss.detach())
    for p in params:
        p.requires_grad_(False)
    return adapted, AdaptationInfo([float(v) for v in torch.stack(losses).cpu()] if losses else [])
