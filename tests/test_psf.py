"""PSF models: Gaussian moments, Airy zeros/FWHM/pixel integration, reading files, --psf specs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy import integrate
from scipy.special import j1

from invdiff.errors import InputError
from invdiff.operators.psf import (
    AIRY_FIRST_ZERO,
    airy_psf,
    gaussian_psf,
    parse_psf_spec,
    read_psf,
)


def radial_std(psf: np.ndarray) -> tuple[float, float]:
    """Standard deviation along rows and columns about the centre pixel (pixels)."""
    rows = np.arange(psf.shape[0]) - psf.shape[0] // 2
    cols = np.arange(psf.shape[1]) - psf.shape[1] // 2
    return (
        math.sqrt(float((psf.sum(axis=1) * rows**2).sum())),
        math.sqrt(float((psf.sum(axis=0) * cols**2).sum())),
    )


# --- Gaussian ------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.8, 1.3, 3.0])
def test_gaussian_sums_to_one_and_has_requested_std(sigma):
    psf = gaussian_psf(sigma)
    assert psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(psf.argmax(), psf.shape) == (psf.shape[0] // 2, psf.shape[1] // 2)
    # default window (4 sigma) loses ~1e-3 of the variance; a wide window matches closely
    assert radial_std(psf) == pytest.approx((sigma, sigma), rel=2e-3)
    assert radial_std(gaussian_psf(sigma, size=int(24 * sigma) + 1)) == pytest.approx((sigma, sigma), rel=3e-4)


def test_gaussian_even_size_is_centred_on_the_origin_pixel():
    psf = gaussian_psf(1.0, size=8)
    assert psf.shape == (8, 8)
    assert np.unravel_index(psf.argmax(), psf.shape) == (4, 4)
    np.testing.assert_allclose(psf[1:, 1:], psf[1:, 1:][::-1, ::-1], rtol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_gaussian_rejects_bad_sigma(bad):
    with pytest.raises(InputError, match="sigma"):
        gaussian_psf(bad)


# --- Airy ----------------------------------------------------------------------------------
WAVELENGTH, NA = 500.0, 1.0
FINE_PIXEL = WAVELENGTH / NA / 100  # 100 pixels per lambda/NA


@pytest.fixture(scope="module")
def fine_airy_profile() -> np.ndarray:
    psf = airy_psf(WAVELENGTH, NA, FINE_PIXEL, size=161)
    return psf[80, 80:]  # from the centre outwards along a row, r = index * FINE_PIXEL


def test_airy_first_zero_at_061_lambda_over_na(fine_airy_profile):
    profile = fine_airy_profile
    r0 = 0.61 * WAVELENGTH / NA / FINE_PIXEL  # pixels
    lo, hi = int(0.4 * r0), int(1.3 * r0)
    i = lo + int(np.argmin(profile[lo:hi]))
    a, b, c = profile[i - 1 : i + 2]
    r_min = i + 0.5 * (a - c) / (a - 2 * b + c)  # parabolic refinement, pixels
    assert abs(r_min - r0) < 0.25, (r_min, r0)
    assert abs(r_min - AIRY_FIRST_ZERO * WAVELENGTH / NA / FINE_PIXEL) < 0.1
    assert profile[i] < 1e-4 * profile[0]


def test_airy_fwhm_is_051_lambda_over_na(fine_airy_profile):
    profile = fine_airy_profile
    half = profile[0] / 2
    j = int(np.argmax(profile < half))
    r_half = j - 1 + (profile[j - 1] - half) / (profile[j - 1] - profile[j])  # linear interpolation
    fwhm_px = 2 * r_half
    assert abs(fwhm_px - 0.51 * WAVELENGTH / NA / FINE_PIXEL) < 1.0
    assert abs(fwhm_px - 0.5145 * WAVELENGTH / NA / FINE_PIXEL) < 0.2


def _pixel_integral(i: int, j: int, pixel: float, wavelength: float, na: float) -> float:
    """Independent reference: adaptive quadrature of [2 J1(v)/v]^2 over pixel (i, j)."""

    def intensity(y: float, x: float) -> float:
        v = 2 * math.pi * na * math.hypot(x, y) / wavelength
        return 1.0 if v == 0 else (2 * j1(v) / v) ** 2

    x0, y0 = (j - 0.5) * pixel, (i - 0.5) * pixel
    value, _ = integrate.dblquad(intensity, x0, x0 + pixel, y0, y0 + pixel, epsabs=1e-12, epsrel=1e-8)
    return value


@pytest.mark.parametrize("pixel", [400.0, 150.0])
def test_airy_is_integrated_over_big_pixels(pixel):
    wavelength, na = 520.0, 1.4  # lambda/NA = 371 nm: pixels of 1.08 and 0.40 Airy units
    psf = airy_psf(wavelength, na, pixel, size=7)
    c = 3
    centre = _pixel_integral(0, 0, pixel, wavelength, na)
    for di, dj in [(0, 1), (1, 1), (0, 2)]:
        reference = _pixel_integral(di, dj, pixel, wavelength, na) / centre
        assert psf[c + di, c + dj] / psf[c, c] == pytest.approx(reference, rel=2e-3)
    # point sampling would be far off for big pixels: the check above can fail
    v = 2 * math.pi * na * pixel / wavelength
    point_ratio = (2 * j1(v) / v) ** 2
    assert abs(psf[c, c + 1] / psf[c, c] - point_ratio) > 0.01


def test_airy_is_normalised_and_symmetric():
    psf = airy_psf(520.0, 1.4, 65.0)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf.shape[0] % 2 == 1 and psf.shape[0] >= 2 * 3 * (520 / 1.4) / 65
    np.testing.assert_allclose(psf, psf.T, atol=1e-15)
    np.testing.assert_allclose(psf, psf[::-1, ::-1], atol=1e-15)


@pytest.mark.parametrize(
    "args, word",
    [((0, 1.4, 65), "wavelength"), ((520, -1, 65), "numerical aperture"), ((520, 1.4, float("nan")), "pixel")],
)
def test_airy_rejects_bad_optics(args, word):
    with pytest.raises(InputError, match=word):
        airy_psf(*args)


def test_airy_rejects_absurdly_fine_pixels():
    with pytest.raises(InputError, match="pixel size"):
        airy_psf(520.0, 1.4, 0.01)


# --- measured PSFs -------------------------------------------------------------------------
def _bead_stack() -> tuple[np.ndarray, np.ndarray]:
    """A 3-plane stack (z, 21, 25) with background 100 and a bead off-centre at (8, 14);
    the middle plane is in focus. Returns the stack and the expected normalised PSF."""
    stack = np.full((3, 21, 25), 100.0)
    bead = 1000 * gaussian_psf(1.5, size=9)  # centre pixel (4, 4)
    stack[1, 4:13, 10:19] += bead  # in focus: bead centred at (8, 14)
    stack[0, 4:13, 10:19] += 0.3 * bead
    stack[2, 4:13, 10:19] += 0.5 * bead
    return stack, bead / bead.sum()


def _check_recentred(psf: np.ndarray, bead: np.ndarray, atol: float = 1e-12) -> None:
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert psf.min() >= 0
    assert psf.shape[0] % 2 == 1 and psf.shape[1] % 2 == 1
    c = (psf.shape[0] // 2, psf.shape[1] // 2)
    np.testing.assert_allclose(psf[c[0] - 4 : c[0] + 5, c[1] - 4 : c[1] + 5], bead, atol=atol)


def test_read_psf_npy_stack_takes_in_focus_plane_and_recentres(tmp_path):
    stack, bead = _bead_stack()
    np.save(tmp_path / "psf.npy", stack)
    _check_recentred(read_psf(tmp_path / "psf.npy"), bead)


def test_read_psf_tiff_matches_npy(tmp_path):
    stack, bead = _bead_stack()
    tifffile.imwrite(tmp_path / "psf.tif", stack.astype(np.float32), photometric="minisblack")
    np.save(tmp_path / "psf.npy", stack[1])
    from_tiff = read_psf(tmp_path / "psf.tif")
    _check_recentred(from_tiff, bead, atol=1e-7)  # float32 file
    np.testing.assert_allclose(from_tiff, read_psf(tmp_path / "psf.npy"), atol=1e-6)


def _write(path, array):
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "absent.npy", "not found"),
        (lambda d: _write(d / "line.npy", np.ones(7)), "2-D"),
        (lambda d: _write(d / "nan.npy", np.full((5, 5), np.nan)), "NaN"),
        (lambda d: _write(d / "flat.npy", np.full((5, 5), 3.0)), "empty"),
        (lambda d: (d / "psf.png").write_bytes(b"x") and d / "psf.png", "must be .tif"),
        (lambda d: (d / "broken.tif").write_bytes(b"not a tiff") and d / "broken.tif", "cannot read"),
    ],
)
def test_read_psf_rejects_bad_files(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        read_psf(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


# --- --psf specs ---------------------------------------------------------------------------
def test_parse_psf_spec_models_and_files(tmp_path):
    np.testing.assert_array_equal(parse_psf_spec("gaussian:2.5"), gaussian_psf(2.5))
    np.testing.assert_array_equal(parse_psf_spec(" Airy:520, 1.4 ,65"), airy_psf(520, 1.4, 65))
    stack, bead = _bead_stack()
    np.save(tmp_path / "bead.npy", stack)
    _check_recentred(parse_psf_spec(str(tmp_path / "bead.npy")), bead)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "gaussian:",
        "gaussian:abc",
        "gaussian:-1",
        "gaussian:1,2",
        "gaussian:nan",
        "airy:520,1.4",
        "airy:520,1.4,65,3",
        "airy:520,x,65",
        "airy:520,0,65",
        "airy:,,",
        "lorentzian:2",
        "no/such/file.tif",
    ],
)
def test_parse_psf_spec_rejects_bad_specs_with_one_sentence(spec):
    with pytest.raises(InputError) as info:
        parse_psf_spec(spec)
    message = str(info.value)
    assert message.endswith(".") and "\n" not in message
    assert "--psf" in message or "PSF" in message
