"""Does the image scale the prior sees limit the margin on other subjects? (BENCHMARKS.md,
"The image scale the prior sees").

The solver divides the image by ``scale``, the 99.5th percentile of |direct reconstruction|
(invdiff/pipeline/reconstruct.py ``image_scale``), because the prior was trained on slices
divided by their own 99.5th percentile (invdiff/prior/data.py). On undersampled or sparse-view
data that estimate is off. For each setting and image set this prints, per slice (each its own
measurement, seed = slice index), the ratio of the run's scale to the truth's percentile, and,
with ``--reconstruct``, the PSNR of the default solver (K = 4, network in bfloat16) with three
scales: the run's, the truth's own (an oracle), and the TV reconstruction's percentile.

    python examples/study_image_scale.py --settings ct30,mri8x --sets heldout,other,clinical --slices 6
    python examples/study_image_scale.py --settings mri8x --sets other --slices 3 --reconstruct

PSNR in dB with data range 1, mean over slices; magnitudes for MRI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import bench_reconstruct as bench  # noqa: E402
import invdiff.pipeline.reconstruct as recon  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.pipeline.defaults import default_prior_for, default_solver_for  # noqa: E402
from invdiff.pipeline.simulate import simulate  # noqa: E402
from invdiff.pipeline.units import PriorUnits  # noqa: E402
from invdiff.prior.store import load_prior  # noqa: E402


def tv_scale(m) -> float:
    """The 99.5th percentile of |TV reconstruction| (the default's warm start)."""
    tv = recon.run_classical(m, recon.Settings(method="tv"), "cpu").reconstruction
    return float(np.percentile(np.abs(tv), 99.5))


def psnr_with_scale(m, truth: np.ndarray, prior, solver: str, scale: float) -> float:
    """The default solver's PSNR when the prior sees the image divided by ``scale``."""
    original = recon.prior_units
    recon.prior_units = lambda *_: PriorUnits(scale, 0.0, "study_image_scale")
    try:
        rec = recon.run_prior(m, recon.Settings(solver=solver, samples=4, seed=0), prior, "cpu").reconstruction
    finally:
        recon.prior_units = original
    return float(metrics.psnr_per_slice(truth, bench.magnitude(rec), 1.0)[0])


def main() -> None:
    parser = bench.study_parser(__doc__, "ct30,mri8x")
    parser.add_argument("--reconstruct", action="store_true", help="also run the default solver with each scale")
    args = parser.parse_args()
    prior = load_prior(str(default_prior_for("mri")), device="cpu")
    prior.bf16 = True
    for key in args.settings.split(","):
        op_name, geometry, noise, _ = bench.SETTINGS[key]
        for set_name in args.sets.split(","):
            images = bench.load_set(set_name, 128)
            ratios, psnr = [], {"run": [], "truth": [], "tv": []}
            for i in bench.pick_indices(len(images), args.slices):
                truth = images[i : i + 1]
                m = simulate(truth, op_name, bench.geometry_for(geometry), seed=int(i), device="cpu", **noise)
                scales = {"run": recon.prior_units(prior, m, "cpu").scale,
                          "truth": float(np.percentile(np.abs(truth), 99.5))}
                ratios.append(scales["run"] / scales["truth"])
                if args.reconstruct:
                    scales["tv"] = tv_scale(m)
                    for name, scale in scales.items():
                        psnr[name].append(psnr_with_scale(m, truth, prior, default_solver_for(op_name), scale))
            line = f"{key} {set_name}: run scale / truth's {' '.join(f'{r:.3f}' for r in ratios)} (mean {np.mean(ratios):.3f})"
            if args.reconstruct:
                line += "; PSNR " + ", ".join(f"{name} {np.mean(v):.2f} dB" for name, v in psnr.items())
            print(line, flush=True)


if __name__ == "__main__":
    main()
