"""Posterior solvers against the closed-form Gaussian posterior.

Prior N(mu, S) with the exact denoiser (invdiff.prior.analytic.GaussianDenoiser), a random
underdetermined dense operator (tests/helpers_operators.py) and, when it is installed, the
masked-FFT MRI operator; white Gaussian noise. The exact posterior is N(m, P) with
P = (S^-1 + A^T W A)^-1 and m = P (S^-1 mu + A^T W y). For each solver and step count the table
gives, in units of the exact posterior std (RMS over pixels):

  mean err  = rms(mean_of_samples - m) / rms(sqrt(diag P))
  std err   = rms(std_of_samples - sqrt(diag P)) / rms(sqrt(diag P))

With N samples, Monte-Carlo noise alone gives about 1/sqrt(N) and 1/sqrt(2N).

Run:  OMP_NUM_THREADS=1 python examples/bench_solvers_gaussian.py [--samples 2000] [--side 4]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers_operators import DenseOperator, as_real_measurement, gaussian_posterior, random_covariance  # noqa: E402

from invdiff.operators.noise import NoiseModel  # noqa: E402
from invdiff.prior.analytic import GaussianDenoiser  # noqa: E402
from invdiff.solvers.base import SOLVERS, run_solver_with_info  # noqa: E402


def dense_problem(side: int, measurements: int, noise_std: float, seed: int = 0):
    """(operator, y (1, m), denoiser, exact mean (d,), exact std (d,), A^+ y (d,))."""
    gen = torch.Generator().manual_seed(seed)
    d = side * side
    cov = random_covariance(d, gen)
    mean = 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    matrix = torch.randn(measurements, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    op = DenseOperator(matrix, (1, side, side), NoiseModel("gaussian", std=noise_std))
    prior = GaussianDenoiser(mean, cov, (1, side, side))
    x_true = prior.sample(1, gen).to(torch.float64)
    y = op.noise.sample(op.forward(x_true), gen)
    m, p = gaussian_posterior(mean, cov, op.real_matrix(), noise_std**2, as_real_measurement(y[0]))
    pinv = op.direct(y).reshape(-1)
    return op, y, prior, m, p.diagonal().sqrt(), pinv


def errors(samples: torch.Tensor, m: torch.Tensor, std: torch.Tensor) -> tuple[float, float]:
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    scale = std.pow(2).mean().sqrt()
    mean_err = (flat.mean(0) - m).pow(2).mean().sqrt() / scale
    std_err = (flat.std(0) - std).pow(2).mean().sqrt() / scale
    return float(mean_err), float(std_err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--side", type=int, default=4)
    parser.add_argument("--measurements", type=int, default=8)
    parser.add_argument("--noise-std", type=float, default=0.1)
    parser.add_argument("--steps", type=str, default="20,100")
    parser.add_argument("--solvers", type=str, default=",".join(SOLVERS.names()))
    args = parser.parse_args()
    op, y, prior, m, std, pinv = dense_problem(args.side, args.measurements, args.noise_std)
    scale = float(std.pow(2).mean().sqrt())
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# d={args.side**2} m={args.measurements} noise_std={args.noise_std} samples={args.samples}")
    print(f"# reference errors (posterior-std units): prior mean {float((prior.mean - m).pow(2).mean().sqrt()) / scale:.3f}, "
          f"A^+ y {float((pinv - m).pow(2).mean().sqrt()) / scale:.3f}; Monte-Carlo floor ~{1 / math.sqrt(args.samples):.3f}")
    print(f"{'solver':<10}{'steps':>6}{'NFE':>7}{'mean err':>10}{'std err':>9}{'seconds':>9}")
    ys = y.expand(args.samples, *y.shape[1:]).contiguous()
    for name in args.solvers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            gen = torch.Generator().manual_seed(1)
            t0 = time.perf_counter()
            x, info = run_solver_with_info(name, op, ys, prior, steps=steps, generator=gen)
            mean_err, std_err = errors(x, m, std)
            print(f"{name:<10}{steps:>6}{info.nfe:>7}{mean_err:>10.3f}{std_err:>9.3f}{time.perf_counter() - t0:>9.1f}")


if __name__ == "__main__":
    main()
