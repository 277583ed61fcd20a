"""The radon operator: exact adjoint, agreement with scikit-image, closed-form projections,
FBP accuracy and units, configuration and input validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import iradon, radon, resize

from invdiff.errors import InputError
from invdiff.operators.base import config_from_json, config_to_json, inner
from invdiff.operators.fbp_filters import FILTERS
from invdiff.operators.noise import NoiseModel
from invdiff.operators.radon import RadonOperator, default_detectors


FULL = np.arange(0.0, 180.0, 1.0)


@pytest.fixture(scope="module")
def phantom128() -> np.ndarray:
    return resize(shepp_logan_phantom(), (128, 128), anti_aliasing=True).astype(np.float64)


@pytest.fixture(scope="module")
def op128() -> RadonOperator:
    return RadonOperator((1, 128, 128), FULL, filter="ramp", dtype=torch.float64)


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def psnr(a: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(ref.max() ** 2 / np.mean((a - ref) ** 2)))


def as_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))[None, None]


GEOMETRIES = {
    "full": dict(image_shape=(1, 32, 32), angles_deg=np.linspace(0, 180, 24, endpoint=False)),
    "limited-angle": dict(image_shape=(1, 28, 36), angles_deg=np.linspace(10, 100, 31), detectors=50, spacing=0.7),
    "sparse-view": dict(image_shape=(1, 33, 30), angles_deg=[3.0, 47.0, 95.0, 133.0, 181.5, -20.0], spacing=1.5),
}


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_adjoint_dot_product(geometry, dtype, tol):
    """``<A x, y> = <x, A^T y>`` on fresh random inputs. ``y`` is white noise plus a multiple
    of ``A x'`` (``x'`` independent of ``x``), so ``<A x, y>`` is never close to zero by chance
    and the relative error below is a fair float-precision yardstick."""
    op = RadonOperator(**GEOMETRIES[geometry], pixel_size=0.7, dtype=dtype)
    for seed in np.random.SeedSequence().generate_state(3):  # fresh inputs on every run
        g = torch.Generator().manual_seed(int(seed))
        x = op.random_image(2, g)
        noise = op.random_measurement(2, g)
        y = noise + op.forward(x + 0.5 * op.random_image(2, g)) * (noise.norm() / op.forward(x).norm())
        lhs, rhs = float(inner(op.forward(x), y)), float(inner(x, op.adjoint(y)))
        assert abs(lhs - rhs) / max(abs(lhs), abs(rhs)) < tol, (seed, lhs, rhs)


def test_adjoint_is_gradient_of_forward():
    """Autograd through forward gives A^T r (the custom backward uses the stored transpose)."""
    op = RadonOperator(**GEOMETRIES["limited-angle"], dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = op.random_image(2, g).requires_grad_(True)
    y = op.random_measurement(2, g)
    residual = op.forward(x) - y
    (0.5 * (residual**2).sum()).backward()
    assert torch.allclose(x.grad, op.adjoint(residual.detach()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("hw", [(32, 32), (33, 33), (40, 56), (57, 31)])
def test_sinogram_shape_matches_skimage(hw):
    image = np.zeros(hw)
    expected = radon(image, FULL[::20], circle=False).shape[::-1]
    op = RadonOperator((1, *hw), FULL[::20])
    assert op.measurement_shape == expected
    assert op.detectors == default_detectors(*hw)


def test_forward_matches_skimage_phantom(op128, phantom128):
    ours = op128.forward(as_image(phantom128))[0].numpy()
    reference = radon(phantom128, FULL, circle=False).T
    err = rel_error(ours, reference)
    assert err < 0.02, err  # measured 0.004 (both are interpolating line integrals)


def test_forward_matches_skimage_non_square_off_centre():
    """A small off-centre blob in a non-square image: orientation, centre and values."""
    h, w = 40, 56
    r, c = np.mgrid[:h, :w]
    image = np.exp(-((r - 12.0) ** 2 + (c - 40.0) ** 2) / (2 * 2.5**2))
    theta = np.array([0.0, 17.0, 45.0, 71.0, 90.0, 120.0, 135.0, 163.0])
    ours = RadonOperator((1, h, w), theta, dtype=torch.float64).forward(as_image(image))[0].numpy()
    reference = radon(image, theta, circle=False).T
    assert np.array_equal(ours.argmax(axis=1), reference.argmax(axis=1))
    assert rel_error(ours, reference) < 0.02


@pytest.mark.parametrize("spacing,pixel_size", [(1.0, 1.0), (0.75, 0.4), (1.6, 2.0)])
def test_gaussian_projection_closed_form(spacing, pixel_size):
    """The projection of a Gaussian ``a exp(-|p - p0|^2 / 2 s^2)`` is, in physical units,
    ``pixel_size * a * sqrt(2 pi) s exp(-(t - t0)^2 / 2 s^2)`` with ``t0 = x0 cos - y0 sin``."""
    n, s, amplitude = 48, 3.0, 0.02  # amplitude in 1/mm
    x0, y0 = 5.0, -7.0  # pixels from the centre (x right, y = row down)
    r, c = np.mgrid[:n, :n]
    image = amplitude * np.exp(-((c - n // 2 - x0) ** 2 + (r - n // 2 - y0) ** 2) / (2 * s**2))
    theta = np.array([0.0, 22.5, 45.0, 60.0, 90.0, 111.0, 135.0, 150.0])
    op = RadonOperator((1, n, n), theta, detectors=90, spacing=spacing, pixel_size=pixel_size, dtype=torch.float64)
    sinogram = op.forward(as_image(image))[0].numpy()
    t = (np.arange(90) - 45) * spacing
    rad = np.deg2rad(theta)[:, None]
    t0 = x0 * np.cos(rad) - y0 * np.sin(rad)
    exact = pixel_size * amplitude * math.sqrt(2 * math.pi) * s * np.exp(-((t - t0) ** 2) / (2 * s**2))
    assert rel_error(sinogram, exact) < 0.01


def test_fbp_reproduces_phantom_and_matches_iradon(op128, phantom128):
    sinogram = radon(phantom128, FULL, circle=False).T
    ours = op128.direct(torch.from_numpy(sinogram)[None])[0, 0].numpy()
    reference = iradon(sinogram.T, FULL, circle=False, filter_name="ramp", output_size=128)
    assert rel_error(ours, reference) < 0.01  # measured 1e-4
    from_ours = op128.direct(op128.forward(as_image(phantom128)))[0, 0].numpy()
    assert rel_error(from_ours, phantom128) < 0.15  # edges of a piecewise-constant phantom (iradon: 0.137)
    assert abs(from_ours.mean() / phantom128.mean() - 1) < 0.01  # same units, no scale error


@pytest.mark.parametrize("filter_name", FILTERS)
def test_fbp_filters_match_iradon(filter_name):
    n = 48
    image = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True)
    theta = np.linspace(0, 180, 60, endpoint=False)
    sinogram = radon(image, theta, circle=False)
    op = RadonOperator((1, n, n), theta, filter=filter_name, dtype=torch.float64)
    ours = op.direct(torch.from_numpy(sinogram.T.copy())[None])[0, 0].numpy()
    reference = iradon(sinogram, theta, circle=False, filter_name=filter_name, output_size=n)
    assert rel_error(ours, reference) < 0.02


@pytest.mark.parametrize("pixel_size,spacing", [(1.0, 1.0), (0.5, 0.8)])
def test_fbp_of_smooth_image_in_physical_units(pixel_size, spacing):
    """FBP(A x) = x for a smooth image, whatever the pixel size and detector spacing."""
    n = 64
    r, c = np.mgrid[:n, :n] - n // 2
    image = 0.02 * np.exp(-(r**2 + c**2) / (2 * 8.0**2)) + 0.01 * np.exp(-((r - 6) ** 2 + (c + 9) ** 2) / (2 * 4.0**2))
    op = RadonOperator((1, n, n), FULL, spacing=spacing, pixel_size=pixel_size, filter="ramp", dtype=torch.float64)
    recon = op.direct(op.forward(as_image(image)))[0, 0].numpy()
    assert rel_error(recon, image) < 0.02


def test_more_views_give_much_better_fbp(phantom128):
    truth = as_image(phantom128)
    quality = {}
    for views in (180, 30):
        op = RadonOperator((1, 128, 128), np.linspace(0, 180, views, endpoint=False), filter="ramp", dtype=torch.float64)
        quality[views] = psnr(op.direct(op.forward(truth))[0, 0].numpy(), phantom128)
    assert quality[180] > quality[30] + 6.0, quality  # measured 30.5 dB vs 21.3 dB


def test_config_round_trip_through_json():
    op = RadonOperator(
        (1, 30, 26), np.linspace(0, 150, 17), 44, 0.9, 0.6, "cosine", NoiseModel("transmission", photons=1e4),
        dtype=torch.float64,
    )
    params = op.params()
    assert params["angles_deg"] == pytest.approx(list(np.linspace(0, 150, 17)))
    assert (params["detectors"], params["spacing"], params["pixel_size"], params["filter"]) == (44, 0.9, 0.6, "cosine")
    assert params["noise"] == {"kind": "transmission", "photons": 1e4}
    text, arrays = config_to_json(op.to_config())
    config = config_from_json(json.dumps(json.loads(text)), arrays)
    rebuilt = RadonOperator.from_config(config["params"], dtype=torch.float64)
    assert rebuilt.params() == params
    x = op.random_image(2, torch.Generator().manual_seed(1))
    assert torch.equal(rebuilt.forward(x), op.forward(x))
    y = op.forward(x)
    assert torch.equal(rebuilt.direct(y), op.direct(y))


def test_batch_of_three_equals_three_singles():
    op = RadonOperator(**GEOMETRIES["limited-angle"], dtype=torch.float64)
    x = op.random_image(3, torch.Generator().manual_seed(2))
    for method, data in ((op.forward, x), (op.adjoint, op.forward(x)), (op.direct, op.forward(x))):
        batched = method(data)
        singles = torch.cat([method(data[i : i + 1]) for i in range(3)])
        assert torch.allclose(batched, singles, rtol=1e-12, atol=1e-12), method.__name__


def test_float32_agrees_with_float64():
    op64 = RadonOperator(**GEOMETRIES["sparse-view"], dtype=torch.float64)
    op32 = RadonOperator(**GEOMETRIES["sparse-view"], dtype=torch.float32)
    moved = op64.to(dtype=torch.float32)
    x = op64.random_image(2, torch.Generator().manual_seed(3))
    y64 = op64.forward(x)
    for op in (op32, moved):
        y32 = op.forward(x.float())
        assert y32.dtype == torch.float32
        assert float((y32.double() - y64).abs().max() / y64.abs().max()) < 1e-5
        fbp32 = op.direct(y32)
        fbp64 = op64.direct(y64)
        assert float((fbp32.double() - fbp64).abs().max() / fbp64.abs().max()) < 1e-4


def test_device_moves_keep_the_numbers():
    op = RadonOperator(**GEOMETRIES["full"], dtype=torch.float64)
    x = op.random_image(2, torch.Generator().manual_seed(4))
    y = op.forward(x)
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        moved = op.to(device=device)
        assert moved.device.type == device
        assert torch.allclose(moved.forward(x.to(device)).cpu(), y, rtol=1e-10, atol=1e-12)
        assert torch.allclose(moved.adjoint(y.to(device)).cpu(), op.adjoint(y), rtol=1e-10, atol=1e-12)
        assert torch.allclose(moved.direct(y.to(device)).cpu(), op.direct(y), rtol=1e-10, atol=1e-12)


BAD_PARAMS = {
    "no views": ({"angles_deg": []}, "at least one view"),
    "nan angle": ({"angles_deg": [0.0, float("nan")]}, "NaN"),
    "zero detectors": ({"detectors": 0}, "detectors must be positive"),
    "negative detectors": ({"detectors": -5}, "detectors must be positive"),
    "fractional detectors": ({"detectors": 2.5}, "whole number"),
    "zero spacing": ({"spacing": 0.0}, "detector spacing must be a positive"),
    "negative spacing": ({"spacing": -1.0}, "detector spacing must be a positive"),
    "infinite pixel size": ({"pixel_size": float("inf")}, "pixel size must be a positive"),
    "unknown filter": ({"filter": "butterworth"}, "unknown FBP filter 'butterworth'"),
    "two channels": ({"image_shape": [2, 16, 16]}, "C = 1"),
    "bad image shape": ({"image_shape": [1, 0, 16]}, "image shape"),
    "unknown key": ({"circle": True}, "unknown radon operator parameter(s): circle"),
    "bad noise": ({"noise": {"kind": "laplace"}}, "unknown noise model"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_geometry_raises_input_error(case):
    change, message = BAD_PARAMS[case]
    params = {"image_shape": [1, 16, 16], "angles_deg": [0.0, 90.0], **change}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        RadonOperator.from_config(params)
    assert str(info.value).endswith(".") and "\n" not in str(info.value)


def test_missing_angles_raise_input_error():
    with pytest.raises(InputError, match="lacks angles_deg"):
        RadonOperator.from_config({"image_shape": [1, 16, 16]})


def test_wrong_shapes_are_refused():
    op = RadonOperator((1, 16, 16), [0.0, 45.0])
    with pytest.raises(ValueError, match="expected images"):
        op.forward(torch.zeros(1, 1, 16, 17))
    with pytest.raises(ValueError, match="expected sinograms"):
        op.adjoint(torch.zeros(1, 3, op.detectors))
