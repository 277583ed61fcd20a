"""The dihedral test-time augmentation of examples/bench_denoise.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from bench_denoise import ORDER, denoise_augmented, dihedral, dihedral_inverse  # noqa: E402


def test_the_eight_elements_are_distinct_and_invertible():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)[..., :3]  # a 3x3 image with no symmetry
    images = {tuple(dihedral(x, g).flatten().tolist()) for g in range(8)}
    assert len(images) == 8
    for g in range(8):
        assert torch.equal(dihedral_inverse(dihedral(x, g), g), x)
    assert sorted(ORDER) == list(range(8))


def test_an_equivariant_denoiser_is_unchanged():
    y = torch.randn(2, 1, 8, 8)
    shrink = lambda z, sigma: z / (1 + sigma**2)  # noqa: E731  (commutes with every g)
    for n in (1, 2, 8):
        torch.testing.assert_close(denoise_augmented(shrink, y, 0.5, n), shrink(y, 0.5))


def test_averaging_symmetrises_a_denoiser_that_is_not_equivariant():
    y = torch.randn(1, 1, 6, 6)
    shift = lambda z, sigma: torch.roll(z, 1, dims=-1)  # noqa: E731
    full = denoise_augmented(shift, y, 0.1, 8)
    # the 8-element average is itself equivariant: augmenting it again changes nothing
    torch.testing.assert_close(denoise_augmented(lambda z, s: denoise_augmented(shift, z, s, 8), y, 0.1, 8), full)
    # and it is the mean of the four one-pixel shifts (the shift turned by each quarter turn)
    shifts = [torch.roll(y, 1, -1), torch.roll(y, -1, -1), torch.roll(y, 1, -2), torch.roll(y, -1, -2)]
    torch.testing.assert_close(full, torch.stack(shifts).mean(0))
    assert not torch.allclose(denoise_augmented(shift, y, 0.1, 1), full)
    with pytest.raises(ValueError):
        denoise_augmented(shift, y, 0.1, 9)
