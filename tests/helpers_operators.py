"""Small operators and exact Gaussian posteriors for solver tests.

DenseOperator: y = A x with an explicit (m, d) matrix, real or complex, acting on flattened
images (B, C, H, W) -> (B, m). With a Gaussian prior N(mu, S) and noise N(0, v I) the posterior
is N(m, P), P = (S^-1 + A^T W A)^-1, m = P (S^-1 mu + A^T W y), W = 1/v (complex A and y count
real and imaginary parts as separate real measurements).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from invdiff.errors import InputError
from invdiff.operators.base import Operator
from invdiff.operators.noise import NoiseModel


class DenseOperator(Operator):
    """``y = A x`` for an explicit matrix A ``(m, d)``, d = C * H * W; measurement ``(m,)``."""

    name = "dense"

    def __init__(self, matrix, image_shape, noise: NoiseModel | None = None, device="cpu", dtype=torch.float64):
        matrix = torch.as_tensor(np.asarray(matrix))
        self.measurement_is_complex = bool(matrix.is_complex())
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.matrix = matrix.to(device=device, dtype=cdtype if self.measurement_is_complex else dtype)
        self.image_shape = tuple(image_shape)
        if self.matrix.shape[1] != math.prod(self.image_shape):
            raise InputError("dense operator: matrix columns do not match the image size.")
        self.measurement_shape = (self.matrix.shape[0],)
        self.noise = noise or NoiseModel()
        self.device = torch.device(device)
        self.dtype = dtype

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        if self.measurement_is_complex:
            flat = flat.to(self.matrix.dtype)
        return flat @ self.matrix.T

    def adjoint(self, y):
        out = y @ self.matrix.conj()
        if out.is_complex():
            out = out.real
        return out.reshape(y.shape[0], *self.image_shape).contiguous()

    def direct(self, y):
        pinv = torch.linalg.pinv(self.matrix)
        out = y @ pinv.T
        if out.is_complex():
            out = out.real
        return out.reshape(y.shape[0], *self.image_shape).contiguous()

    def params(self):
        return {"matrix": self.matrix.cpu().numpy(), "image_shape": list(self.image_shape), "noise": self.noise.params()}

    @classmethod
    def from_config(cls, params, *, device="cpu", dtype=torch.float64):
        return cls(params["matrix"], params["image_shape"], NoiseModel.from_params(params.get("noise")), device, dtype)

    def real_matrix(self) -> torch.Tensor:
        """The real (m_real, d) matrix of the map x -> (Re A x, Im A x)."""
        if self.measurement_is_complex:
            return torch.cat([self.matrix.real, self.matrix.imag], dim=0)
        return self.matrix


def random_covariance(d: int, generator: torch.Generator, lo: float = 0.05, hi: float = 1.0) -> torch.Tensor:
    """A non-diagonal SPD covariance with eigenvalues log-spaced in [lo, hi]."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    eig = torch.logspace(math.log10(lo), math.log10(hi), d, dtype=torch.float64)
    return (q * eig) @ q.T


def gaussian_posterior(mean, cov, real_matrix, noise_var, y_real):
    """Exact posterior mean ``(d,)`` and covariance ``(d, d)`` (float64) for one measurement."""
    a = real_matrix.to(torch.float64)
    prec = torch.linalg.inv(cov) + a.T @ a / noise_var
    post_cov = torch.linalg.inv(prec)
    post_mean = post_cov @ (torch.linalg.solve(cov, mean) + a.T @ y_real.to(torch.float64) / noise_var)
    return post_mean, post_cov


def as_real_measurement(y: torch.Tensor) -> torch.Tensor:
    """(m,) real or complex -> real vector (Re, Im) matching DenseOperator.real_matrix."""
    return torch.cat([y.real, y.imag]) if y.is_complex() else y


def operator_matrix(op: Operator) -> torch.Tensor:
    """The real matrix ``(m_real, d)`` of any operator, column by column (complex measurements
    are split into real and imaginary rows), in float64."""
    d = math.prod(op.image_shape)
    eye = torch.eye(d, dtype=op.dtype, device=op.device).reshape(d, *op.image_shape)
    cols = op.forward(eye).reshape(d, -1)
    if cols.is_complex():
        cols = torch.cat([cols.real, cols.imag], dim=1)
    return cols.T.to(torch.float64).cpu()


class FastGaussianDenoiser:
    """The exact Gaussian denoiser of GaussianDenoiser, computed through one eigendecomposition
    (``D = mu + U diag(l / (l + sigma^2)) U^T (x - mu)``) so tests with thousands of samples stay
    fast; checked against GaussianDenoiser in the tests. Differentiable (for DPS)."""

    def __init__(self, mean, cov, image_shape, sigma_min=1e-3, sigma_max=80.0):
        from invdiff.prior.analytic import GaussianDenoiser

        self.reference = GaussianDenoiser(mean, cov, image_shape, sigma_min, sigma_max)
        self.mean = self.reference.mean
        self.cov = self.reference.cov
        self.image_shape = tuple(image_shape)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = self.reference.sigma_data
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.cov)

    def __call__(self, x: torch.Tensor, sigma) -> torch.Tensor:
        from invdiff.prior.denoiser import as_sigma

        s = as_sigma(sigma, x).to(torch.float64)
        flat = x.reshape(x.shape[0], -1).to(torch.float64) - self.mean.to(x.device)
        u = self.eigvecs.to(x.device)
        gain = self.eigvals.to(x.device) / (self.eigvals.to(x.device) + s[:, None] ** 2)  # (B, d)
        out = self.mean.to(x.device) + ((flat @ u) * gain) @ u.T
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.reference.sample(n, generator)
