"""Sampling masks: fastMRI's line masks against a re-implementation of its algorithm,
centre lines, acceleration, seeding; variable-density Poisson-disc masks."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from invdiff.errors import InputError
from invdiff.operators.masks import (
    equispaced_line_mask,
    make_mask,
    poisson_disc_mask,
    random_line_mask,
)


# --- fastMRI's algorithm, re-implemented from fastmri/data/subsample.py ---------------------------
@contextlib.contextmanager
def temp_seed(rng: np.random.RandomState, seed):
    state = rng.get_state()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.set_state(state)


class FastMRIRandomMaskFunc:
    """fastMRI's RandomMaskFunc (one (center_fraction, acceleration) pair): ``__call__(shape,
    seed)`` on a k-space shape (..., rows, cols, 2) samples the second-to-last axis."""

    def __init__(self, center_fractions, accelerations):
        self.center_fractions, self.accelerations = center_fractions, accelerations
        self.rng = np.random.RandomState()

    def __call__(self, shape, seed):
        with temp_seed(self.rng, seed):
            choice = self.rng.randint(0, len(self.accelerations))
            center_fraction, acceleration = self.center_fractions[choice], self.accelerations[choice]
            num_cols = shape[-2]
            num_low_freqs = int(round(num_cols * center_fraction))
            prob = (num_cols / acceleration - num_low_freqs) / (num_cols - num_low_freqs)
            mask = self.rng.uniform(size=num_cols) < prob
            pad = (num_cols - num_low_freqs + 1) // 2
            mask[pad : pad + num_low_freqs] = True
        return mask.astype(np.float32)


class FastMRIEquispacedMaskFractionFunc(FastMRIRandomMaskFunc):
    def __call__(self, shape, seed):
        with temp_seed(self.rng, seed):
            choice = self.rng.randint(0, len(self.accelerations))
            center_fraction, acceleration = self.center_fractions[choice], self.accelerations[choice]
            num_cols = shape[-2]
            num_low_freqs = int(round(num_cols * center_fraction))
            mask = np.zeros(num_cols, dtype=np.float32)
            pad = (num_cols - num_low_freqs + 1) // 2
            mask[pad : pad + num_low_freqs] = True
            adjusted_accel = (acceleration * (num_low_freqs - num_cols)) / (num_low_freqs * acceleration - num_cols)
            offset = self.rng.randint(0, round(adjusted_accel))
            accel_samples = np.around(np.arange(offset, num_cols - 1, adjusted_accel)).astype(np.uint)
            mask[accel_samples] = True
        return mask


CASES = [((640, 368), 4, 0.08), ((320, 320), 8, 0.04), ((16, 37), 3, 0.2), ((8, 64), 4.5, 0.1)]


@pytest.mark.parametrize("shape, acceleration, center_fraction", CASES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_random_mask_equals_fastmri(shape, acceleration, center_fraction, seed):
    reference = FastMRIRandomMaskFunc([center_fraction], [acceleration])((1, *shape, 2), seed)
    mask = random_line_mask(shape, acceleration, center_fraction, seed)
    assert mask.shape == shape and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.broadcast_to(reference, shape))


@pytest.mark.parametrize("shape, acceleration, center_fraction", CASES[:3])
@pytest.mark.parametrize("seed", [0, 7])
def test_equispaced_mask_equals_fastmri(shape, acceleration, center_fraction, seed):
    reference = FastMRIEquispacedMaskFractionFunc([center_fraction], [acceleration])((1, *shape, 2), seed)
    mask = equispaced_line_mask(shape, acceleration, center_fraction, seed)
    np.testing.assert_array_equal(mask, np.broadcast_to(reference, shape))
    if shape[1] >= 64:  # lines that fall inside the centre block count once: coarse on tiny grids
        assert abs(shape[1] / mask[0].sum() - acceleration) / acceleration < 0.1


@pytest.mark.parametrize("maker", [random_line_mask, equispaced_line_mask])
@pytest.mark.parametrize("width, center_fraction", [(368, 0.08), (320, 0.04), (33, 0.15)])
def test_centre_lines(maker, width, center_fraction):
    mask = maker((4, width), 4, center_fraction, 3)
    num_low = round(width * center_fraction)
    pad = (width - num_low + 1) // 2
    assert (mask == mask[:1]).all()  # every readout row is the same: lines are columns
    assert mask[0, pad : pad + num_low].all()
    # the DC column W // 2 is in the centre block, which is centred to within one line
    assert pad <= width // 2 < pad + num_low
    assert abs((pad + pad + num_low - 1) / 2 - width // 2) <= 1


def test_random_mask_acceleration_on_average():
    """E[#lines] = W / acceleration exactly, by the choice of the line probability."""
    width, acceleration = 368, 4
    counts = [random_line_mask((1, width), acceleration, 0.08, seed)[0].sum() for seed in range(300)]
    assert abs(np.mean(counts) - width / acceleration) < 0.02 * width / acceleration


def test_seeding_is_reproducible_and_seed_dependent():
    for maker in (random_line_mask, equispaced_line_mask):
        a = maker((8, 128), 4, 0.08, 5)
        np.testing.assert_array_equal(a, maker((8, 128), 4, 0.08, 5))
    assert not np.array_equal(random_line_mask((8, 128), 4, 0.08, 5), random_line_mask((8, 128), 4, 0.08, 6))
    np.testing.assert_array_equal(poisson_disc_mask((24, 24), 4, 3, (4, 4)), poisson_disc_mask((24, 24), 4, 3, (4, 4)))
    assert not np.array_equal(poisson_disc_mask((24, 24), 4, 3, (4, 4)), poisson_disc_mask((24, 24), 4, 4, (4, 4)))


# --- Poisson disc ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, acceleration, calib", [((32, 32), 4, (6, 6)), ((40, 28), 6, (5, 4)), ((32, 32), 8, (4, 4))])
def test_poisson_disc_acceleration_and_calibration(shape, acceleration, calib):
    mask = poisson_disc_mask(shape, acceleration, seed=1, calib=calib)
    assert mask.shape == shape and set(np.unique(mask)) <= {0.0, 1.0}
    achieved = mask.size / mask.sum()
    assert abs(achieved - acceleration) / acceleration < 0.1, achieved
    cy, cx = shape[0] // 2, shape[1] // 2
    box = mask[cy - calib[0] // 2 : cy - calib[0] // 2 + calib[0], cx - calib[1] // 2 : cx - calib[1] // 2 + calib[1]]
    assert box.shape == calib and box.all()


def test_poisson_disc_is_variable_density_and_spread():
    shape = (48, 48)
    mask = poisson_disc_mask(shape, 5, seed=2, calib=(4, 4))
    ky, kx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(ky - 24, kx - 24) / 24
    inner_ring = mask[(d > 0.15) & (d < 0.45)].mean()
    outer_ring = mask[(d > 0.7) & (d < 1.0)].mean()
    assert inner_ring > 1.5 * outer_ring  # density falls with the distance from the centre
    # a Poisson-disc set has no two sampled neighbours outside the (dense) centre
    outside = (d > 0.3) & (mask > 0)
    neighbours = outside[1:, :] & outside[:-1, :]
    assert not neighbours.any() and not (outside[:, 1:] & outside[:, :-1]).any()
    # and no large empty holes: every 8x8 block holds a sample
    blocks = mask.reshape(6, 8, 6, 8).sum(axis=(1, 3))
    assert (blocks > 0).all()


# --- validation and dispatch ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: random_line_mask((8, 8), 0.5, 0.1, 0), "--acceleration"),
        (lambda: equispaced_line_mask((8, 8), float("nan"), 0.1, 0), "--acceleration"),
        (lambda: random_line_mask((8, 8), 4, 1.5, 0), "--center-fraction"),
        (lambda: random_line_mask((0, 8), 4, 0.1, 0), "shape"),
        (lambda: poisson_disc_mask((16, 16), 10, 0, (12, 12)), "impossible"),
        (lambda: poisson_disc_mask((16, 16), 4, 0, (20, 4)), "does not fit"),
        (lambda: make_mask("spiral", (8, 8), 4, 0.1, 0), "unknown --mask"),
    ],
)
def test_bad_input_raises_input_error(call, words):
    with pytest.raises(InputError, match=words):
        call()


def test_make_mask_dispatch():
    np.testing.assert_array_equal(make_mask("random", (8, 40), 4, 0.1, 3), random_line_mask((8, 40), 4, 0.1, 3))
    np.testing.assert_array_equal(make_mask("equispaced", (8, 40), 4, 0.1, 3), equispaced_line_mask((8, 40), 4, 0.1, 3))
    np.testing.assert_array_equal(make_mask("poisson", (25, 20), 4, 0.2, 3), poisson_disc_mask((25, 20), 4, 3, (5, 4)))
    assert make_mask("random", (8, 40), 1, 0.1, 0).all()  # acceleration 1: fully sampled
