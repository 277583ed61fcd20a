"""Classical reconstructions against closed forms and independent references.

Small dense-matrix and masked-FFT operators defined here stand in for the physics; the last
tests run every (method, operator) pair on the real radon/mri/blur operators at 32x32.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import pywt
import torch
from skimage.data import shepp_logan_phantom
from skimage.restoration import denoise_tv_chambolle
from skimage.transform import resize

from invdiff.classical import METHODS, get_method, methods_for, run_method
from invdiff.classical.cg import conjugate_gradient
from invdiff.classical.cgls import solve_cgls
from invdiff.classical.cgsense import cg_sense
from invdiff.classical.data_term import make_data_term
from invdiff.classical.dwt import Wavelet2D
from invdiff.classical.finite_differences import divergence, gradient, total_variation
from invdiff.classical.rl import poisson_log_likelihood, richardson_lucy
from invdiff.classical.sirt import sirt
from invdiff.classical.tv import solve_tv, tv, tv_objective
from invdiff.classical.wavelet import l1_wavelet, soft_threshold, solve_l1_wavelet
from invdiff.errors import InputError
from invdiff.operators.base import Operator, inner, to_complex
from invdiff.operators.noise import NoiseModel

F64 = torch.float64


# --- stand-in operators ------------------------------------------------------------------
class MatrixOperator(Operator):
    """``y = M x.flatten()``: a dense real matrix ``(m, H*W)`` on images ``(B, 1, H, W)``."""

    name = "matrix"

    def __init__(self, matrix: np.ndarray, hw: tuple[int, int], noise: NoiseModel | None = None):
        self.matrix = torch.as_tensor(matrix, dtype=F64)
        self.image_shape = (1, *hw)
        self.measurement_shape = (matrix.shape[0],)
        self.noise = noise or NoiseModel()
        self.device = torch.device("cpu")
        self.dtype = F64

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def adjoint(self, y):
        return (y @ self.matrix).reshape(y.shape[0], *self.image_shape)

    def direct(self, y):
        return (y @ torch.linalg.pinv(self.matrix).T).reshape(y.shape[0], *self.image_shape)

    def params(self):
        return {"matrix": self.matrix.numpy(), "noise": self.noise.params()}

    @classmethod
    def from_config(cls, params, *, device="cpu", dtype=F64):
        raise NotImplementedError


class MaskedFourierOperator(Operator):
    """Single-coil Cartesian MRI stand-in: ``y = mask * FFT_ortho(x)``; C = 1 real or 2 complex."""

    name = "masked-fourier"
    measurement_is_complex = True

    def __init__(self, mask: torch.Tensor, channels: int, noise: NoiseModel | None = None):
        self.mask = mask.to(F64)
        self.image_shape = (channels, *mask.shape)
        self.measurement_shape = (1, *mask.shape)
        self.noise = noise or NoiseModel()
        self.device = torch.device("cpu")
        self.dtype = F64

    def forward(self, x):
        return self.mask * torch.fft.fft2(to_complex(x), norm="ortho")

    def adjoint(self, y):
        z = torch.fft.ifft2(self.mask * y, norm="ortho")
        return z.real.contiguous() if self.image_shape[0] == 1 else torch.cat([z.real, z.imag], dim=1)

    def direct(self, y):
        return self.adjoint(y)

    def params(self):
        return {"mask": self.mask.numpy(), "noise": self.noise.params()}

    @classmethod
    def from_config(cls, params, *, device="cpu", dtype=F64):
        raise NotImplementedError


class IdentityOperator(Operator):
    """``y = x[:, 0]``: denoising."""

    name = "identity"

    def __init__(self, hw: tuple[int, int], noise: NoiseModel | None = None):
        self.image_shape = (1, *hw)
        self.measurement_shape = hw
        self.noise = noise or NoiseModel()
        self.device = torch.device("cpu")
        self.dtype = F64

    def forward(self, x):
        return x[:, 0]

    def adjoint(self, y):
        return y.unsqueeze(1)

    def direct(self, y):
        return y.unsqueeze(1)

    def params(self):
        return {"noise": self.noise.params()}

    @classmethod
    def from_config(cls, params, *, device="cpu", dtype=F64):
        raise NotImplementedError


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def piecewise_constant(n: int = 32) -> np.ndarray:
    image = np.zeros((n, n))
    image[4:20, 6:26] = 0.6
    image[12:28, 14:22] = 1.0
    image[22:30, 3:10] = 0.3
    return image


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    return 10 * math.log10(1.0 / np.mean((reference - estimate) ** 2))


# --- building blocks ---------------------------------------------------------------------
def test_gradient_divergence_adjoint_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 9, 7, generator=g, dtype=F64)
    p = torch.randn(2, 2, 2, 9, 7, generator=g, dtype=F64)
    assert abs(float(inner(gradient(x), p) + inner(x, divergence(p)))) < 1e-10
    grad = gradient(x).numpy()
    assert np.allclose(grad[:, :, 0, :-1], np.diff(x.numpy(), axis=2))
    assert np.allclose(grad[:, :, 1, :, :-1], np.diff(x.numpy(), axis=3))
    assert np.all(grad[:, :, 0, -1] == 0) and np.all(grad[:, :, 1, :, -1] == 0)
    # power iteration: ||grad||^2 <= 8
    v = torch.randn(1, 1, 16, 16, generator=g, dtype=F64)
    for _ in range(200):
        v = -divergence(gradient(v))
        v = v / v.norm()
    assert float((-divergence(gradient(v))).norm()) <= 8.0


@pytest.mark.parametrize("name", ["haar", "db2", "db4"])
def test_wavelet_matches_pywavelets_and_is_orthonormal(name):
    x = rng(1).standard_normal((2, 1, 32, 64))
    wavelet = Wavelet2D.create(name, 2, device="cpu", dtype=F64)
    coeffs = wavelet.analysis(torch.tensor(x))
    for b in range(2):
        reference, _ = pywt.coeffs_to_array(pywt.wavedec2(x[b, 0], name, mode="periodization", level=2))
        assert np.allclose(coeffs[b, 0].numpy(), reference, atol=1e-12)
    c = torch.tensor(rng(2).standard_normal(x.shape))
    assert abs(float(inner(coeffs, c) - inner(torch.tensor(x), wavelet.synthesis(c)))) < 1e-9
    assert torch.allclose(wavelet.synthesis(coeffs), torch.tensor(x), atol=1e-12)


def test_wavelet_rejects_non_orthogonal():
    with pytest.raises(InputError, match="not orthogonal"):
        Wavelet2D.create("bior2.2", 1, device="cpu", dtype=F64)


def test_data_term_weights_follow_noise_model():
    op = IdentityOperator((4, 4), NoiseModel("poisson_gaussian", photons=100.0, gain=0.01, read_std=2.0))
    y = torch.linspace(0.0, 1.0, 16, dtype=F64).reshape(1, 4, 4)
    data = make_data_term(op, y)
    variance = op.noise.variance(y)
    assert torch.allclose(data.weights, data.sigma**2 / variance)
    assert math.isclose(data.sigma, math.sqrt(float(variance.mean())))
    x = torch.rand(1, 1, 4, 4, dtype=F64)
    nll = op.noise.nll(op.forward(x), y)
    assert torch.allclose(data.value(x), nll * data.sigma**2)
    noiseless = make_data_term(IdentityOperator((4, 4)), y)
    assert math.isclose(noiseless.sigma, 1e-3)


# --- least squares -------------------------------------------------------------------------
@pytest.mark.parametrize("rows", [60, 20])  # overdetermined and underdetermined (min-norm)
def test_cgls_reaches_lstsq(rows):
    matrix = rng(3).standard_normal((rows, 36))
    op = MatrixOperator(matrix, (6, 6))
    y = torch.tensor(rng(4).standard_normal((2, rows)))
    x = solve_cgls(make_data_term(op, y), 80)
    reference = np.linalg.lstsq(matrix, y.numpy().T, rcond=None)[0].T
    assert np.allclose(x.reshape(2, -1).numpy(), reference, atol=1e-8)


def test_cgls_weighted_least_squares():
    matrix = rng(5).uniform(0, 1, (50, 16))
    noise = NoiseModel("poisson_gaussian", photons=50.0, gain=0.02, read_std=1.0)
    op = MatrixOperator(matrix, (4, 4), noise)
    y = torch.tensor(rng(6).uniform(0.1, 3.0, (1, 50)))
    x = run_method("cgls", op, y, iterations=60)
    w = 1.0 / noise.variance(y).numpy()[0]
    reference = np.linalg.lstsq(matrix * np.sqrt(w)[:, None], y.numpy()[0] * np.sqrt(w), rcond=None)[0]
    assert np.allclose(x.reshape(-1).numpy(), reference, atol=1e-8)


def test_sirt_converges_on_consistent_problem():
    matrix = rng(7).uniform(0, 1, (80, 36)) * (rng(70).uniform(0, 1, (80, 36)) < 0.2)  # sparse, like rays
    op = MatrixOperator(matrix, (6, 6))
    truth = rng(8).uniform(0, 1, (1, 36))
    y = torch.tensor(truth @ matrix.T)
    errors = []
    sirt(op, y, iterations=1000, callback=lambda k, x: errors.append(float((x.reshape(1, -1) - torch.tensor(truth)).norm())))
    assert errors[-1] < 1e-6 * np.linalg.norm(truth)
    assert errors[-1] < errors[100] < errors[0]


def test_sirt_falls_back_to_landweber_for_signed_operator():
    matrix = rng(9).standard_normal((60, 36))
    op = MatrixOperator(matrix, (6, 6))
    truth = rng(10).standard_normal((1, 36))
    x = sirt(op, torch.tensor(truth @ matrix.T), iterations=2000, nonnegative=False)
    assert np.allclose(x.reshape(1, -1).numpy(), truth, atol=1e-6)


def test_cg_sense_solves_tikhonov_normal_equations():
    mask = torch.tensor(rng(11).uniform(0, 1, (8, 8)) < 0.5)
    op = MaskedFourierOperator(mask, 2, NoiseModel("gaussian", std=0.1))
    y = op.forward(torch.tensor(rng(12).standard_normal((1, 2, 8, 8))))
    weight = 0.05
    x = cg_sense(op, y, weight=weight, iterations=60)
    mu = weight * make_data_term(op, y).lipschitz
    # closed form: per k-space sample, (m + mu) X = m Y  ->  x = ifft(m y / (m + mu))
    closed = torch.fft.ifft2(mask * y / (mask + mu), norm="ortho")
    assert torch.allclose(to_complex(x), closed, atol=1e-10)


def test_conjugate_gradient_dense_spd():
    a = rng(13).standard_normal((16, 16))
    spd = torch.tensor(a @ a.T + 16 * np.eye(16))
    rhs = torch.tensor(rng(14).standard_normal((3, 1, 4, 4)))
    x = conjugate_gradient(lambda v: (v.reshape(3, 16) @ spd).reshape(3, 1, 4, 4), rhs, 40)
    assert np.allclose(x.reshape(3, 16).numpy(), np.linalg.solve(spd.numpy(), rhs.reshape(3, 16).numpy().T).T, atol=1e-10)


# --- total variation -----------------------------------------------------------------------
def test_tv_matches_skimage_chambolle_for_denoising():
    truth = piecewise_constant(32)
    noisy = truth + 0.1 * rng(15).standard_normal(truth.shape)
    rof_weight = 0.08
    reference = denoise_tv_chambolle(noisy, weight=rof_weight, eps=1e-10, max_num_iter=5000)
    op = IdentityOperator((32, 32), NoiseModel("gaussian", std=0.1))
    y = torch.tensor(noisy)[None]
    data = make_data_term(op, y)
    values = []
    x = solve_tv(data, rof_weight, 1000, nonnegative=False, x0=op.direct(y), step_ratio=0.01,
                 callback=lambda k, x: values.append(float(tv_objective(data, rof_weight, x)[0])))
    assert np.abs(x[0, 0].numpy() - reference).max() < 1e-3
    ref_objective = float(tv_objective(data, rof_weight, torch.tensor(reference)[None, None])[0])
    assert values[-1] <= ref_objective + 1e-6 * abs(ref_objective)
    assert values[-1] < values[0]


def test_tv_beats_noisy_and_least_squares_by_a_clear_margin():
    truth = piecewise_constant(32)
    op = IdentityOperator((32, 32), NoiseModel("gaussian", std=0.1))
    y = torch.tensor(truth + 0.1 * rng(16).standard_normal(truth.shape))[None]
    x = run_method("tv", op, y, weight=0.7)  # the flat-spectrum (MRI) default
    assert x.min() >= 0  # nonnegative for real images
    assert psnr(truth, x[0, 0].numpy()) > psnr(truth, y[0].numpy()) + 5.0


def test_tv_underdetermined_fourier_beats_zero_filled():
    truth = piecewise_constant(32)
    mask = torch.tensor(rng(17).uniform(0, 1, (32, 32)) < 0.35)
    mask[:3, :3] = mask[-3:, -3:] = mask[:3, -3:] = mask[-3:, :3] = True  # low frequencies (unshifted FFT)
    op = MaskedFourierOperator(mask, 1, NoiseModel("gaussian", std=0.005))
    clean = op.forward(torch.tensor(truth)[None, None])
    y = clean + mask * op.noise.sample(torch.zeros_like(clean), torch.Generator().manual_seed(0))
    zero_filled = op.direct(y)[0, 0].numpy()
    x = tv(op, y, iterations=400)[0, 0].numpy()
    assert psnr(truth, x) > psnr(truth, zero_filled) + 6.0


def test_tv_complex_channels_reduce_to_real_case():
    truth = piecewise_constant(16)
    noisy = torch.tensor(truth + 0.1 * rng(18).standard_normal(truth.shape))[None, None]
    mask = torch.ones(16, 16, dtype=torch.bool)
    real_op = MaskedFourierOperator(mask, 1, NoiseModel("gaussian", std=0.1))
    complex_op = MaskedFourierOperator(mask, 2, NoiseModel("gaussian", std=0.1))
    y = real_op.forward(noisy)
    x_real = tv(real_op, y, weight=1.0, iterations=300, nonnegative=False)
    x_complex = tv(complex_op, y, weight=1.0, iterations=300)
    assert torch.allclose(x_complex[:, :1], x_real, atol=1e-4)
    assert float(x_complex[:, 1].abs().max()) < 1e-4
    assert float(total_variation(x_real)[0]) < float(total_variation(noisy)[0])


# --- l1-wavelet ----------------------------------------------------------------------------
def test_l1_wavelet_prox_matches_pywavelets_soft_threshold():
    x = rng(19).standard_normal((32, 32))
    op = IdentityOperator((32, 32), NoiseModel("gaussian", std=1.0))
    y = torch.tensor(x)[None]
    data = make_data_term(op, y)
    wavelet = Wavelet2D.create("db2", 3, device="cpu", dtype=F64)
    # one FISTA step from x0 = y with step 1/L, L = 1.02^2 (the norm margin): prox at lam / L
    lam = 0.5
    out = solve_l1_wavelet(data, wavelet, lam, 1, x0=op.direct(y), cycle_spin=False)
    coeffs = pywt.wavedec2(x, "db2", mode="periodization", level=3)
    threshold = lam / data.lipschitz
    shrunk = [coeffs[0]] + [tuple(pywt.threshold(c, threshold, mode="soft") for c in level) for level in coeffs[1:]]
    reference = pywt.waverec2(shrunk, "db2", mode="periodization")
    assert np.allclose(out[0, 0].numpy(), reference, atol=1e-10)


def test_soft_threshold_complex_magnitude():
    c = torch.tensor([3.0, 0.5], dtype=F64).reshape(1, 2, 1, 1) * torch.ones(1, 2, 2, 2, dtype=F64)
    mask = torch.tensor([[True, False], [True, True]])
    out = soft_threshold(c, 1.0, mask)
    magnitude = math.hypot(3.0, 0.5)
    assert torch.allclose(out[0, :, 0, 0], c[0, :, 0, 0] * (1 - 1 / magnitude))
    assert torch.equal(out[0, :, 0, 1], c[0, :, 0, 1])


def test_l1_wavelet_beats_zero_filled_on_wavelet_sparse_image():
    coeffs = np.zeros((32, 32))
    coeffs[:4, :4] = rng(20).uniform(0, 4, (4, 4))
    support = rng(21).uniform(0, 1, (32, 32)) < 0.04
    coeffs[support] = rng(22).standard_normal(support.sum())
    wavelet = Wavelet2D.create("db4", 3, device="cpu", dtype=F64)
    truth = wavelet.synthesis(torch.tensor(coeffs)[None, None])
    truth = (truth - truth.min()) / (truth.max() - truth.min())
    mask = torch.tensor(rng(23).uniform(0, 1, (32, 32)) < 0.4)
    mask[:2, :2] = mask[-2:, -2:] = mask[:2, -2:] = mask[-2:, :2] = True
    op = MaskedFourierOperator(mask, 1, NoiseModel("gaussian", std=0.002))
    clean = op.forward(truth)
    y = clean + mask * op.noise.sample(torch.zeros_like(clean), torch.Generator().manual_seed(1))
    x = l1_wavelet(op, y, weight=0.1, iterations=300)
    t = truth[0, 0].numpy()
    assert psnr(t, x[0, 0].numpy()) > psnr(t, op.direct(y)[0, 0].numpy()) + 6.0


# --- Richardson-Lucy -----------------------------------------------------------------------
def test_richardson_lucy_likelihood_positivity_flux():
    matrix = rng(24).uniform(0, 1, (49, 49)) ** 8  # sparse-ish blur-like nonnegative matrix
    matrix /= matrix.sum(axis=0, keepdims=True)  # A^T 1 = 1
    op = MatrixOperator(matrix, (7, 7))
    truth = rng(25).uniform(0, 50, (1, 49))
    y = torch.tensor(rng(26).poisson(truth @ matrix.T), dtype=F64)
    likelihoods, fluxes, minima = [], [], []

    def record(k, x):
        likelihoods.append(float(poisson_log_likelihood(op.forward(x), y)[0]))
        fluxes.append(float(x.sum()))
        minima.append(float(x.min()))

    richardson_lucy(op, y, iterations=50, callback=record)
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(likelihoods, likelihoods[1:]))
    assert likelihoods[-1] > likelihoods[0]
    assert np.allclose(fluxes, float(y.sum()), rtol=1e-10)
    assert min(minima) >= 0


# --- registry ------------------------------------------------------------------------------
def test_registry_names_and_errors():
    assert {"fbp", "zero-filled", "wiener", "sirt", "cgls", "tv", "cg-sense", "l1-wavelet", "richardson-lucy"} == set(METHODS)
    with pytest.raises(InputError, match="available: fbp, zero-filled"):
        get_method("nope")
    op = IdentityOperator((8, 8), NoiseModel("gaussian", std=0.1))
    y = torch.zeros(1, 8, 8, dtype=F64)
    with pytest.raises(InputError, match="does not apply to the identity operator"):
        run_method("fbp", op, y)
    with pytest.raises(InputError, match="--weight"):
        run_method("tv", op, y, weight=-1.0)
    with pytest.raises(InputError, match="--iterations"):
        run_method("tv", op, y, iterations=0)
    with pytest.raises(InputError, match="no regularisation weight"):
        run_method("cgls", op, y, weight=0.1)
    with pytest.raises(InputError, match="does not match"):
        run_method("tv", op, torch.zeros(1, 7, 8, dtype=F64))
    assert methods_for("radon") == ["fbp", "sirt", "cgls", "tv", "l1-wavelet"]
    assert all(m.description for m in METHODS.values())


# --- every (method, operator) pair on the real operators at 32x32 ---------------------------
def real_operator(kind: str, channels: int = 1):
    """A 32x32 instance of the real operator ``kind`` with a noise model (ImportError fails the test)."""
    from invdiff.operators.blur import BlurOperator
    from invdiff.operators.masks import random_line_mask
    from invdiff.operators.mri import MRIOperator
    from invdiff.operators.psf import gaussian_psf
    from invdiff.operators.radon import RadonOperator

    if kind == "radon":
        return RadonOperator((1, 32, 32), np.linspace(0, 180, 24, endpoint=False), noise=NoiseModel("gaussian", std=0.1), dtype=F64)
    if kind == "mri":
        mask = random_line_mask((32, 32), 2, 0.16, seed=0)
        return MRIOperator((channels, 32, 32), mask, noise=NoiseModel("gaussian", std=0.005), dtype=F64)
    return BlurOperator((1, 32, 32), gaussian_psf(1.0), noise=NoiseModel("poisson_gaussian", photons=200.0, gain=1 / 200.0), dtype=F64)


PAIRS = [(kind, name) for kind in ("radon", "mri", "blur") for name in methods_for(kind)]


@pytest.mark.parametrize("kind,name", PAIRS, ids=[f"{k}-{n}" for k, n in PAIRS])
def test_every_method_on_real_operators(kind, name):
    truth = resize(shepp_logan_phantom(), (32, 32), anti_aliasing=True)
    op = real_operator(kind, channels=2 if name == "cg-sense" else 1)
    x_true = torch.tensor(truth)[None, None]
    if op.image_shape[0] == 2:
        x_true = torch.cat([x_true, torch.zeros_like(x_true)], dim=1)
    clean = op.forward(x_true)
    y = op.noise.sample(clean, torch.Generator().manual_seed(0))
    iterations = None if METHODS[name].function.__name__ == "direct" else 30
    x = run_method(name, op, y, iterations=iterations)
    assert x.shape == (1, *op.image_shape) and x.dtype == F64
    error = float((x - x_true).norm() / x_true.norm())
    assert error < 0.6, f"{name} on {kind}: relative error {error:.3f}"


def test_tv_on_scaled_operator_solves_the_same_problem():
    base = real_operator("radon")
    op = base.scaled(2.0)
    truth = torch.tensor(resize(shepp_logan_phantom(), (32, 32), anti_aliasing=True))[None, None]
    y = base.noise.sample(base.forward(truth), torch.Generator().manual_seed(0))
    x_base = run_method("tv", base, y, iterations=400)
    x_scaled = run_method("tv", op, y, iterations=400)
    assert float((2.0 * x_scaled - x_base).norm() / x_base.norm()) < 0.01
    with pytest.raises(InputError, match="radon operator"):
        run_method("zero-filled", op, y)
