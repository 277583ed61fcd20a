"""Fit the std calibrations shipped with the priors (``data/priors/*/calibration/*.json``).

    python examples/fetch_data.py && python examples/prepare_brain.py && python examples/prepare_microscopy.py
    python examples/calibrate_priors.py [--prior brain128] [--settings ct30,mri8x] [--slices 19]
    python examples/calibrate_priors.py --prior brain128 --settings ct30,mri8x --solvers pc,dps
    python examples/calibrate_priors.py --prior brain128 --settings mri8x,ct30 --solvers langevin   # > 1 h per setting
    python examples/calibrate_priors.py --prior brain128 --settings mri8x,ct30 --solvers pc,dps,langevin --device cuda
    python examples/calibrate_priors.py --prior brain128 --settings mri8x --solvers langevin --bf16   # one process per setting
    python examples/calibrate_priors.py --prior microscopy128   # blur and blur-bead (the measured bead PSF)
    python examples/prepare_ct.py && python examples/calibrate_priors.py --prior ct128   # 8 slices, alpha 0.15

For each setting of the benchmark protocol (examples/bench_reconstruct.py) this runs what a
user would: ``invdiff simulate`` on calibration slices with known truth, ``invdiff reconstruct``
with the prior and the default solver (K = 4; or each of ``--solvers`` at its own defaults),
and ``invdiff calibrate --alpha 0.1`` (ct128: 0.15, see ``PRIORS``). Each calibration slice is its own measurement, with its
own seed (1 + i): for MRI its own random mask, so that the scale holds for the setting's masks,
not for one draw, and the file records their mean sampled fraction. The default solver's file is ``<setting>.json``, another
solver's ``<setting>.<solver>.json``. The
calibration slices are held-out slices the benchmark does NOT score: ``--slices`` of them spread
over the rest of the set (bench_reconstruct.py --calibrate uses the same ones; for the head CT
also the guard band beside its held-out block). ``invdiff
reconstruct --calibration auto`` (its default) then applies the file whose pipeline and
operator settings fit a run (invdiff/pipeline/calibration.py). ``--bf16`` runs the network in
bfloat16 (``invdiff reconstruct --bf16``: 2.5-2.9x faster on a CPU with AMX, PSNR within 0.02 dB
and coverage within 0.2 % of float32, BENCHMARKS.md "Network in bfloat16"); the file's
``sources`` say so, and it applies to float32 runs as well.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from bench_reconstruct import (BEAD, UNITS, calibration_pool, calibration_slices, geometry_for,  # noqa: E402
                               load_set, pick_indices)

from invdiff.cli import app  # noqa: E402
from invdiff.cli.common import run_app  # noqa: E402
from invdiff.pipeline.geometry import GeometryOptions  # noqa: E402

#: setting -> the `invdiff simulate` options of the benchmark protocol
SIMULATE = {
    "ct30": ["--operator", "radon", "--views", "30", "--noise-rel", "0.01"],
    "ct60": ["--operator", "radon", "--views", "60", "--noise-rel", "0.01"],
    # the same CT settings at fixed lower noise: the protocol's 1 % of the sinogram's peak is a std
    # of about 1.0 on the held-out slices but 0.45-0.8 on other subjects' (smaller or fainter heads),
    # where ct30.json (within its 20 % tolerance) does not apply ("p" for the point: file names
    # split at ".")
    "ct30-std0p5": ["--operator", "radon", "--views", "30", "--noise-std", "0.5"],
    "ct30-std0p7": ["--operator", "radon", "--views", "30", "--noise-std", "0.7"],
    "ct60-std0p5": ["--operator", "radon", "--views", "60", "--noise-std", "0.5"],
    "ct60-std0p7": ["--operator", "radon", "--views", "60", "--noise-std", "0.7"],
    "ct30-std0p3": ["--operator", "radon", "--views", "30", "--noise-std", "0.3"],
    "ct60-std0p3": ["--operator", "radon", "--views", "60", "--noise-std", "0.3"],
    # transmission CT (image value 1 = MU_WATER 1/mm, 2 mm pixels; bench_reconstruct.UNITS)
    "ct30-lowdose": ["--operator", "radon", "--views", "30", "--pixel-size", "2.0", "--photons", "1e4"],
    "ct60-lowdose": ["--operator", "radon", "--views", "60", "--pixel-size", "2.0", "--photons", "1e4"],
    "mri4x": ["--operator", "mri", "--acceleration", "4", "--center-fraction", "0.08", "--noise-std", "0.005"],
    "mri8x": ["--operator", "mri", "--acceleration", "8", "--center-fraction", "0.04", "--noise-std", "0.005"],
    "blur": ["--operator", "blur", "--psf", "gaussian:2", "--noise-std", "0.01"],
    "blur-bead": ["--operator", "blur", "--psf", BEAD, "--noise-std", "0.01"],  # resolved by simulate_options
}
#: how a calibration file's ``sources`` name the bead PSF (its cache path differs per machine)
BEAD_FILE = "CACHE/bead/data.tif (flowdec's bead stack, python examples/fetch_data.py bead)"
#: prior -> (image set of bench_reconstruct.py, settings, calibration slices, alpha)
#: (the protocol's settings first: examples/gpu_session.sh fits them under a time limit).
#: The head-CT set has 8 slices the benchmark does not score (2 held-out, 6 guard band:
#: bench_reconstruct.calibration_pool); conformal risk control needs more than 1/alpha - 1
#: slices to leave any miscoverage, so ct128 is fitted at alpha = 0.15: on 8 slices that holds
#: the calibration slices' miscoverage to (0.15 * 9 - 1) / 8 = 4.4 %, as alpha = 0.1 does on
#: 19 slices (5.3 %), with the guarantee (expected coverage of a new slice) at 85 %. Its
#: std-0.3 files cover a third less noise than the protocol's 1 % (0.40 against 0.59 of the
#: image scale; a calibration applies within 50 % of its noise std per image scale, the
#: nearest where several do).
PRIORS = {"brain128": ("heldout", ["ct30", "ct60", "mri4x", "mri8x", "blur",
                                   "ct30-std0p5", "ct30-std0p7", "ct60-std0p5", "ct60-std0p7"], 19, 0.1),
          "ct128": ("ct", ["ct30", "ct60", "ct30-lowdose", "ct60-lowdose", "ct30-std0p3", "ct60-std0p3"], 8, 0.15),
          "microscopy128": ("microscopy", ["blur", "blur-bead"], 19, 0.1)}
SCORED = 6  # the benchmark scores 6 slices of each set (bench_reconstruct.py --slices 6)


def simulate_options(key: str) -> list[str]:
    """The ``invdiff simulate`` options of a setting, the measured bead PSF resolved to its
    file in the data cache (``python examples/fetch_data.py bead``)."""
    return [geometry_for(GeometryOptions(psf=BEAD)).psf if option == BEAD else option for option in SIMULATE[key]]


def invdiff(*args) -> None:
    code = run_app(app, [str(a) for a in args])
    if code != 0:
        raise SystemExit(f"calibrate_priors: invdiff {' '.join(map(str, args))} failed with exit code {code}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="brain128", choices=sorted(PRIORS))
    parser.add_argument("--settings", default=None, help="comma list (default: every setting of the prior)")
    parser.add_argument("--slices", type=int, default=None, help="calibration slices (default: 19; ct128: 8)")
    parser.add_argument("--alpha", type=float, default=None, help="target miscoverage (default: 0.1; ct128: 0.15)")
    parser.add_argument("--solvers", default="default", help="comma list: 'default' (no --solver) and solver names")
    parser.add_argument("--device", default="cpu", help="where the reconstructions run (cpu or cuda)")
    parser.add_argument("--bf16", action="store_true", help="run the network in bfloat16 (invdiff reconstruct --bf16)")
    parser.add_argument("--prior-dir", type=Path, default=None,
                        help="calibrate this prior directory (a retrained --prior, e.g. examples/gpu_session.sh's) "
                             "instead of data/priors/<prior>; its files go to <dir>/calibration/")
    parser.add_argument("--noise-scale-only", action="store_true",
                        help="reconstruct nothing: add to each existing file the noise std per image scale of its "
                             "calibration slices (what a fit since 2026-12-07 records), where the file's other "
                             "settings show it was fitted on these slices")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the truths, measurements and reconstructions in this folder "
                             "(default: a temporary folder, deleted at the end)")
    args = parser.parse_args()
    image_set, settings, slices, alpha = PRIORS[args.prior]
    args.slices = args.slices or slices
    args.alpha = args.alpha or alpha
    settings = args.settings.split(",") if args.settings else settings
    prior = args.prior_dir or REPO / "data" / "priors" / args.prior
    scored = pick_indices(len(load_set(image_set, 128)), SCORED)
    truth = calibration_slices(calibration_pool(image_set, 128), args.slices, scored)
    out_dir = prior / "calibration"
    out_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(truth):  # one file per slice: each its own mask and noise
            np.save(tmp / f"truth_{i:02d}.npy", image[None])
            for key in {key for key in settings if key in UNITS}:  # transmission CT: in 1/mm
                np.save(tmp / f"truth_{key}_{i:02d}.npy", image[None] * UNITS[key])
        for key, solver in [(key, solver) for key in settings for solver in args.solvers.split(",")]:
            name = key if solver == "default" else f"{key}.{solver}"
            meas, results, out = tmp / key, tmp / f"{name}_recon", out_dir / f"{name}.json"
            if not meas.exists():
                meas.mkdir()
                options = simulate_options(key)
                for i in range(len(truth)):
                    truth_file = tmp / (f"truth_{key}_{i:02d}.npy" if key in UNITS else f"truth_{i:02d}.npy")
                    invdiff("simulate", truth_file, *options, "--seed", 1 + i,
                            "--out", meas / f"slice_{i:02d}.h5", "-q")
            if args.noise_scale_only:
                if out.exists():
                    add_noise_scale(out, sorted(meas.glob("slice_*.h5")), prior, args.device)
                continue
            chosen = ([] if solver == "default" else ["--solver", solver]) + (["--bf16"] if args.bf16 else [])
            invdiff("reconstruct", meas, "--prior", prior, *chosen, "--samples", "4", "--calibration", "none",
                    "--device", args.device, "--out-dir", results, "-q")
            invdiff("calibrate", results, "--alpha", args.alpha, "--out", out, "-q")
            cal = json.loads(out.read_text())
            unscored = "held-out and guard-band" if image_set == "ct" else "held-out"
            cal["sources"] = [f"{args.slices} {unscored} slices of the {image_set} set not scored by the benchmark, "
                              f"each simulated with: invdiff simulate {' '.join(SIMULATE[key]).replace(BEAD, BEAD_FILE)} "
                              f"--seed 1+i (slice i: "
                              f"its own mask and noise); reconstructed with: invdiff reconstruct "
                              f"{' '.join(chosen + ['--samples', '4'])} (examples/calibrate_priors.py --prior {args.prior})"]
            out.write_text(json.dumps(cal, indent=1) + "\n")
            print(f"{out}: scale {cal['scale']:.3f}; 2 std covered {1 - cal['risk_uncalibrated']:.1%} "
                  f"of the calibration pixels, {1 - cal['risk_calibrated']:.1%} after", flush=True)


def add_noise_scale(out: Path, measurements: list[Path], prior_dir: Path, device: str) -> None:
    """Give the calibration file ``out`` the operator settings that `invdiff calibrate` records
    since 2026-12-07 (the noise std per image scale, invdiff.pipeline.calibration.NOISE_PER_SCALE)
    for its calibration slices ``measurements``: the mean over the slices, as a fit averages
    them. Nothing is written unless the file's other settings equal those of these slices, so a
    file fitted on other slices (the old split's) keeps its settings and is compared by its std."""
    import torch

    from invdiff.io.hdf5 import read_measurement
    from invdiff.pipeline.calibration import NOISE_PER_SCALE, _same, mean_settings, operator_settings
    from invdiff.pipeline.reconstruct import prior_units
    from invdiff.prior.store import load_prior

    prior = load_prior(prior_dir)
    per_slice = []
    for path in measurements:
        m = read_measurement(path)
        per_slice.append(operator_settings(m.operator, prior_units(prior, m, torch.device(device)).scale))
    now = mean_settings(per_slice)
    cal = json.loads(out.read_text())
    before = cal["operator_settings"]
    if NOISE_PER_SCALE not in now:
        print(f"{out}: no Gaussian noise, nothing to add", flush=True)
        return
    others = [{k: v for k, v in d.items() if k != NOISE_PER_SCALE} for d in (now, before)]
    if not _same(*others, 1e-5):
        print(f"{out}: left as it is (its settings {before} are not those of these slices, {now})", flush=True)
        return
    cal["operator_settings"] = {**before, NOISE_PER_SCALE: now[NOISE_PER_SCALE]}
    out.write_text(json.dumps(cal, indent=1) + "\n")
    print(f"{out}: {NOISE_PER_SCALE} = {now[NOISE_PER_SCALE]:g}", flush=True)


if __name__ == "__main__":
    main()
