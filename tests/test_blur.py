"""The blur operator: exact adjoint, scipy.ndimage as the reference forward, Wiener, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from invdiff.errors import InputError
from invdiff.operators.base import build_operator, config_from_json, config_to_json, get_operator_class, inner
from invdiff.operators.blur import BOUNDARIES, BlurOperator
from invdiff.operators.noise import NoiseModel
from invdiff.operators.psf import gaussian_psf

SCIPY_MODE = {"reflect": "reflect", "periodic": "wrap", "zero": "constant"}
# (image H, W), PSF (h, w): odd, even and asymmetric PSFs, and a PSF as big as the image
GEOMETRIES = [((32, 32), (7, 7)), ((24, 20), (4, 6)), ((17, 23), (17, 23))]


def random_psf(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) + 0.01


def image(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    """A smooth test image with edges, values in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]] / max(shape)
    disc = ((yy - 0.45) ** 2 + (xx - 0.55) ** 2 < 0.08).astype(float)
    bars = (np.sin(12 * xx) > 0.3).astype(float) * (yy > 0.6)
    return np.clip(0.2 + 0.5 * disc + 0.3 * bars + 0.02 * rng.standard_normal(shape), 0, 1)


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return 10 * math.log10(float(truth.max() ** 2) / float(((estimate - truth) ** 2).mean()))


# --- the linear map ------------------------------------------------------------------------
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("hw, psf_hw", GEOMETRIES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_adjoint_dot_product(boundary, hw, psf_hw, dtype, tol):
    op = BlurOperator((1, *hw), random_psf(psf_hw), boundary, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    x, y = op.random_image(3, gen), op.random_measurement(3, gen)
    lhs, rhs = inner(op.forward(x), y), inner(x, op.adjoint(y))
    assert op.adjoint(y).shape == x.shape and op.adjoint(y).dtype == dtype
    assert abs(float(lhs - rhs)) <= tol * float(op.forward(x).norm() * y.norm())


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("hw, psf_hw", GEOMETRIES)
def test_forward_matches_scipy_ndimage_convolve(boundary, hw, psf_hw):
    psf = random_psf(psf_hw)
    x = image(hw)
    reference = ndi.convolve(x, psf / psf.sum(), mode=SCIPY_MODE[boundary])
    op64 = BlurOperator((1, *hw), psf, boundary, dtype=torch.float64)
    ours = op64.forward(torch.from_numpy(x)[None, None])
    assert ours.shape == (1, *hw)
    np.testing.assert_allclose(ours[0].numpy(), reference, atol=1e-12)
    op32 = BlurOperator((1, *hw), psf, boundary)
    ours32 = op32.forward(torch.from_numpy(x).float()[None, None])
    np.testing.assert_allclose(ours32[0].numpy(), reference, atol=1e-5)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_adjoint_matches_dense_transpose(boundary):
    """An independent check of the folding: the adjoint equals the transpose of the dense
    matrix whose columns are scipy's blur of unit impulses."""
    hw, psf = (9, 11), random_psf((5, 4), seed=3)
    columns = []
    for k in range(hw[0] * hw[1]):
        impulse = np.zeros(hw)
        impulse.flat[k] = 1.0
        columns.append(ndi.convolve(impulse, psf / psf.sum(), mode=SCIPY_MODE[boundary]).ravel())
    matrix = np.stack(columns, axis=1)
    y = np.random.default_rng(4).standard_normal(hw)
    op = BlurOperator((1, *hw), psf, boundary, dtype=torch.float64)
    ours = op.adjoint(torch.from_numpy(y)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours.ravel(), matrix.T @ y.ravel(), atol=1e-12)


def test_autograd_gradient_of_data_term_is_the_adjoint():
    op = BlurOperator((1, 20, 20), gaussian_psf(1.5), "reflect", dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x, y = op.random_image(2, gen).requires_grad_(True), op.random_measurement(2, gen)
    (0.5 * ((op.forward(x) - y) ** 2).sum()).backward()
    torch.testing.assert_close(x.grad, op.adjoint(op.forward(x.detach()) - y))


def test_psf_is_normalised_and_flat_images_stay_flat():
    op = BlurOperator((1, 16, 16), 7.0 * random_psf((5, 5)), "reflect", dtype=torch.float64)
    assert op.psf.sum() == pytest.approx(1.0, abs=1e-14)
    assert op.params()["psf"].sum() == pytest.approx(1.0, abs=1e-14)
    flat = torch.full((1, 1, 16, 16), 3.0, dtype=torch.float64)
    for boundary in ("reflect", "periodic"):
        blurred = BlurOperator((1, 16, 16), random_psf((5, 5)), boundary, dtype=torch.float64).forward(flat)
        torch.testing.assert_close(blurred, flat[:, 0])


def test_batch_elements_are_independent():
    op = BlurOperator((1, 16, 12), random_psf((3, 5)), "zero")
    x = op.random_image(3, torch.Generator().manual_seed(5))
    together = op.forward(x)
    for b in range(3):
        torch.testing.assert_close(together[b : b + 1], op.forward(x[b : b + 1]))


def test_spectral_norm_is_one_for_a_periodic_blur():
    op = BlurOperator((1, 16, 16), gaussian_psf(1.0), "periodic", dtype=torch.float64)
    assert op.norm(iterations=50, generator=torch.Generator().manual_seed(0)) == pytest.approx(1.0, rel=1e-3)


# --- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "psf, message",
    [
        (np.ones((33, 5)), "larger than the image"),
        (np.ones((5, 40)), "larger than the image"),
        (np.full((3, 3), np.nan), "NaN"),
        (-np.ones((3, 3)), "positive sum"),
        (np.zeros((3, 3)), "positive sum"),
        (np.ones((3, 3, 3)), "2-D"),
        ([["a"]], "2-D array of numbers"),
        (np.ones((3, 3)) * (1 + 1j), "real"),  # not silently cast to its real part
    ],
)
def test_bad_psf_raises_input_error(psf, message):
    with pytest.raises(InputError, match=message):
        BlurOperator((1, 32, 32), psf)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_shape": (2, 32, 32)}, r"\(1, H, W\)"),
        ({"image_shape": (32, 32)}, r"\(1, H, W\)"),
        ({"boundary": "mirror"}, "boundary"),
    ],
)
def test_bad_geometry_raises_input_error(kwargs, message):
    args = {"image_shape": (1, 32, 32), "psf": np.ones((3, 3))} | kwargs
    with pytest.raises(InputError, match=message):
        BlurOperator(**args)


# --- Wiener deconvolution ------------------------------------------------------------------
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_wiener_beats_the_blurred_image_without_noise(boundary):
    truth = torch.from_numpy(image((48, 48)))[None, None].float()
    op = BlurOperator((1, 48, 48), gaussian_psf(1.5), boundary)
    blurred = op.forward(truth)
    restored = op.direct(blurred)
    assert restored.shape == truth.shape
    assert psnr(restored, truth) > psnr(blurred[:, None], truth) + 3.0


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_wiener_helps_with_noise_and_regularises_more(boundary):
    truth = torch.from_numpy(image((48, 48)))[None, None].float()
    noise = NoiseModel("gaussian", std=0.02)
    op = BlurOperator((1, 48, 48), gaussian_psf(1.5), boundary, noise=noise)
    blurred = op.forward(truth)
    noisy = noise.sample(blurred, torch.Generator().manual_seed(0))
    restored = op.direct(noisy)
    assert psnr(restored, truth) > psnr(noisy[:, None], truth) + 0.5
    # with this noise, the noiseless operator's near-inverse filter would amplify it badly
    assert psnr(restored, truth) > psnr(BlurOperator((1, 48, 48), gaussian_psf(1.5), boundary).direct(noisy), truth)


def test_wiener_equals_dense_tikhonov_for_a_periodic_blur():
    """Periodic blur, white signal model: the Wiener filter is the Tikhonov solution
    (K^T K + lambda I)^-1 K^T y, with lambda = sigma^2 / max(var(y) - sigma^2, sigma^2)."""
    hw, psf, std = (12, 10), random_psf((5, 3), seed=6), 0.05
    columns = []
    for k in range(hw[0] * hw[1]):
        impulse = np.zeros(hw)
        impulse.flat[k] = 1.0
        columns.append(ndi.convolve(impulse, psf / psf.sum(), mode="wrap").ravel())
    matrix = np.stack(columns, axis=1)
    y = matrix @ image(hw).ravel() + std * np.random.default_rng(7).standard_normal(matrix.shape[0])
    lam = std**2 / max(y.var() - std**2, std**2)
    reference = np.linalg.solve(matrix.T @ matrix + lam * np.eye(matrix.shape[1]), matrix.T @ y)
    op = BlurOperator((1, *hw), psf, "periodic", noise=NoiseModel("gaussian", std=std), dtype=torch.float64)
    ours = op.direct(torch.from_numpy(y.reshape(hw))[None])
    np.testing.assert_allclose(ours[0, 0].numpy().ravel(), reference, atol=1e-10)


def test_wiener_handles_poisson_gaussian_noise_per_batch_element():
    truth = torch.from_numpy(np.stack([image((32, 32), 1), 0.5 * image((32, 32), 2)]))[:, None].float()
    noise = NoiseModel("poisson_gaussian", photons=200.0, gain=1 / 200.0, read_std=1.0)
    op = BlurOperator((1, 32, 32), gaussian_psf(1.2), noise=noise)
    restored = op.direct(op.forward(truth))
    for b in range(2):  # lambda comes from each element's own variance and signal power
        torch.testing.assert_close(restored[b : b + 1], op.direct(op.forward(truth[b : b + 1])))
    assert torch.isfinite(restored).all()


# --- configuration -------------------------------------------------------------------------
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_config_round_trip_through_json(boundary):
    noise = NoiseModel("gaussian", std=0.03)
    op = BlurOperator((1, 20, 24), random_psf((5, 4)), boundary, noise=noise)
    text, arrays = config_to_json(op.to_config())
    config = config_from_json(text, arrays)
    assert get_operator_class("blur") is BlurOperator
    rebuilt = build_operator(config)
    assert rebuilt.params()["image_shape"] == [1, 20, 24]
    assert rebuilt.boundary == boundary and rebuilt.noise == noise
    np.testing.assert_array_equal(rebuilt.psf, op.psf)
    x = op.random_image(1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt.forward(x), op.forward(x), rtol=0, atol=0)
    as64 = op.to(dtype=torch.float64)
    assert as64.dtype == torch.float64 and as64.forward(x.double()).dtype == torch.float64
    torch.testing.assert_close(as64.forward(x.double()).float(), op.forward(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"image_shape": [1, 8, 8]}, "lacks psf"),
        ({"image_shape": [1, 8, 8], "psf": [[1.0]], "sigma": 2}, "unknown blur"),
        ({"image_shape": [1, 8, 8], "psf": [[1.0]], "noise": {"kind": "laplace"}}, "noise model"),
    ],
)
def test_from_config_rejects_bad_params(params, message):
    with pytest.raises(InputError, match=message):
        BlurOperator.from_config(params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    op = BlurOperator((1, 64, 64), gaussian_psf(2.0), "reflect", noise=NoiseModel("gaussian", std=0.01))
    gpu = op.to("cuda")
    x = op.random_image(2, torch.Generator().manual_seed(0))
    y = op.forward(x)
    torch.testing.assert_close(gpu.forward(x.cuda()).cpu(), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.adjoint(y.cuda()).cpu(), op.adjoint(y), atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.direct(y.cuda()).cpu(), op.direct(y), atol=1e-4, rtol=0)
