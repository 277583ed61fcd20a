"""Coil maps: the birdcage model and ESPIRiT estimation against the true maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from invdiff.errors import InputError
from invdiff.operators.coils import birdcage_maps, calibration_box, estimate_maps
from invdiff.operators.masks import random_line_mask
from invdiff.operators.mri import MRIOperator

H, W, COILS = 48, 40, 6


def brain_phantom(height: int, width: int) -> np.ndarray:
    """A smooth brain-like complex image: a soft ellipse ("skull"), brighter blobs inside,
    a slow phase ramp; zero background."""
    yy, xx = np.mgrid[:height, :width]
    yy, xx = (yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2)
    head = gaussian_filter(((xx / 0.75) ** 2 + (yy / 0.85) ** 2 < 1).astype(float), 1.5)
    blobs = gaussian_filter((((xx - 0.25) ** 2 + (yy + 0.2) ** 2) < 0.06).astype(float), 2)
    ventricle = gaussian_filter((((xx + 0.2) / 0.15) ** 2 + ((yy - 0.1) / 0.3) ** 2 < 1).astype(float), 1)
    return (0.6 * head + 0.4 * blobs - 0.3 * ventricle) * np.exp(1j * (0.8 * xx - 0.4 * yy))


def simulate_kspace(image: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(coils, H, W)`` k-space through the operator under test (its FFT is checked in test_mri)."""
    op = MRIOperator((2, *image.shape), mask, maps, dtype=torch.float64)
    x = torch.from_numpy(np.stack([image.real, image.imag]))[None]
    return op.forward(x)[0].numpy()


def map_agreement(estimated: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``|<S_est(r), S_true(r)>|`` per pixel: 1 when equal up to a phase per pixel."""
    return np.abs((estimated.conj() * truth).sum(axis=0))


# --- birdcage --------------------------------------------------------------------------------
def test_birdcage_maps_are_normalised_and_point_at_their_coil():
    maps = birdcage_maps(COILS, H, W)
    assert maps.shape == (COILS, H, W) and np.iscomplexobj(maps)
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(axis=0), 1.0, rtol=1e-12)
    # coil c sits at angle 2 pi c / coils: coil 0 on the right (+x), coil COILS/2 on the left
    right, left = np.abs(maps[0, H // 2, -1]), np.abs(maps[0, H // 2, 0])
    assert right > 2 * left
    assert np.abs(maps[COILS // 2, H // 2, 0]) > 2 * np.abs(maps[COILS // 2, H // 2, -1])
    # the maps are smooth: neighbouring pixels differ little
    assert np.abs(np.diff(maps, axis=-1)).max() < 0.2


def test_birdcage_bad_input():
    with pytest.raises(InputError, match="--coils"):
        birdcage_maps(0, 8, 8)
    with pytest.raises(InputError, match="radius"):
        birdcage_maps(4, 8, 8, radius=1.0)


# --- ESPIRiT ---------------------------------------------------------------------------------
def test_espirit_recovers_birdcage_maps_from_full_kspace():
    image = brain_phantom(H, W)
    truth = birdcage_maps(COILS, H, W)
    kspace = simulate_kspace(image, truth, np.ones((H, W)))
    estimated = estimate_maps(kspace, calib_size=20)
    assert estimated.shape == (COILS, H, W)
    support = np.abs(image) > 0.2 * np.abs(image).max()
    agreement = map_agreement(estimated, truth)[support]
    assert agreement.min() > 0.95, agreement.min()
    # the test can fail: mirrored maps (a flipped FFT convention) do not agree
    assert map_agreement(estimated, truth[:, ::-1, ::-1])[support].mean() < 0.9
    assert map_agreement(estimated, truth.conj())[support].mean() < 0.9


def test_espirit_from_undersampled_kspace_uses_the_fully_sampled_centre():
    image = brain_phantom(H, W)
    truth = birdcage_maps(COILS, H, W)
    mask = random_line_mask((H, W), 3, 0.4, seed=0)  # 16 centre lines
    kspace = simulate_kspace(image, truth, mask)
    rows, cols = calibration_box(kspace, 24)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (24, 16)
    estimated = estimate_maps(kspace)
    support = np.abs(image) > 0.2 * np.abs(image).max()
    assert map_agreement(estimated, truth)[support].min() > 0.95


def test_espirit_maps_give_sense_reconstruction_of_the_image():
    """With estimated maps, the fully sampled coil-combined image is the phantom times a
    smooth phase (ESPIRiT fixes maps up to a phase): its magnitude matches."""
    image = brain_phantom(H, W)
    kspace = simulate_kspace(image, birdcage_maps(COILS, H, W), np.ones((H, W)))
    op = MRIOperator((2, H, W), np.ones((H, W)), estimate_maps(kspace, calib_size=20), dtype=torch.float64)
    recon = op.direct(torch.from_numpy(kspace)[None])[0].numpy()
    support = np.abs(image) > 0.2 * np.abs(image).max()
    error = np.abs(np.hypot(recon[0], recon[1]) - np.abs(image))[support]
    assert error.max() < 0.05 * np.abs(image).max()


def test_espirit_bad_input():
    kspace = np.zeros((4, 32, 32), complex)
    kspace[:, :, 14:18] = 1  # only 4 centre lines
    with pytest.raises(InputError, match="fully sampled k-space centre"):
        estimate_maps(kspace)
    with pytest.raises(InputError, match="NaN"):
        estimate_maps(np.full((2, 16, 16), np.nan, complex))
    with pytest.raises(InputError, match=r"\(coils, H, W\)"):
        estimate_maps(np.zeros((2, 2, 16, 16), complex))
