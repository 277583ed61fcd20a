"""Exact likelihoods of a diffusion prior by the probability-flow ODE (Song et al. 2021, App. D).

With the flow dx/dsigma = f(x, sigma) = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4),
the instantaneous change of variables (Chen et al. 2018) gives

    log p(x; sigma_min) = log N(x(sigma_max); 0, sigma_max^2 I) + int_{sigma_min}^{sigma_max} div f(x(sigma), sigma) dsigma,

integrated from x(sigma_min) = x upwards with adaptive dopri5 (invdiff/sampling/ode.py). The
divergence is the Hutchinson estimate div f = E[v^T (df/dx) v] (Hutchinson 1989; Grathwohl
et al. 2018) with K probes v (Rademacher or Gaussian), each held fixed along the whole
trajectory and costing one vector-Jacobian product; K = 0 computes the exact trace with d
vector-Jacobian products (small images and tests only).

Units: nats for ``log_likelihood``; bits per dimension for ``bits_per_dim``.
"""

from __future__ import annotations

import math

import torch

from invdiff.prior.denoiser import Denoiser
from invdiff.sampling.ode import dopri5

PROBES = ("rademacher", "gaussian")


def _probes(shape: tuple[int, ...], kind: str, generator: torch.Generator | None, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn(shape, generator=generator, dtype=dtype)
    else:
        raise ValueError(f"probe must be one of {PROBES}, not {kind!r}.")
    return v.to(device)


def _divergence(f: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """Per-sample div_x f ``(N,)``: Hutchinson v^T J v, or the exact trace when probes is None."""
    if probes is not None:
        (vjp,) = torch.autograd.grad(f, x, grad_outputs=probes)
        return (vjp * probes).flatten(1).sum(1)
    f_flat = f.flatten(1)
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for j in range(f_flat.shape[1]):
        (g,) = torch.autograd.grad(f_flat[:, j].sum(), x, retain_graph=True)
        div = div + g.flatten(1)[:, j]
    return div


def log_likelihood(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    hutchinson: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x; sigma_min) in nats for x ``(B, C, H, W)`` in the prior's normalised units.

    Returns ``(logp (B,), stderr (B,))``: logp is the mean over ``hutchinson`` = K probe
    estimates and stderr their standard error std / sqrt(K) (NaN for K = 1; zero for K = 0,
    the exact trace, up to the ODE tolerance). sigma_min / sigma_max default to the
    denoiser's. Probes are drawn on the CPU from ``generator`` and moved to x.device. The K
    estimates share one ODE solve: the batch is repeated K times, each copy with its own
    probe, so memory grows with K * B.
    """
    if hutchinson < 0:
        raise ValueError("hutchinson (number of probes) must be >= 0.")
    sigma_min = float(denoiser.sigma_min if sigma_min is None else sigma_min)
    sigma_max = float(denoiser.sigma_max if sigma_max is None else sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError("need 0 < sigma_min < sigma_max.")
    batch, dim = x.shape[0], x[0].numel()
    copies = max(hutchinson, 1)
    xs = x.detach().repeat(copies, *([1] * (x.ndim - 1)))  # (K B, C, H, W), copy k = rows k B ... (k+1) B - 1
    probes = None if hutchinson == 0 else _probes(tuple(xs.shape), probe, generator, x.dtype, x.device)
    n_x = xs.numel()

    def rhs(sigma: float, state: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xt = state[:n_x].view_as(xs).detach().requires_grad_(True)
            f = (xt - denoiser(xt, xt.new_full((xt.shape[0],), sigma))) / sigma
            div = _divergence(f, xt, probes)
        return torch.cat([f.detach().flatten(), div.detach()])

    state0 = torch.cat([xs.flatten(), xs.new_zeros(xs.shape[0])])
    state1, _ = dopri5(rhs, state0, sigma_min, sigma_max, rtol=rtol, atol=atol)
    x_end = state1[:n_x].view_as(xs).flatten(1)
    delta = state1[n_x:]
    log_prior = -0.5 * dim * math.log(2 * math.pi * sigma_max**2) - x_end.pow(2).sum(1) / (2 * sigma_max**2)
    estimates = (log_prior + delta).view(copies, batch)
    logp = estimates.mean(0)
    if hutchinson == 0:
        stderr = torch.zeros_like(logp)
    elif copies == 1:
        stderr = torch.full_like(logp, float("nan"))
    else:
        stderr = estimates.std(0, unbiased=True) / math.sqrt(copies)
    return logp, stderr


def dequantise(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantisation of 8-bit data (Theis et al. 2016; Ho et al. 2019):
    y = (255 x + u) / 256 with u ~ U[0, 1)^d, for x = k / 255 in [0, 1] (k = 0..255 the pixel
    values), so y lies in the bin [k / 256, (k + 1) / 256). u is drawn on the CPU."""
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (torch.round(images * 255) + u) / 256


def nats_to_bits_per_dim(logp_y: torch.Tensor, dim: int) -> torch.Tensor:
    """bits/dim of 8-bit data from the density log p(y) (nats) of dequantised y in [0, 1)^d:
    log P(k) >= E_u log p(y) - d log 256 (bin volume 256^-d), so
    bpd = -(log p(y) - d log 256) / (d log 2) = 8 - log p(y) / (d log 2)."""
    return 8.0 - logp_y / (dim * math.log(2))


def bits_per_dim(
    denoiser: Denoiser,
    images: torch.Tensor,
    *,
    scale: float | torch.Tensor = 1.0,
    offset: float | torch.Tensor = 0.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    hutchinson: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bits per dimension ``(bpd (B,), stderr (B,))`` of 8-bit images ``(B, C, H, W)`` given as
    k / 255 in [0, 1].

    Convention (Ho et al. 2020; Song et al. 2021): one uniform dequantisation y = (255 x + u) / 256
    (``dequantise``, drawn first from ``generator``), the prior's normalisation z = scale y + offset
    (so log p(y) = log p(z) + d log |scale|; scale and offset are floats or per-image ``(B,)``
    tensors), log p(z) from ``log_likelihood`` at sigma_min, and
    bpd = 8 - log p(y) / (d ln 2) (``nats_to_bits_per_dim``). stderr is the Hutchinson standard
    error over the ``hutchinson`` probes (NaN for one probe), not the dequantisation noise.
    """
    batch, dim = images.shape[0], images[0].numel()
    scale = torch.as_tensor(scale, dtype=images.dtype, device=images.device).expand(batch)
    offset = torch.as_tensor(offset, dtype=images.dtype, device=images.device).expand(batch)
    if bool((scale == 0).any()):
        raise ValueError("scale must be non-zero.")
    y = dequantise(images, generator)
    z = scale.view(-1, *([1] * (images.ndim - 1))) * y + offset.view(-1, *([1] * (images.ndim - 1)))
    logp_z, stderr = log_likelihood(denoiser, z, sigma_min=sigma_min, sigma_max=sigma_max,
                                    hutchinson=hutchinson, probe=probe, generator=generator, rtol=rtol, atol=atol)
    logp_y = logp_z + dim * scale.abs().log()
    return nats_to_bits_per_dim(logp_y, dim), stderr / (dim * math.log(2))
