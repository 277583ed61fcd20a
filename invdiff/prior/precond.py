"""Preconditioning: D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)).

Karras et al. 2022 (EDM), Table 1, with sigma_data the std of the (normalised) training data:

    kind  c_skip                          c_out                             c_in                      c_noise
    edm   sd^2 / (s^2 + sd^2)             s sd / sqrt(s^2 + sd^2)           1 / sqrt(s^2 + sd^2)      ln(s) / 4
    ve    1                               s                                 1                         ln(s / 2)
    vp    1                               -s                                1 / sqrt(s^2 + 1)         (M - 1) t(s)

The VP network predicts the noise (DDPM); its preconditioning maps it to the VE denoiser form
(EDM's ``VPPrecond``), so every sampler sees D(x, sigma) with x = x0 + sigma n.

Energy parametrisation (Salimans & Ho 2021, "Should EBMs model the energy or the score?"): the
network defines a scalar energy per sample E(x, sigma) = ||x - D_F(x, sigma)||^2 / (2 sigma^2),
with D_F the preconditioned output above; the score is -grad_x E, a conservative vector field
by construction, and D(x, sigma) = x + sigma^2 score = x - sigma^2 grad_x E. The gradient is
taken with autograd (create_graph when gradients are enabled, as in training and in posterior
solvers that differentiate D).
"""

from __future__ import annotations

import torch
from torch import nn

from invdiff.errors import InputError
from invdiff.prior.sde import VPSchedule

KINDS = ("edm", "ve", "vp")


class Precond(nn.Module):
    """Wrap a network F(x_in, c_noise, class_labels) into a denoiser D(x, sigma, class_labels).

    x ``(B, C, H, W)`` in normalised image units, sigma ``(B,)`` or a float; returns ``(B, C, H, W)``.
    """

    def __init__(self, net: nn.Module, kind: str = "edm", sigma_data: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, energy: bool = False):
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"preconditioning '{kind}' is not one of {', '.join(KINDS)}.")
        self.net = net
        self.kind = kind
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.energy = bool(energy)
        self.vp = VPSchedule()

    def coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise), each shaped like sigma (EDM Table 1)."""
        sd = self.sigma_data
        if self.kind == "edm":
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
            c_in = 1 / (sigma**2 + sd**2).sqrt()
            c_noise = sigma.log() / 4
        elif self.kind == "ve":
            c_skip = torch.ones_like(sigma)
            c_out = sigma
            c_in = torch.ones_like(sigma)
            c_noise = (0.5 * sigma).log()
        else:
            c_skip = torch.ones_like(sigma)
            c_out = -sigma
            c_in = 1 / (sigma**2 + 1).sqrt()
            c_noise = (self.vp.M - 1) * self.vp.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise

    def _direct(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in, c_noise = self.coefficients(s)
        f = self.net(c_in * x, c_noise.reshape(-1), class_labels)
        return c_skip * x + c_out * f.to(x.dtype)

    def energy_value(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """E(x, sigma) ``(B,)`` = ||x - D_F(x, sigma)||^2 / (2 sigma^2) (energy parametrisation)."""
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        resid = x - self._direct(x, sigma, class_labels)
        return (resid**2 / (2 * s**2)).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        sigma = sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])
        sigma = sigma.to(torch.float32)
        if not self.energy:
            return self._direct(x, sigma, class_labels)
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad():
            xi = x if x.requires_grad else x.detach().requires_grad_(True)
            e = self.energy_value(xi, sigma, class_labels)
            (grad,) = torch.autograd.grad(e.sum(), xi, create_graph=outer_grad)
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x - s**2 * grad
