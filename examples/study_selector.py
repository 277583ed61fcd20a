"""Can the measurement itself say, slice by slice, how much to trust the prior over TV?
(BENCHMARKS.md, "Prior or TV per slice, by k-space cross-validation".)

"Never worse than classical" holds for set means, but the default loses to TV on some
other-subject slices at 8x ("Per slice: where the default loses to TV"). A choice per slice
needs a signal that does not use the truth. This measures one: k-space cross-validation. Of
each slice's measured lines outside the fully sampled centre, a random ``--holdout`` fraction
is put aside; the default's posterior mean (without its TV average) and TV reconstruct from
the rest, and each blend ``(1 - b) mean + b tv`` (b on ``GRID``; the default reports b = 0.3)
is scored by how well it predicts the lines put aside, ``||M_v (F x - y)||^2`` (the noise adds
the same expected amount to every candidate). The slice then gets the full-data blend with the
b that predicted best; "TV or default by CV" chooses between b = 0.3 and b = 1 only.

    python examples/study_selector.py --settings mri8x --sets heldout,other --slices 6

Prints per slice the PSNR of TV, of the default's blend, of the two choices by cross-validation
and of the best b on the grid (an oracle: it needs the truth). PSNR in dB with data range 1 on
magnitudes; the posterior mean of K = ``--samples`` samples. Costs two default reconstructions
per slice (all data, fit lines).
"""

from __future__ import annotations

import dataclasses
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


def line_axis(mask: np.ndarray) -> int:
    """The axis of ``mask`` ``(H, W)`` along which its sampled lines run (0: whole columns)."""
    return 0 if np.all(mask == mask[:1, :]) else 1


def split_lines(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit mask, validation mask) of a line mask ``(H, W)``: ``fraction`` of its sampled lines
    outside the central run of consecutive sampled lines go to validation."""
    axis = line_axis(mask)
    lines = mask.any(axis=axis)
    n = lines.size
    centre = n // 2
    lo = hi = centre
    while lo > 0 and lines[lo - 1]:
        lo -= 1
    while hi < n - 1 and lines[hi + 1]:
        hi += 1
    outer = np.array([i for i in np.flatnonzero(lines) if not lo <= i <= hi])
    held = rng.choice(outer, size=max(1, int(round(fraction * outer.size))), replace=False)
    val_lines = np.zeros(n, bool)
    val_lines[held] = True
    val = np.broadcast_to(val_lines[None, :] if axis == 0 else val_lines[:, None], mask.shape)
    return mask & ~val, mask & val


def with_mask(m, mask: np.ndarray):
    """The measurement ``m`` seen through ``mask`` only (its k-space zero elsewhere)."""
    params = dict(m.operator["params"], mask=mask.astype(m.operator["params"]["mask"].dtype))
    return dataclasses.replace(m, data=m.data * mask, operator=dict(m.operator, params=params))


def validation_error(m, x: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Per slice ``||M_v (F x - y)||^2`` for real reconstructions ``x`` ``(n, H, W)`` (the mri
    operator's image model) and measurement ``m``, through its operator with the validation mask."""
    from invdiff.pipeline.reconstruct import slice_operators

    op = slice_operators(with_mask(m, val), torch.device("cpu"))(0)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32).reshape(m.data.shape[0], 1, *m.data.shape[-2:]))
    residual = op.forward(x).numpy() - m.data * val
    return (np.abs(residual) ** 2).reshape(len(residual), -1).sum(1)


GRID = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)


def main() -> None:
    parser = bench.study_parser(__doc__, "mri8x")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--holdout", type=float, default=0.3)
    args = parser.parse_args()
    device = torch.device("cpu")
    prior = load_prior(str(default_prior_for("mri")), device=device)
    rows, means = [], []
    for label, op_name, truth, m in bench.study_cases(args):
        fit, val = split_lines(np.asarray(m.operator["params"]["mask"]).astype(bool), args.holdout,
                               np.random.default_rng(1))
        # the posterior mean without the default's TV average (classical_weight 0), and TV, each
        # from all the data and from the fit lines; the blends (1 - b) mean + b tv are then cheap
        s = Settings(solver=default_solver_for(op_name), samples=args.samples, seed=0, options={"classical_weight": "0"})
        recs = {}
        for name, run in (("tv", lambda mm: run_classical(mm, Settings(method="tv"), device).reconstruction),
                          ("mean", lambda mm: run_prior(mm, s, prior, device).reconstruction)):
            recs[name] = {"full": bench.magnitude(run(m)), "fit": bench.magnitude(run(with_mask(m, fit)))}
            print(f"# {label} {name} done", file=sys.stderr, flush=True)

        def blend(b, part):
            return (1 - b) * recs["mean"][part] + b * recs["tv"][part]

        val_err = np.stack([validation_error(m, blend(b, "fit"), val) for b in GRID])  # (len(GRID), n)
        psnr = np.stack([metrics.psnr_per_slice(truth, blend(b, "full"), 1.0) for b in GRID])
        cols = list(range(psnr.shape[1]))
        default, tv = psnr[GRID.index(0.3)], psnr[GRID.index(1.0)]
        hard = np.where(val_err[GRID.index(0.3)] <= val_err[GRID.index(1.0)], default, tv)
        chosen_b = np.array(GRID)[val_err.argmin(0)]
        by_cv = psnr[val_err.argmin(0), cols]
        oracle = psnr.max(0)
        for i in cols:
            rows.append((label, i, tv[i], default[i], hard[i], chosen_b[i], by_cv[i], oracle[i]))
        means.append((label, tv.mean(), default.mean(), hard.mean(), by_cv.mean(), oracle.mean()))
    print(f"# {' '.join(sys.argv)}  (K = {args.samples}, {args.holdout:g} of the outer lines held out, split seed 1; "
          f"b on the grid {', '.join(f'{b:g}' for b in GRID)})")
    print("| setting, set | slice | TV | b = 0.3 (default) | TV or default by CV | b by CV | PSNR, b by CV | best b (oracle) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, i, tv, default, hard, b, by_cv, oracle in rows:
        print(f"| {label} | {i} | {tv:.2f} | {default:.2f} | {hard:.2f} | {b:g} | {by_cv:.2f} | {oracle:.2f} |")
    for label, tv, default, hard, by_cv, oracle in means:
        print(f"| {label} | mean | {tv:.2f} | {default:.2f} | {hard:.2f} | - | {by_cv:.2f} | {oracle:.2f} |")


if __name__ == "__main__":
    main()
