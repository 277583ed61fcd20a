"""Training noise-level distributions p(sigma) and loss weights lambda(sigma).

All in the VE sigma parametrisation x = x0 + sigma n (EDM eq. 1-3). Sources:
- EDM (Karras et al. 2022, Table 1 and eq. 8): ln sigma ~ N(P_mean, P_std^2), default
  P_mean = -1.2, P_std = 1.2; lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
- VE SDE (Song et al. 2021, eq. 30; NCSN++): sigma log-uniform in [sigma_min, sigma_max];
  lambda(sigma) = 1 / sigma^2.
- VP SDE (Song et al. 2021, eq. 32; DDPM++): t ~ U(eps_t, 1),
  sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1); lambda(sigma) = 1 / sigma^2.
Each ``sample`` draws ``(n,)`` sigmas with a torch.Generator on the target device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from invdiff.errors import InputError


@dataclass(frozen=True)
class VPSchedule:
    """The VP SDE's beta(t) = beta_min + beta_d t (Song et al. 2021; EDM Table 1 defaults)."""

    beta_d: float = 19.9
    beta_min: float = 0.1
    eps_t: float = 1e-5
    M: int = 1000  # number of discrete DDPM steps, for c_noise = (M - 1) t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d."""
        return ((self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt() - self.beta_min) / self.beta_d

    @property
    def sigma_min(self) -> float:
        return float(self.sigma(torch.tensor(self.eps_t, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(torch.tensor(1.0, dtype=torch.float64)))


@dataclass(frozen=True)
class NoiseDistribution:
    """p(sigma) and lambda(sigma) for ``kind`` in edm, ve, vp."""

    kind: str = "edm"
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if self.kind not in ("edm", "ve", "vp"):
            raise InputError(f"--sde '{self.kind}' is not one of edm, ve, vp.")
        if not 0 < self.sigma_min < self.sigma_max:
            raise InputError("--sigma-min must be positive and smaller than --sigma-max.")

    def sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """n noise levels ``(n,)`` float32 on ``device``."""
        u = torch.rand(n, generator=generator, device=device)
        if self.kind == "edm":
            z = torch.randn(n, generator=generator, device=device)
            return (z * self.p_std + self.p_mean).exp()
        if self.kind == "ve":
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            return torch.exp(lo + u * (hi - lo))
        vp = VPSchedule()
        t = vp.eps_t + u * (1 - vp.eps_t)
        return vp.sigma(t)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) ``(n,)``: makes the loss at every sigma O(1) at initialisation."""
        if self.kind == "edm":
            return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        return 1.0 / sigma**2

    def quantiles(self, n: int) -> torch.Tensor:
        """n fixed, representative sigmas (mid-quantiles of p(sigma)) for a deterministic validation loss."""
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        if self.kind == "edm":
            z = math.sqrt(2) * torch.erfinv(2 * q - 1)
            return (z * self.p_std + self.p_mean).exp().float()
        if self.kind == "ve":
            lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
            return torch.exp(lo + q * (hi - lo)).float()
        vp = VPSchedule()
        return vp.sigma(vp.eps_t + q * (1 - vp.eps_t)).float()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sigma_data": self.sigma_data, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "p_mean": self.p_mean, "p_std": self.p_std}


def default_sigma_range(kind: str) -> tuple[float, float]:
    """The sigma range a prior of this kind is trained/sampled on (EDM Table 1)."""
    if kind == "vp":
        vp = VPSchedule()
        return vp.sigma_min, vp.sigma_max
    if kind == "ve":
        return 0.02, 100.0
    return 0.002, 80.0
