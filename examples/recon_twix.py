"""Raw Siemens k-space -> invdiff measurement files -> classical reconstructions via the CLI.

(`invdiff reconstruct meas.dat --method cg-sense` reads a raw file as it is; this script also
makes a retrospectively undersampled copy with the full data as ground truth, to measure.)

    python examples/recon_twix.py [--dat data/samples/twix/gre.dat] [--out-dir runs/twix] \
        [--acceleration 4] [--center-fraction 0.08] [--device cpu]

Steps (each printed with its command so it can be re-run by hand):

1. ``invdiff.io.twix.read_twix``: k-space ``(slices, coils, H, W)`` (readout H, phase-encode
   columns W, oversampling removed), scaled by ``1 / max |x|`` of the coil-combined image so
   the image magnitude is at most 1 (the scale is stored in the file's attrs).
2. Coil maps by ESPIRiT (``invdiff.operators.coils.estimate_maps``) per slice for a single-slice
   file, else ``"estimate"`` (the reconstruction estimates them per slice).
3. Noise std (per real/imaginary part, measurement units): from the noise-adjust readouts when
   the file has them (their bandwidth may differ from the imaging readouts'), else from the
   outer k-space corners (``CORNER`` of each side) with the robust estimate
   ``median(|Re|, |Im|) / 0.6745`` (Donoho & Johnstone 1994), an upper bound where the object
   still has signal there.
4. ``full.h5``: the fully sampled k-space; ``x{R}.h5``: a retrospective R-fold equispaced
   fastMRI column mask (``invdiff.operators.masks.make_mask``) applied to it, its coil maps
   estimated from the undersampled data's calibration lines, and the full-data coil-combined
   complex image as ``ground_truth``.
5. ``invdiff reconstruct`` (zero-filled on both, CG-SENSE on the undersampled one) and
   ``invdiff evaluate`` against the ground truth.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from invdiff.io.hdf5 import Measurement, write_measurement
from invdiff.io.png import save_png
from invdiff.io.twix import read_twix
from invdiff.io.twix_measurement import noise_std
from invdiff.operators.coils import estimate_maps
from invdiff.operators.masks import make_mask

REPO = Path(__file__).resolve().parent.parent


def ifft2c(kspace: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), norm="ortho"), axes=axes)


def coil_combine(kspace: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``sum_c conj(S_c) F^H y_c`` for unit-norm maps: ``(coils, H, W)`` -> ``(H, W)`` complex64."""
    return (np.conj(maps) * ifft2c(kspace)).sum(0).astype(np.complex64)


def maps_param(kspace: np.ndarray) -> np.ndarray | str:
    return np.asarray(estimate_maps(kspace[0]), np.complex64) if kspace.shape[0] == 1 else "estimate"


def measurement(kspace, mask, maps, std, attrs, ground_truth=None) -> Measurement:
    params = {"image_shape": [2, *kspace.shape[-2:]], "mask": mask.astype(np.float32), "coil_maps": maps,
              "noise": {"kind": "gaussian", "std": std}}
    return Measurement(data=kspace.astype(np.complex64), operator={"name": "mri", "params": params},
                       ground_truth=ground_truth, attrs=attrs)


def run(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "invdiff", *args]
    print("$ invdiff " + shlex.join(args))
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {done.stderr.strip()}")
    out = done.stdout.strip().splitlines()
    return json.loads(out[-1]) if out and out[-1].startswith("{") else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dat", type=Path, default=REPO / "data" / "samples" / "twix" / "gre.dat")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "twix")
    parser.add_argument("--acceleration", type=float, default=4.0)
    parser.add_argument("--center-fraction", type=float, default=0.08)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    raw = read_twix(args.dat)
    kspace, mask, header = raw["kspace"], raw["mask"], raw["header"]
    first_maps = np.asarray(estimate_maps(kspace[0]), np.complex64)
    scale = 1.0 / float(np.abs(coil_combine(kspace[0], first_maps)).max())
    kspace = (kspace * scale).astype(np.complex64)
    std, std_source = noise_std(kspace, None if raw["noise"] is None else raw["noise"] * scale)
    print(f"{args.dat.name}: k-space {kspace.shape} ({header.get('protocol_name')}, TR {header.get('tr_ms')} ms, "
          f"TE {header.get('te_ms')} ms, {header.get('field_strength_t', 0):.2f} T, {header.get('system')})")
    print(f"  scale {scale:.4g}, noise std {std:.3g} from {std_source}, "
          f"SNR (max |x| / std) ~ {1 / std:.0f}")
    attrs = {"source": str(args.dat.name), "source_format": "siemens_twix", "twix_header": header,
             "kspace_scale": scale, "noise_std_source": std_source}

    maps = maps_param(kspace)
    reference = np.stack([coil_combine(k, estimate_maps(k) if isinstance(maps, str) else maps) for k in kspace])
    write_measurement(out / "full.h5", measurement(kspace, mask, maps, std, attrs, reference))
    rss = np.sqrt((np.abs(ifft2c(kspace[0])) ** 2).sum(0))
    save_png(out / "full_rss.png", rss)
    print(f"  wrote {out / 'full.h5'} and {out / 'full_rss.png'} (root-sum-of-squares image)")

    h, w = kspace.shape[-2:]
    under_mask = make_mask("equispaced", (h, w), args.acceleration, args.center_fraction, seed=0) * mask
    under = (kspace * under_mask).astype(np.complex64)
    tag = f"x{args.acceleration:g}"
    under_attrs = {**attrs, "retrospective_acceleration": args.acceleration, "mask_kind": "equispaced",
                   "center_fraction": args.center_fraction}
    write_measurement(out / f"{tag}.h5", measurement(under, under_mask, maps_param(under), std, under_attrs, reference))
    print(f"  wrote {out / f'{tag}.h5'}: {int(under_mask[0].sum())}/{w} phase-encode lines")

    rows = []
    for name, method in (("full", "zero-filled"), (tag, "zero-filled"), (tag, "cg-sense")):
        result = out / f"{name}_{method}.h5"
        run(["reconstruct", str(out / f"{name}.h5"), "--method", method, "--out", str(result),
             "--png", str(result.with_suffix(".png")), "--device", args.device, "--quiet"])
        metrics = run(["evaluate", str(result), "--reference", str(out / f"{name}.h5"), "--json"])
        rows.append((name, method, metrics))
    print(f"\n{'input':8s} {'method':12s} {'PSNR':>7s} {'SSIM':>7s} {'NMSE':>9s}")
    for name, method, m in rows:
        flat = m.get("volume", m) if isinstance(m, dict) else {}
        print(f"{name:8s} {method:12s} {flat.get('psnr', float('nan')):7.2f} {flat.get('ssim', float('nan')):7.4f} "
              f"{flat.get('nmse', float('nan')):9.2e}")
    print(f"\n$ python examples/recon_twix.py --dat {args.dat} --out-dir {out} --acceleration {args.acceleration:g}")


if __name__ == "__main__":
    main()
