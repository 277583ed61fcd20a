"""How much a better blend of the diffusion posterior and TV could buy (BENCHMARKS.md, "Choosing
the TV weight of the default").

The default reports ``(1 - b) m + b x_tv`` with a fixed b = ``classical_weight``
(invdiff/solvers/averaging.py). This draws the default's K samples with b = 0 and the TV
estimate on ``--slices`` slices of each image set, then scores, against the ground truth:

* fixed b in {0, 0.15, 0.3, 0.5};
* the best b per slice out of 0, 0.05, ..., 1 (an oracle: no method can pick it without the
  truth, so it bounds what any per-slice choice of b could gain);
* a per-pixel precision-weighted blend, ``w m + (1 - w) x_tv`` with ``w = tau^2 / (tau^2 + s^2)``,
  s^2 the K-sample variance (raw, or smoothed by a Gaussian of 2 px), tau in {0.01, 0.02, 0.04}.

    python examples/study_classical_weight.py --settings ct30,mri8x --slices 3

PSNR in dB with data range 1, mean over slices; magnitudes for MRI.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).parent))

import bench_reconstruct as bench  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.pipeline.defaults import default_prior_for, default_solver_for  # noqa: E402
from invdiff.pipeline.reconstruct import Settings, run_classical, run_prior  # noqa: E402
from invdiff.prior.store import load_prior  # noqa: E402


psnr = partial(metrics.psnr, data_range=1.0)  # the benchmark's: images in [0, 1]


def blends(truth: np.ndarray, tv: np.ndarray, samples: np.ndarray) -> dict[str, float]:
    """Mean PSNR of each blend for truth and tv ``(n, H, W)`` and samples ``(K, n, H, W)``."""
    mean, var = samples.mean(0), samples.var(0, ddof=1)

    def score(blend) -> float:
        return float(np.mean([psnr(truth[i], blend(i)) for i in range(len(truth))]))

    out = {"tv": score(lambda i: tv[i])}
    for b in (0.0, 0.15, 0.3, 0.5):
        out[f"b={b:g}"] = score(lambda i, b=b: (1 - b) * mean[i] + b * tv[i])
    grid = np.linspace(0, 1, 21)
    out["best b per slice"] = float(np.mean([max(psnr(truth[i], (1 - b) * mean[i] + b * tv[i]) for b in grid)
                                             for i in range(len(truth))]))
    for smooth in (0, 2):
        v = np.stack([gaussian_filter(x, smooth) for x in var]) if smooth else var
        for tau in (0.01, 0.02, 0.04):
            w = tau**2 / (tau**2 + v)
            out[f"per pixel, tau={tau:g}{', smoothed' if smooth else ''}"] = score(
                lambda i, w=w: w[i] * mean[i] + (1 - w[i]) * tv[i])
    return out


def main() -> None:
    parser = bench.study_parser(__doc__, "ct30,mri8x")
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    device = torch.device("cpu")
    prior = load_prior(str(default_prior_for("mri")), device=device)
    columns: dict[str, dict[str, float]] = {}
    for label, op_name, truth, m in bench.study_cases(args):
        tv = bench.magnitude(run_classical(m, Settings(method="tv"), device).reconstruction)
        s = Settings(solver=default_solver_for(op_name), samples=args.samples, keep_samples=True, seed=0,
                     options={"classical_weight": "0"})
        samples = bench.magnitude(run_prior(m, s, prior, device).samples)
        columns[label] = blends(truth, tv, samples)
        print(f"# {label} done", file=sys.stderr, flush=True)
    print(f"# {' '.join(sys.argv)}  ({args.slices} slices per set, K = {args.samples})")
    print("| blend | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in next(iter(columns.values())):
        print(f"| {row} | " + " | ".join(f"{c[row]:.2f}" for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
