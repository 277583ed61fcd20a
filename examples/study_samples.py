"""What more posterior samples, and less fresh noise per step, buy the default (BENCHMARKS.md,
"Samples and re-noising of the default").

The default reports the mean of K samples (K = 4 by the reconstruction issue's protocol),
averaged with TV by ``classical_weight`` (invdiff/solvers/averaging.py). For an exact sampler
the error of a K-sample mean is E|x - m_K|^2 = MMSE (1 + 1/K), so K = 4 sits 0.97 dB below the
posterior mean and K = 16 0.26 dB. This draws ``--max-samples`` samples of the default on
``--slices`` slices of each image set, for each DiffPIR re-noising fraction in ``--zetas``
(1: all fresh noise, the default; smaller: more of the previous estimate's noise is kept,
diffpir.py), and scores the reported posterior (the blend with TV at the default weight) of
K = 1, 2, 4, ... samples: PSNR averaged over disjoint groups of K samples, and for K = 4 the
2-std coverage of the reported std.

    python examples/study_samples.py --settings ct30 --slices 3 --max-samples 16 --zetas 1
    python examples/study_samples.py --settings ct30 --slices 3 --max-samples 4 --zetas 0.5,0.2
    python examples/study_samples.py --settings mri8x --slices 3 --max-samples 8 --zetas 1

PSNR in dB with data range 1, mean over slices; magnitudes for MRI.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import bench_reconstruct as bench  # noqa: E402
from invdiff import metrics  # noqa: E402
from invdiff.pipeline.defaults import default_prior_for, default_solver_for  # noqa: E402
from invdiff.pipeline.reconstruct import Settings, run_classical, run_prior  # noqa: E402
from invdiff.prior.store import load_prior  # noqa: E402
from invdiff.solvers.averaging import posterior_moments  # noqa: E402
from invdiff.solvers.base import get_solver  # noqa: E402

def scores(truth: np.ndarray, tv: torch.Tensor, samples: torch.Tensor, beta: float) -> dict[str, float]:
    """Mean PSNR of the reported posterior of K samples, for K = 1, 2, 4, ... (averaged over
    disjoint groups of K), and the 2-std coverage at K = 4. truth ``(n, H, W)``, tv ``(n, H, W)``
    and samples ``(S, n, H, W)`` (real or complex)."""
    total = samples.shape[0]
    out, coverage_k4 = {}, {}
    k = 1
    while k <= total:
        values, cover = [], []
        for g in range(total // k):
            mean, std = posterior_moments(samples[g * k:(g + 1) * k], tv, beta)  # per pixel: every slice at once
            rec = bench.magnitude(mean.numpy())
            values += metrics.psnr_per_slice(truth, rec, 1.0)
            if k == 4:
                cover.append(metrics.coverage(truth, rec, std.numpy()))
        out[f"K={k}"] = float(np.mean(values))
        if k == 4:
            coverage_k4["coverage 2 std, K=4 (%)"] = 100 * float(np.mean(cover))
        k *= 2
    return out | coverage_k4


def main() -> None:
    parser = bench.study_parser(__doc__, "ct30")
    parser.add_argument("--max-samples", type=int, default=16)
    parser.add_argument("--zetas", default="1,0.5,0.2")
    args = parser.parse_args()
    device = torch.device("cpu")
    prior = load_prior(str(default_prior_for("mri")), device=device)
    columns: dict[str, dict[str, float]] = {}
    for label, op_name, truth, m in bench.study_cases(args):
        solver = default_solver_for(op_name)
        beta = float(get_solver(solver).defaults_for(op_name).get("classical_weight", 0.0))
        tv = torch.as_tensor(run_classical(m, Settings(method="tv"), device).reconstruction)
        for zeta in args.zetas.split(","):
            s = Settings(solver=solver, samples=args.max_samples, keep_samples=True, seed=0,
                         options={"classical_weight": "0", "zeta": zeta})
            samples = torch.as_tensor(run_prior(m, s, prior, device).samples)
            columns[f"{label} zeta={zeta}"] = scores(truth, tv, samples, beta)
            print(f"# {label} zeta={zeta} done", file=sys.stderr, flush=True)
    print(f"# {' '.join(sys.argv)}  ({args.slices} slices per set)")
    header = list(next(iter(columns.values())))
    print("| column | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for column, row in columns.items():
        print(f"| {column} | " + " | ".join(f"{v:.2f}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
