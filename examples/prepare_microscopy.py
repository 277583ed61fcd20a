"""Fluorescence-microscopy crops and a bead PSF for deconvolution priors and benchmarks.

    python examples/fetch_data.py neuron bead bead_kernel && python examples/prepare_microscopy.py [--png P]

Sources (PyPI wheel ``flowdec==1.1.0``, Apache-2.0; the package states no separate licence for
its datasets, which it describes as 25 % downsamplings of the EPFL Biomedical Imaging Group's
deconvolution data sets, http://bigwww.epfl.ch/deconvolution/):

* ``flowdec/datasets/neuron-25pct/data.tif``: "Purkinje Neuron", widefield stack
  ``(50, 256, 256)`` float32 (8-bit range 23.75 .. 255).
* ``flowdec/datasets/bead-25pct/data.tif``: a fluorescent bead stack ``(64, 64, 64)``. The bead is
  larger than the resolution limit, so its image is the PSF convolved with the bead: a measured
  *effective* blur (FWHM about 6 pixels in focus), wider than the PSF itself.
* ``flowdec/datasets/bead-25pct/kernel.tif``: the theoretical PSF that goes with the bead stack
  (in focus it is about one pixel wide at this sampling).

Neuron protocol (BENCHMARKS.md refers to it): the stack is normalised to [0, 1] by
``(v - min) / (p99.5 - min)``, clipped (min = camera offset, p99.5 over the whole stack).
Images are single z-planes cut into 128x128 crops; a crop is kept when its 99th percentile
exceeds ``MIN_SIGNAL`` (it contains neuron, not only background). Held-out planes are the
contiguous block ``HELD_PLANES`` (below the focal peak at planes ~28-34), with the ``GUARD`` planes
on each side in neither set; training crops come from all other planes at stride 32, held-out
crops at stride 64.

Writes under ``$INVDIFF_CACHE`` (default ~/.cache/invdiff):
  microscopy/train_128.npy, microscopy/heldout_128.npy   float32 (N, 128, 128), [0, 1]
  microscopy/bead_psf.npy     in-focus plane of the bead stack (brightest plane, border-median
                              background subtracted, peak centred, cropped to the smallest odd
                              square holding 95 % of its mass, sum 1); loads with read_psf
  microscopy/kernel_psf.npy   the same for the theoretical kernel
  microscopy/neuron.json      split, normalisation constants, sources and checksums
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fetch_data import SOURCES, cache_dir, fetch  # noqa: E402

from invdiff.io.atomic import atomic_path, atomic_write_text  # noqa: E402

SIZE = 128
HELD_PLANES = range(38, 44)
GUARD = 3
MIN_SIGNAL = 0.3
PSF_MASS = 0.95  # the bead image has a wide out-of-focus halo: 99 % needs the whole 64x64 field


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def normalise(stack: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, high = float(stack.min()), float(np.percentile(stack, 99.5))
    return np.clip((stack - low) / (high - low), 0.0, 1.0).astype(np.float32), low, high


def crops(plane: np.ndarray, stride: int) -> list[np.ndarray]:
    h, w = plane.shape
    out = []
    for r in range(0, h - SIZE + 1, stride):
        for c in range(0, w - SIZE + 1, stride):
            crop = plane[r : r + SIZE, c : c + SIZE]
            if np.percentile(crop, 99) > MIN_SIGNAL:
                out.append(crop)
    return out


def in_focus_psf(stack: np.ndarray, mass: float = PSF_MASS) -> np.ndarray:
    """The in-focus plane of a PSF/bead stack ``(z, h, w)`` as a normalised 2D PSF, float64.

    The in-focus plane is the one with the brightest pixel (not the largest sum: out-of-focus
    planes of these stacks carry more background). The background (median of the plane's
    border pixels) is subtracted and negatives clipped, as in invdiff.operators.psf.read_psf;
    the peak is put at the centre pixel of an odd square, cropped to the smallest size holding
    ``mass`` of the total, and normalised to sum 1.
    """
    plane = stack[int(np.argmax(stack.reshape(stack.shape[0], -1).max(axis=1)))].astype(np.float64)
    border = np.concatenate([plane[0], plane[-1], plane[1:-1, 0], plane[1:-1, -1]])
    plane = np.clip(plane - np.median(border), 0.0, None)
    pr, pc = np.unravel_index(int(np.argmax(plane)), plane.shape)
    total = plane.sum()
    for half in range(min(pr, pc, plane.shape[0] - 1 - pr, plane.shape[1] - 1 - pc) + 1):
        window = plane[pr - half : pr + half + 1, pc - half : pc + half + 1]
        if window.sum() >= mass * total:
            break
    return window / window.sum()


def fwhm_px(psf: np.ndarray) -> float:
    """Full width at half maximum of the central row (linear interpolation), in pixels."""
    row = psf[psf.shape[0] // 2]
    half = row.max() / 2
    above = np.where(row >= half)[0]
    left, right = above[0], above[-1]
    fl = left - 1 + (half - row[left - 1]) / (row[left] - row[left - 1]) if left > 0 else float(left)
    fr = right + (row[right] - half) / (row[right] - row[right + 1]) if right + 1 < row.size else float(right)
    return float(fr - fl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, help="write held-out crops and the bead PSF to this PNG")
    args = parser.parse_args()

    out = cache_dir() / "microscopy"
    stack = tifffile.imread(fetch("neuron")).astype(np.float32)
    norm, low, high = normalise(stack)
    held = list(HELD_PLANES)
    guard = [z for z in range(held[0] - GUARD, held[-1] + GUARD + 1) if z not in held]
    train_planes = [z for z in range(stack.shape[0]) if z not in held and z not in guard]
    train = np.stack([c for z in train_planes for c in crops(norm[z], 32)])
    heldout = np.stack([c for z in held for c in crops(norm[z], 64)])
    save_npy(out / f"train_{SIZE}.npy", train)
    save_npy(out / f"heldout_{SIZE}.npy", heldout)
    print(f"neuron {stack.shape}: offset {low:.2f}, p99.5 {high:.2f}")
    print(f"  microscopy/train_{SIZE}.npy   {train.shape}  mean {train.mean():.3f}  planes {train_planes[0]}..{train_planes[-1]} minus guard+held")
    print(f"  microscopy/heldout_{SIZE}.npy {heldout.shape}  mean {heldout.mean():.3f}  planes {held[0]}..{held[-1]}, guard {guard}")

    psfs = {}
    for name, source in (("bead_psf", "bead"), ("kernel_psf", "bead_kernel")):
        psf = in_focus_psf(tifffile.imread(fetch(source)))
        save_npy(out / f"{name}.npy", psf)
        psfs[name] = {"shape": list(psf.shape), "fwhm_px": fwhm_px(psf), "source": source}
        print(f"  microscopy/{name}.npy {psf.shape}  FWHM {psfs[name]['fwhm_px']:.2f} px  (from {source})")

    summary = {
        "sources": {k: {**SOURCES[k], "licence": "Apache-2.0 (flowdec wheel)"} for k in ("neuron", "bead", "bead_kernel")},
        "normalisation": {"offset": low, "p99_5": high, "formula": "clip((v - offset) / (p99_5 - offset), 0, 1)"},
        "train_planes": train_planes, "heldout_planes": held, "guard_planes": guard,
        "crop": SIZE, "min_signal_p99": MIN_SIGNAL, "train_count": len(train), "heldout_count": len(heldout),
        "psfs": psfs,
    }
    atomic_write_text(out / "neuron.json", json.dumps(summary, indent=1) + "\n")
    if args.png:
        from invdiff.io.png import save_png

        bead = np.load(out / "bead_psf.npy")
        panel = np.zeros((SIZE, SIZE))
        panel[: bead.shape[0], : bead.shape[1]] = bead / bead.max()
        shown = np.concatenate([*heldout[:: max(1, len(heldout) // 3)][:3], panel], axis=1)
        save_png(args.png, shown, 0.0, 1.0)
        print(f"  preview {args.png}")


if __name__ == "__main__":
    main()
