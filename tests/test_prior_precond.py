"""Preconditioning (EDM Table 1), the VP/VE wrappers and the energy parametrisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from invdiff.prior.precond import Precond
from invdiff.prior.sde import VPSchedule


class FixedOutput(nn.Module):
    """F(x_in, c_noise) = a stored tensor; records its inputs."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out
        self.seen = None

    def forward(self, x_in, c_noise, class_labels=None):
        self.seen = (x_in, c_noise)
        return self.out


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x_in, c_noise, class_labels=None):
        return self.b(torch.tanh(self.a(x_in) + c_noise.view(-1, 1, 1, 1)))


def test_edm_coefficients_give_unit_variance_input_and_target():
    sd = 0.5
    pre = Precond(FixedOutput(torch.zeros(1)), "edm", sigma_data=sd)
    sigma = torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = pre.coefficients(sigma)
    torch.testing.assert_close(c_in**2 * (sigma**2 + sd**2), torch.ones_like(sigma))  # Var[c_in x] = 1
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2  # EDM eq. 138
    torch.testing.assert_close(target_var, torch.ones_like(sigma))
    torch.testing.assert_close(c_noise, torch.log(sigma) / 4)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_ve_and_vp_wrap_a_noise_predictor_into_the_ve_denoiser(kind):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 1, 8, 8, generator=gen)
    n = torch.randn(3, 1, 8, 8, generator=gen)
    sigma = torch.tensor([0.05, 1.0, 20.0])
    # the ideal network: VE predicts -n (D = x + sigma F), VP predicts the DDPM noise n (D = x - sigma F)
    pre = Precond(FixedOutput(-n if kind == "ve" else n), kind)
    x = x0 + sigma.view(-1, 1, 1, 1) * n
    torch.testing.assert_close(pre(x, sigma), x0, rtol=1e-5, atol=1e-4)
    if kind == "vp":  # the network sees the VP-scaled input x / sqrt(1 + sigma^2) and c_noise = 999 t(sigma)
        x_in, c_noise = pre.net.seen
        torch.testing.assert_close(x_in, x / (1 + sigma.view(-1, 1, 1, 1) ** 2).sqrt())
        t = VPSchedule().sigma_inv(sigma)
        torch.testing.assert_close(VPSchedule().sigma(t), sigma)
        torch.testing.assert_close(c_noise, 999 * t)


def test_vp_schedule_matches_the_sde_marginal():
    vp = VPSchedule()
    t = torch.tensor([1e-5, 0.3, 1.0], dtype=torch.float64)
    # alpha(t) = exp(-int beta) with beta(t) = beta_min + beta_d t; sigma_VE = sqrt(1 - alpha) / sqrt(alpha)
    alpha = torch.exp(-(vp.beta_min * t + 0.5 * vp.beta_d * t**2))
    torch.testing.assert_close(vp.sigma(t), ((1 - alpha) / alpha).sqrt())


def test_energy_denoiser_is_minus_sigma_squared_energy_gradient_and_conservative():
    pre = Precond(SmallConv(), "edm", energy=True).double()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.7], dtype=torch.float64)
    d = pre(x, sigma)
    # finite differences of E against D = x - sigma^2 grad E
    eps = 1e-6
    grad_fd = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros(x.numel(), dtype=torch.float64)
        e[i] = eps
        e = e.view_as(x)
        grad_fd.view(-1)[i] = (pre.energy_value(x + e, sigma) - pre.energy_value(x - e, sigma)).item() / (2 * eps)
    torch.testing.assert_close(d, x - 0.49 * grad_fd, rtol=1e-6, atol=1e-8)
    # the score's Jacobian is symmetric (a gradient field)
    jac = torch.autograd.functional.jacobian(lambda z: pre(z.view_as(x), sigma).flatten(), x.flatten())
    assert (jac - jac.T).abs().max() < 1e-8
    # the direct parametrisation is not conservative in general: the check can fail
    direct = Precond(SmallConv(), "edm").double()
    jd = torch.autograd.functional.jacobian(lambda z: direct(z.view_as(x), sigma).flatten(), x.flatten())
    assert (jd - jd.T).abs().max() > 1e-4


def test_gradients_flow_through_the_denoiser_and_float_sigma_is_accepted():
    for energy in (False, True):
        pre = Precond(SmallConv(), "edm", energy=energy)
        x = torch.randn(2, 1, 8, 8, requires_grad=True)
        out = pre(x, 0.5)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        assert g.abs().sum() > 0
        with torch.no_grad():
            assert not pre(x.detach(), 0.5).requires_grad
