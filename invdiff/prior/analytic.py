"""Exact denoisers for Gaussian and Gaussian-mixture data: the closed-form test problems.

For x0 ~ N(mu, S) and x = x0 + sigma n, E[x0 | x] = mu + S (S + sigma^2 I)^{-1} (x - mu).
For a mixture sum_k w_k N(mu_k, S_k), E[x0 | x] = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^{-1}
(x - mu_k)] with responsibilities r_k proportional to w_k N(x; mu_k, S_k + sigma^2 I).
Images are flattened: dimension d = C * H * W. Used to test every sampler, the likelihood
and every posterior solver against exact answers.
"""

from __future__ import annotations

import math

import torch

from invdiff.prior.denoiser import as_sigma


class GaussianMixtureDenoiser:
    """Exact D(x, sigma) for a mixture of K Gaussians over images of shape ``image_shape``.

    weights ``(K,)``, means ``(K, d)``, covs ``(K, d, d)`` (symmetric positive definite).
    """

    def __init__(self, weights, means, covs, image_shape, sigma_min=1e-3, sigma_max=80.0):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        self.image_shape = tuple(image_shape)
        self.dim = math.prod(self.image_shape)
        assert self.means.shape == (len(self.weights), self.dim)
        assert self.covs.shape == (len(self.weights), self.dim, self.dim)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        total = (self.weights[:, None] * (self.means**2 + torch.diagonal(self.covs, dim1=1, dim2=2))).sum(0)
        mean = (self.weights[:, None] * self.means).sum(0)
        self.sigma_data = float((total - mean**2).mean().sqrt())

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = as_sigma(sigma, x).to(torch.float64)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov_n = self.covs[None] + (s**2)[:, None, None, None] * eye  # (B, K, d, d)
        diff = flat[:, None, :] - self.means[None]  # (B, K, d)
        chol = torch.linalg.cholesky(cov_n)
        sol = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)  # (S+s^2)^-1 (x-mu)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        logp = torch.log(self.weights)[None] - 0.5 * (diff * sol).sum(-1) - 0.5 * logdet
        resp = torch.softmax(logp, dim=1)  # (B, K)
        post = self.means[None] + torch.einsum("kij,bkj->bki", self.covs, sol)
        out = (resp[..., None] * post).sum(1)
        return out.reshape(x.shape).to(x.dtype)

    def log_density(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        """log p(x; sigma) per batch element (nats): the exact likelihood for tests."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        eye = torch.eye(self.dim, dtype=torch.float64)
        comps = []
        for w, m, c in zip(self.weights, self.means, self.covs):
            dist = torch.distributions.MultivariateNormal(m, covariance_matrix=c + sigma**2 * eye)
            comps.append(torch.log(w) + dist.log_prob(flat))
        return torch.logsumexp(torch.stack(comps, 1), dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact draws ``(n, *image_shape)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", chol[k], z)
        return x.reshape(n, *self.image_shape).float()


class GaussianDenoiser(GaussianMixtureDenoiser):
    """Exact D(x, sigma) for x0 ~ N(mean, cov); mean ``(d,)``, cov ``(d, d)``."""

    def __init__(self, mean, cov, image_shape, sigma_min=1e-3, sigma_max=80.0):
        mean = torch.as_tensor(mean, dtype=torch.float64)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        super().__init__([1.0], mean[None], cov[None], image_shape, sigma_min, sigma_max)
        self.mean = mean
        self.cov = cov
