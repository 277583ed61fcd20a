"""Head-CT slices in Hounsfield units for training and held-out testing of CT priors.

    python examples/fetch_data.py cranium && python examples/prepare_ct.py [--png /tmp/ct.png]

Source: ``Cranium.inv3`` from the Debian package ``invesalius-examples`` (InVesalius project,
CTI Renato Archer; GPL-2, so it is fetched into the cache and never committed). The .inv3 file
is a gzip tar holding ``main.plist`` (shape, dtype, spacing) and ``matrix.dat``, a raw
little-endian int16 volume ``(108, 256, 256)`` = (axial slices inferior -> superior, rows,
columns) in Hounsfield units, pixel 0.957 mm, slice step 1.5 mm. It includes the scanner's
curved head holder (visible as an arc behind the head).

Orientation: InVesalius stores rows bottom-up (VTK order); rows are flipped back so the face is
at the top of every image (the usual radiological display). Left/right could not be checked
against DICOM orientation tags (the .inv3 has none).

Split (BENCHMARKS.md refers to it): the held-out block is the 8 contiguous axial slices
``HELD_START .. HELD_START + 7`` (mid-cerebrum, above the orbits, below the vertex), with a guard
band of ``GUARD`` slices on each side that is never trained on and never scored (it is written
for calibration). Every other slice is training data. The same slices are written at 256 (native) and 128 (anti-aliased resize, pixel 1.914 mm).

Another patient (since 2026-12-07, never trained on): the one axial head-CT slice in the ami.js
npm package (``ami_ct``: GE, 120 kV, 5 mm, 0.43 mm pixels, at the skull base with orbits and
sinuses), resampled to the same pixel size as the Cranium slices of each size and centred, air
around it: ``ct/other_{256,128}.npy`` and ``_mu.npy``. One slice: a check, not a benchmark.

Writes under ``$INVDIFF_CACHE`` (default ~/.cache/invdiff):
  ct/train_256.npy, ct/heldout_256.npy, ct/train_128.npy, ct/heldout_128.npy
      float32 (N, H, W), Hounsfield units (air -1024, water 0, bone up to ~3000)
  ct/{train,heldout}_{256,128}_mu.npy
      the same slices as relative linear attenuation mu / mu_water = 1 + HU / 1000 (>= 0): what
      the CT prior data/priors/ct128 is trained on
  ct/guard_{256,128}.npy, ct/guard_{256,128}_mu.npy   the guard band's 6 slices, the same units:
      never trained on, never scored; with the 2 held-out slices the benchmark does not score
      they are the 8 slices the shipped calibration of data/priors/ct128 is fitted on
      (examples/calibrate_priors.py --prior ct128)
  ct/other_{256,128}.npy, ct/other_{256,128}_mu.npy   the other patient's slice, the same units
  ct/cranium.json   spacing (mm) per size, slice indices of each split, source and checksum
"""

from __future__ import annotations

import argparse
import json
import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fetch_data import SOURCES, cache_dir, fetch  # noqa: E402

from invdiff.io.atomic import atomic_path, atomic_write_text  # noqa: E402

HELD_START, HELD_BLOCK, GUARD = 62, 8, 3
SIZES = (256, 128)
AIR_HU = -1024.0


def read_inv3(path: Path) -> tuple[np.ndarray, dict]:
    """The int16 HU volume ``(slices, rows, cols)`` and the main.plist dict of an .inv3 project."""
    with tarfile.open(path, "r:gz") as tf:
        members = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
        plist = plistlib.load(tf.extractfile(members["main.plist"]))
        info = plist["matrix"]
        raw = tf.extractfile(members[info["filename"]]).read()
    shape = tuple(int(s) for s in info["shape"])
    volume = np.frombuffer(raw, dtype=np.dtype(info["dtype"]).newbyteorder("<")).reshape(shape)
    return volume, plist


def to_display(volume: np.ndarray) -> np.ndarray:
    """Flip rows so the face is at the top of each axial slice."""
    return np.ascontiguousarray(volume[:, ::-1, :])


def resample(slices: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased resize of ``(N, H, W)`` HU slices to ``(N, size, size)`` float32."""
    if slices.shape[1:] == (size, size):
        return slices.astype(np.float32)
    out = resize(slices.astype(np.float64), (slices.shape[0], size, size), order=1, anti_aliasing=True,
                 preserve_range=True, mode="edge")
    return np.clip(out, AIR_HU, None).astype(np.float32)


def relative_attenuation(hu: np.ndarray) -> np.ndarray:
    """``mu / mu_water = 1 + HU / 1000``, clipped at 0 (air): the units a sinogram's
    reconstruction has up to one factor, and so the units a CT prior is trained in."""
    return np.clip(1.0 + hu / 1000.0, 0.0, None).astype(np.float32)


def other_patient(pixel_mm: float, size: int) -> np.ndarray:
    """The ``ami_ct`` slice in HU as ``(1, size, size)`` float32 at ``pixel_mm`` per pixel:
    anti-aliased resize from its own pixel spacing, then centred and padded with air (or cropped)."""
    from invdiff.io.images import read_images

    stack = read_images(fetch("ami_ct"))  # HU (rescale applied), spacing (slice, row, column) in mm
    hu = stack.data[0].astype(np.float64)
    rows, cols = (max(1, round(n * px / pixel_mm)) for n, px in zip(hu.shape, stack.spacing[1:]))
    small = resize(hu, (rows, cols), order=1, anti_aliasing=True, preserve_range=True, mode="edge")
    small = np.clip(small, AIR_HU, None)
    out = np.full((size, size), AIR_HU, np.float32)
    r0, c0 = (size - rows) // 2, (size - cols) // 2
    src = small[max(0, -r0) : max(0, -r0) + min(rows, size), max(0, -c0) : max(0, -c0) + min(cols, size)]
    out[max(0, r0) : max(0, r0) + src.shape[0], max(0, c0) : max(0, c0) + src.shape[1]] = src
    return out[None]


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def split(n_slices: int) -> tuple[list[int], list[int], list[int]]:
    held = list(range(HELD_START, HELD_START + HELD_BLOCK))
    guard = [i for i in range(HELD_START - GUARD, HELD_START + HELD_BLOCK + GUARD) if i not in held]
    train = [i for i in range(n_slices) if i not in held and i not in guard]
    return train, held, guard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, help="write a few held-out slices (window W400/L40) to this PNG")
    args = parser.parse_args()

    source = fetch("cranium")
    volume, plist = read_inv3(source)
    volume = to_display(volume).astype(np.float32)
    spacing = [float(s) for s in plist["spacing"]]  # (col mm, row mm, slice mm)
    train, held, guard = split(volume.shape[0])
    out = cache_dir() / "ct"
    summary = {
        "source": {"name": "cranium", **SOURCES["cranium"], "inv3_name": plist.get("name"), "licence": "GPL-2"},
        "units": "Hounsfield",
        "orientation": "axial slices inferior->superior; rows flipped from InVesalius order so anterior is up",
        "slice_thickness_mm": spacing[2],
        "train_slices": train,
        "heldout_slices": held,
        "guard_slices": guard,
        "sizes": {},
    }
    print(f"Cranium.inv3 {volume.shape} HU [{volume.min():.0f}, {volume.max():.0f}], spacing {spacing} mm")
    for size in SIZES:
        pixel_mm = spacing[0] * volume.shape[2] / size
        for name, index in (("train", train), ("heldout", held), ("guard", guard)):
            slices = resample(volume[index], size)
            save_npy(out / f"{name}_{size}.npy", slices)
            save_npy(out / f"{name}_{size}_mu.npy", relative_attenuation(slices))
            print(f"  ct/{name}_{size}.npy  {slices.shape}  HU [{slices.min():.0f}, {slices.max():.0f}]"
                  f"  mean {slices.mean():.0f}")
        other = other_patient(pixel_mm, size)
        save_npy(out / f"other_{size}.npy", other)
        save_npy(out / f"other_{size}_mu.npy", relative_attenuation(other))
        print(f"  ct/other_{size}.npy  {other.shape}  HU [{other.min():.0f}, {other.max():.0f}]  (ami_ct)")
        summary["sizes"][str(size)] = {"pixel_mm": pixel_mm, "field_of_view_mm": pixel_mm * size}
    atomic_write_text(out / "cranium.json", json.dumps(summary, indent=1) + "\n")
    print(f"  held-out slices {held[0]}..{held[-1]}, guard {guard}, {len(train)} training slices -> {out}")
    if args.png:
        from invdiff.io.png import save_png

        shown = np.concatenate(list(resample(volume[held[::3]], 256)), axis=1)
        save_png(args.png, np.clip((shown + 160.0) / 400.0, 0, 1), 0.0, 1.0)
        print(f"  preview {args.png}")


if __name__ == "__main__":
    main()
