"""Reconstruction benchmark: classical methods vs diffusion solvers on brain slices.

    python examples/fetch_data.py && python examples/prepare_brain.py
    python examples/bench_reconstruct.py --set heldout --settings ct30,mri8x --slices 6 \
        --solvers default,diffpir,dds --samples 4 [--prior data/priors/brain128] [--json out.json]

``default`` is what ``invdiff reconstruct`` uses without --solver (invdiff/pipeline/defaults.py)
with its tuned per-operator settings; a named solver runs with its own per-operator defaults
unless --steps / --guidance / --option override them. "peak MiB" is the process's peak
resident memory so far (an upper bound for the row; CUDA: peak allocated during the row).

Protocol (BENCHMARKS.md): images 128x128 in [0, 1]; PSNR and SSIM with data range 1
(fastMRI-style per slice, then mean and std over slices); CT: parallel beam, N views over
180 degrees, Gaussian noise std = 0.01 x max|sinogram|; MRI: single coil, fastMRI random line
masks (4x: 8 % centre, 8x: 4 % centre), complex Gaussian noise std 0.005 on orthonormal
k-space; blur: Gaussian PSF sigma 2 px, reflect boundary, noise std 0.01. Extended settings:
``ct30-lowdose`` / ``ct60-lowdose`` (Beer-Lambert transmission, Poisson counts at I0 = 1e4
photons per detector bin; image value 1 = 0.02/mm, 2 mm pixels), ``mri4x-8coil`` / ``mri8x-8coil`` (8 birdcage coil maps simulated by
invdiff, the maps given to the reconstruction), ``blur-bead`` (the measured PSF: in-focus plane
of flowdec's bead stack, ``python examples/fetch_data.py bead``). Image sets:
``heldout`` = held-out slices of the training volumes, ``other`` = other subjects and
sequences, ``clinical`` = a clinical PD-weighted series of another subject and scanner;
``samples`` = the committed data/samples files (no cache needed); ``ct`` = the held-out
head-CT block of Cranium.inv3 (examples/prepare_ct.py) in relative attenuation divided
by its maximum, ``ct-other`` = the one head-CT slice of another patient (the same units);
``microscopy`` = the held-out neuron crops (examples/prepare_microscopy.py).
``--prior auto`` uses, per setting, the shipped prior ``invdiff reconstruct`` picks for its
operator (ct128 for CT, microscopy128 for blur, brain128 for MRI); without --prior, brain128.

``--calibrate N --calibration-set heldout,other`` also fits, per solver row and calibration
set, the std scale of ``invdiff calibrate`` (conformal risk control at ``--alpha``,
invdiff/pipeline/calibration.py) on N slices of that set that are not among the scored ones,
each simulated with its own seed (1 + i; for MRI its own random mask, as the shipped files are),
and reports the 2-std coverage of the scaled std on the scored slices (for ``ct`` the 8-slice
held-out block leaves 2 unscored slices, so its calibration slices include the 6 guard-band
slices beside the block: ``calibration_pool``). ``--shipped-calibration``
reports it with the scale shipped with the prior (``<prior>/calibration/*.json``, what
``invdiff reconstruct --calibration auto`` applies; ``-`` where none fits the row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

from invdiff import metrics  # noqa: E402
from invdiff.pipeline.calibration import calibrate, pipeline, shipped_calibration  # noqa: E402
from invdiff.pipeline.defaults import default_solver_for  # noqa: E402
from invdiff.pipeline.geometry import GeometryOptions  # noqa: E402
from invdiff.pipeline.reconstruct import Settings, run_classical, run_prior  # noqa: E402
from invdiff.pipeline.simulate import simulate  # noqa: E402

BEAD = "measured bead PSF"
SETTINGS = {
    "ct30": ("radon", GeometryOptions(views=30), {"noise_rel": 0.01}, ["fbp", "tv", "l1-wavelet"]),
    "ct60": ("radon", GeometryOptions(views=60), {"noise_rel": 0.01}, ["fbp", "tv", "l1-wavelet"]),
    "mri4x": ("mri", GeometryOptions(acceleration=4, center_fraction=0.08), {"noise_std": 0.005}, ["zero-filled", "tv", "l1-wavelet"]),
    "mri8x": ("mri", GeometryOptions(acceleration=8, center_fraction=0.04), {"noise_std": 0.005}, ["zero-filled", "tv", "l1-wavelet"]),
    "blur": ("blur", GeometryOptions(psf="gaussian:2"), {"noise_std": 0.01}, ["wiener", "richardson-lucy", "tv"]),
    # the extended protocol (data/priors issue): low-dose CT, 8-coil MRI, a measured PSF
    "ct30-lowdose": ("radon", GeometryOptions(views=30, pixel_size=2.0), {"photons": 1e4}, ["fbp", "tv", "l1-wavelet"]),
    "ct60-lowdose": ("radon", GeometryOptions(views=60, pixel_size=2.0), {"photons": 1e4}, ["fbp", "tv", "l1-wavelet"]),
    "mri4x-8coil": ("mri", GeometryOptions(acceleration=4, center_fraction=0.08, coils=8), {"noise_std": 0.005},
                    ["zero-filled", "cg-sense", "tv", "l1-wavelet"]),
    "mri8x-8coil": ("mri", GeometryOptions(acceleration=8, center_fraction=0.04, coils=8), {"noise_std": 0.005},
                    ["zero-filled", "cg-sense", "tv", "l1-wavelet"]),
    "blur-bead": ("blur", GeometryOptions(psf=BEAD), {"noise_std": 0.01}, ["wiener", "richardson-lucy", "tv"]),
}

#: image value 1 -> this linear attenuation (1/mm; water at about 70 keV) for transmission CT,
#: with 2 mm pixels (a 256 mm field at 128 px); results are divided by it before scoring
MU_WATER = 0.02
UNITS = {"ct30-lowdose": MU_WATER, "ct60-lowdose": MU_WATER}


def geometry_for(geometry: GeometryOptions) -> GeometryOptions:
    """Resolve the measured bead PSF (flowdec's bead stack in the cache; fetch_data.py bead)."""
    if geometry.psf != BEAD:
        return geometry
    from fetch_data import cache_dir

    return dataclasses.replace(geometry, psf=str(cache_dir() / "bead" / "data.tif"))


#: the image sets (module docstring)
SETS = ("heldout", "other", "clinical", "samples", "ct", "ct-other", "microscopy")
#: how to make each cached set (examples/, after fetch_data.py)
PREPARE = {"ct": "prepare_ct.py", "ct-other": "prepare_ct.py", "microscopy": "prepare_microscopy.py"}


def load_set(name: str, size: int) -> np.ndarray:
    try:
        return _load_set(name, size)
    except FileNotFoundError as exc:
        script = PREPARE.get(name, "prepare_brain.py" + (f" --size {size}" if size != 128 else ""))
        raise SystemExit(f"bench_reconstruct: {exc.filename} is missing; run python examples/fetch_data.py "
                         f"and python examples/{script} first.") from None


def _load_set(name: str, size: int) -> np.ndarray:
    if name == "samples":
        return np.concatenate([np.load(REPO / "data/samples/brain_heldout_128.npy"), np.load(REPO / "data/samples/brain_other_128.npy")])
    from fetch_data import cache_dir

    if name in ("ct", "ct-other"):
        mu = np.load(cache_dir() / "ct" / f"{'heldout' if name == 'ct' else 'other'}_{size}_mu.npy")
        return (mu / mu.max()).astype(np.float32)
    if name == "microscopy":
        return np.load(cache_dir() / "microscopy" / f"heldout_{size}.npy")
    return np.load(cache_dir() / "brain" / f"{name}_{size}.npy")


def pick_indices(count: int, n: int) -> np.ndarray:
    return np.linspace(0, count - 1, min(n, count)).round().astype(int)


def pick(images: np.ndarray, n: int) -> np.ndarray:
    return images[pick_indices(len(images), n)]


def calibration_pool(name: str, size: int) -> np.ndarray:
    """The slices a calibration on set ``name`` may draw from: the set itself, whose first
    ``len(load_set(name, size))`` entries are the benchmark's (so its scored indices apply), and
    for ``ct`` also the 6 guard-band slices of Cranium.inv3 (never trained on, never scored;
    prepare_ct.py), in the held-out slices' units: 8 held-out slices leave only 2 unscored."""
    pool = load_set(name, size)
    if name != "ct":
        return pool
    from fetch_data import cache_dir

    try:
        mu_held = np.load(cache_dir() / "ct" / f"heldout_{size}_mu.npy")
        mu_guard = np.load(cache_dir() / "ct" / f"guard_{size}_mu.npy")
    except FileNotFoundError as exc:
        raise SystemExit(f"bench_reconstruct: {exc.filename} is missing; run python examples/prepare_ct.py first.") from None
    return np.concatenate([pool, (mu_guard / mu_held.max()).astype(np.float32)])


def calibration_slices(images: np.ndarray, n: int, exclude) -> np.ndarray:
    """``n`` slices spread over ``images`` that are not among the indices ``exclude``."""
    rest = np.setdiff1d(np.arange(len(images)), np.asarray(exclude, dtype=int))
    if n > len(rest):
        raise SystemExit(f"bench_reconstruct: --calibrate {n} asks for more slices than the {len(rest)} left for calibration.")
    return images[rest[pick_indices(len(rest), n)]]


def study_parser(doc: str, settings: str) -> argparse.ArgumentParser:
    """The hand studies' command line: --settings, --sets (heldout,other) and --slices (3)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=settings)
    parser.add_argument("--sets", default="heldout,other")
    parser.add_argument("--slices", type=int, default=3)
    return parser


def study_cases(args: argparse.Namespace, size: int = 128):
    """The hand studies' measurements, for each setting of ``args.settings`` and image set of
    ``args.sets``: ``args.slices`` slices of the set (``pick``) simulated with seed 0. Yields
    (label "SETTING SET", operator name, truth ``(slices, size, size)``, Measurement)."""
    for key in args.settings.split(","):
        op_name, geometry, noise, _ = SETTINGS[key]
        for set_name in args.sets.split(","):
            truth = pick(load_set(set_name, size), args.slices)
            yield (f"{key} {set_name}", op_name, truth,
                   simulate(truth, op_name, geometry_for(geometry), seed=0, device="cpu", **noise))


def magnitude(rec: np.ndarray) -> np.ndarray:
    return np.abs(rec) if np.iscomplexobj(rec) else rec


def score(truth: np.ndarray, rec: np.ndarray, std: np.ndarray | None, samples: int = 1) -> dict:
    rec = magnitude(rec)
    psnr = metrics.psnr_per_slice(truth, rec, 1.0)
    ssim = metrics.ssim_per_slice(truth, rec, 1.0)
    out = {"psnr": float(np.mean(psnr)), "psnr_std": float(np.std(psnr)), "ssim": float(np.mean(ssim)), "ssim_std": float(np.std(ssim)),
           "psnr_slices": [float(v) for v in psnr]}  # per scored slice, in the order of the JSON's "slices"
    if std is not None and np.any(std):
        out["coverage_2std"] = metrics.coverage(truth, rec, std, 2.0)
        if samples > 1:
            out["coverage_pred95"] = metrics.predictive_coverage(truth, rec, std, samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="heldout", choices=SETS)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--settings", default="ct30,ct60,mri4x,mri8x,blur")
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--methods", default=None, help="classical methods (default: per setting; 'none': no classical rows)")
    parser.add_argument("--solvers", default="diffpir")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=None, help="solver guidance (default: per solver and operator)")
    parser.add_argument("--option", action="append", default=[], help="solver option KEY=VALUE")
    parser.add_argument("--prior", default=None, help="prior directory, or 'auto' (the shipped prior per operator)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32",
                        help="comma list of float32, bfloat16: each solver row once per network dtype (bfloat16: "
                             "invdiff reconstruct --bf16; labelled ', bf16')")
    parser.add_argument("--calibrate", type=int, default=0, help="calibration slices per calibration set (0: none)")
    parser.add_argument("--calibration-set", default=None, help="comma list of sets to calibrate on (default: --set)")
    parser.add_argument("--alpha", type=float, default=0.1, help="target miscoverage of the calibration")
    parser.add_argument("--shipped-calibration", action="store_true",
                        help="also report the 2-std coverage with the calibration shipped with the prior for each row")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows, with each scored slice's PSNR, and the scored slices' indices")
    args = parser.parse_args()

    pool = load_set(args.set, args.size)
    scored = pick_indices(len(pool), args.slices)
    images = pool[scored]
    cal_sets = (args.calibration_set or args.set).split(",") if args.calibrate else []
    cal_images = {name: calibration_slices(calibration_pool(name, args.size), args.calibrate,
                                           scored if name == args.set else [])
                  for name in cal_sets}
    device = torch.device(args.device)
    from invdiff.pipeline.defaults import default_prior_for
    from invdiff.prior.store import load_prior

    loaded: dict[str, object] = {}

    def prior_for(op_name: str):
        if args.prior == "auto":
            path = str(default_prior_for(op_name))
        else:
            path = str(args.prior or default_prior_for("mri"))
        if path not in loaded:
            loaded[path] = load_prior(path, device=device)
        return loaded[path]

    options = dict(o.split("=", 1) for o in args.option)
    dtypes = args.dtypes.split(",")
    if not set(dtypes) <= {"float32", "bfloat16"}:
        parser.error(f"--dtypes {args.dtypes}: choose from float32, bfloat16")
    rows = []
    print(f"# {' '.join(sys.argv)}")
    if not args.solvers:
        prior_name = None
    elif args.prior == "auto":  # name the prior each operator of these settings gets
        ops = dict.fromkeys(SETTINGS[key][0] for key in args.settings.split(","))
        prior_name = "auto (" + ", ".join(f"{op}: {_short(default_prior_for(op))}" for op in ops) + ")"
    else:
        prior_name = _short(args.prior or default_prior_for("mri"))
    print(f"# set={args.set} slices={len(images)} size={args.size} device={device} torch_threads={torch.get_num_threads()} "
          f"prior={prior_name}")
    if cal_sets:
        print(f"# calibration: {args.calibrate} slices of {', '.join(cal_sets)} (not the scored ones), alpha={args.alpha:g}, "
              "2 std scaled by each set's conformal scale")
    columns = cal_sets + (["shipped"] if args.shipped_calibration else [])
    extra = "".join(f" scale, cal. {c} | coverage 2 std, cal. {c} |" for c in columns)
    print("| setting | method | PSNR (dB) | SSIM | coverage 2 std | coverage 95 % pred. | NFE/sample | s/slice | peak MiB |" + extra)
    print("|---|---|---|---|---|---|---|---|---|" + "---|---|" * len(columns))
    for key in args.settings.split(","):
        op_name, geometry, noise, methods = SETTINGS[key]
        unit = UNITS.get(key, 1.0)
        m = simulate(images * unit, op_name, geometry_for(geometry), seed=0, device="cpu", **noise)
        if args.methods:
            methods = [] if args.methods == "none" else args.methods.split(",")
        for method in methods:
            start = time.perf_counter()
            res = run_classical(m, Settings(method=method), device)
            sec = (time.perf_counter() - start) / len(images)
            rows.append({"setting": key, "method": method, "nfe": 0, "s_per_slice": sec, "peak_mib": peak_mib(device),
                         **score(images, res.reconstruction / unit, None)})
            _print(rows[-1], columns)
        for solver, dtype in [(s, d) for s in args.solvers.split(",") if s for d in dtypes]:
            name = default_solver_for(op_name) if solver == "default" else solver
            label = (f"default = {name}" if solver == "default" else solver) + (", bf16" if dtype == "bfloat16" else "")
            prior_for(op_name).bf16 = dtype == "bfloat16"
            s = Settings(solver=name, steps=args.steps, guidance=args.guidance, samples=args.samples, options=options,
                         seed=0)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            res = run_prior(m, s, prior_for(op_name), device)
            rows.append(
                {
                    "setting": key,
                    "method": f"{label} (K={args.samples})",
                    "peak_mib": peak_mib(device),
                    "nfe": res.info["nfe_per_sample"],
                    "s_per_slice": res.info["seconds_per_slice"],
                    **score(images, res.reconstruction / unit, res.std / unit, args.samples),
                }
            )
            scales = {}
            for c in cal_sets:  # the same pipeline on the calibration slices, then the scale on the scored ones
                triples = []
                for i, truth in enumerate(cal_images[c]):  # each slice its own draw (MRI: its own mask), as shipped
                    mc = simulate(truth[None] * unit, op_name, geometry_for(geometry), seed=1 + i, device="cpu", **noise)
                    rc = run_prior(mc, s, prior_for(op_name), device)
                    triples.append((truth, magnitude(rc.reconstruction)[0] / unit, rc.std[0] / unit))
                scales[c], _, _ = calibrate(triples, args.alpha)
            if args.shipped_calibration:  # what `invdiff reconstruct --calibration auto` would apply
                prior = prior_for(op_name)
                ran = {k: res.info[k] for k in ("steps", "guidance", "options")}  # a file fitted at other steps does not apply
                found = shipped_calibration(prior.path, pipeline(name, args.samples, 1, op_name, prior.checksum, ran),
                                            m.operator, res.info["image_scale"])
                if found:
                    scales["shipped"] = found[0].scale
            mean = magnitude(res.reconstruction) / unit
            for c, scale in scales.items():
                rows[-1][f"scale_{c}"] = scale
                rows[-1][f"coverage_2std_cal_{c}"] = metrics.coverage(images, mean, scale * res.std / unit, 2.0)
            _print(rows[-1], columns)
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "set": args.set, "slices": scored.tolist(),
                                         "rows": rows}, indent=1))


def _short(path) -> str:
    """A prior path relative to the repository when it lies inside it."""
    p = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(path)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _print(r: dict, cal_sets=()) -> None:
    cov = f"{r['coverage_2std']:.1%}" if "coverage_2std" in r else "-"
    pred = f"{r['coverage_pred95']:.1%}" if "coverage_pred95" in r else "-"
    cal = "".join(f" {r[f'scale_{c}']:.2f} | {r[f'coverage_2std_cal_{c}']:.1%} |" if f"scale_{c}" in r else " - | - |"
                  for c in cal_sets)
    print(
        f"| {r['setting']} | {r['method']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.3f} ± {r['ssim_std']:.3f} "
        f"| {cov} | {pred} | {r['nfe']:.0f} | {r['s_per_slice']:.2f} | {r['peak_mib']:.0f} |" + cal,
        flush=True,
    )


if __name__ == "__main__":
    main()
