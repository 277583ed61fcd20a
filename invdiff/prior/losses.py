"""Score-matching losses for D(x, sigma).

- Denoising score matching (Vincent 2011) in EDM's form (Karras et al. 2022, eq. 2 and 8):
  L = E_{sigma, x0, n} lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2, which equals, up to a
  constant, lambda(sigma) sigma^4 ||score(x) - grad log p(x | x0)||^2.
- Sliced score matching with variance reduction (Song et al. 2019, eq. 8, "SSM-VR") on the
  sigma-perturbed data: L = E sigma^2 [ v^T grad_x (v^T s(x)) + ||s(x)||^2 / 2 ], with
  s(x) = (D(x, sigma) - x) / sigma^2, x = x0 + sigma n, v ~ N(0, I). Its minimum is negative.

Both are normalised per pixel (mean over C H W) and averaged over the batch, so a data-parallel
run whose ranks each take an equal shard and average gradients matches one process.

Every loss is a callable ``loss(precond, x0, class_labels, generator) -> scalar``. The random
draws are separated (``draw`` / ``compute``) so the trainer can draw for the global batch and
give each rank its shard: a 2-process run then sees exactly the numbers one process sees.
x0 may be any ``(B, ...)`` tensor (images ``(B, C, H, W)`` or points ``(B, d, 1, 1)``).
"""

from __future__ import annotations

import torch

from invdiff.errors import InputError
from invdiff.prior.sde import NoiseDistribution


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


class DSMLoss:
    """Denoising score matching with noise levels from ``noise`` and its weight lambda(sigma)."""

    name = "dsm"

    def __init__(self, noise: NoiseDistribution):
        self.noise = noise

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Random inputs for a batch of ``shape`` (leading dim B): sigma ``(B,)``, noise ``shape``."""
        sigma = self.noise.sample(shape[0], generator, device)
        noise = torch.randn(shape, generator=generator, device=device)
        return {"sigma": sigma, "noise": noise}

    def compute(self, precond, x0: torch.Tensor, class_labels: torch.Tensor | None, draws: dict[str, torch.Tensor]) -> torch.Tensor:
        sigma = draws["sigma"]
        x = x0 + _bcast(sigma, x0) * draws["noise"]
        denoised = precond(x, sigma, class_labels)
        per_sample = ((denoised - x0) ** 2).flatten(1).mean(1)
        return (self.noise.weight(sigma) * per_sample).mean()

    def __call__(self, precond, x0: torch.Tensor, class_labels: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.compute(precond, x0, class_labels, self.draw(tuple(x0.shape), generator, x0.device))


class SSMLoss(DSMLoss):
    """Sliced score matching with variance reduction (SSM-VR) on the sigma-perturbed data."""

    name = "ssm"

    def draw(self, shape, generator, device):
        draws = super().draw(shape, generator, device)
        draws["projection"] = torch.randn(shape, generator=generator, device=device)
        return draws

    def compute(self, precond, x0, class_labels, draws):
        sigma = draws["sigma"]
        s2 = _bcast(sigma, x0) ** 2
        x = (x0 + _bcast(sigma, x0) * draws["noise"]).detach().requires_grad_(True)
        score = (precond(x, sigma, class_labels) - x) / s2
        v = draws["projection"]
        (jvp,) = torch.autograd.grad((v * score).sum(), x, create_graph=True)
        trace_term = (v * jvp).flatten(1).sum(1)
        norm_term = 0.5 * (score**2).flatten(1).sum(1)
        d = x0[0].numel()
        return (sigma**2 * (trace_term + norm_term) / d).mean()


def make_loss(name: str, noise: NoiseDistribution) -> DSMLoss:
    """``dsm`` or ``ssm`` -> the loss object."""
    if name == "dsm":
        return DSMLoss(noise)
    if name == "ssm":
        return SSMLoss(noise)
    raise InputError(f"--loss '{name}' is not one of dsm, ssm.")
