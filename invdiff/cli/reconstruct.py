"""``invdiff reconstruct``: measurements -> images, by posterior sampling or a classical method."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (
    Bf16Opt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    check_outputs,
    check_suffix,
    check_writable,
    emit_json,
    progress_bar,
    refuse_clobbering,
    resolve_device,
    show_progress,
    warn_slow_bf16,
)
from invdiff.cli.options import (
    AccelerationOpt,
    AnglesOpt,
    BoundaryOpt,
    CenterFractionOpt,
    CoilsOpt,
    ComplexOpt,
    DetectorsOpt,
    DetectorSpacingOpt,
    FilterOpt,
    MaskOpt,
    OperatorParamsOpt,
    PixelSizeOpt,
    PsfOpt,
    ViewsOpt,
    geometry_from_options,
)
from invdiff.errors import InputError, naming
from invdiff.notices import warn

METHOD_HELP = (
    "Classical method instead of a prior: fbp (radon), zero-filled, cg-sense (mri), wiener, richardson-lucy (blur), "
    "sirt, cgls, tv, l1-wavelet (any operator)."
)

#: classical methods that never compute a filtered back-projection (they start from zero), so
#: that --filter would change nothing; fbp returns one, and tv and l1-wavelet start from it
NO_FBP_METHODS = ("sirt", "cgls")


def _parse_options(items: list[str]) -> dict[str, str]:
    """``--option KEY=VALUE`` items -> {key: value}; InputError for an item without ``=`` or a
    key given twice (which value was meant cannot be told)."""
    options = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--option '{item}' must look like KEY=VALUE.")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in options:
            raise InputError(f"--option {key} given twice ({key}={options[key]} and {key}={value.strip()}); give it once.")
        options[key] = value.strip()
    return options


def _outputs_for(inputs: list[Path], out: Optional[Path], out_dir: Optional[Path]) -> list[Path]:
    if len(inputs) == 1 and out is not None and out_dir is None:
        return [out]
    if out_dir is None and out is None and len(inputs) == 1:
        raise InputError(f"{inputs[0]}: no output given; add --out FILE.h5 (or --out-dir FOLDER).")
    if out_dir is None:
        raise InputError("several inputs need --out-dir (one result file per input).")
    if out is not None:
        raise InputError("give either --out (one input) or --out-dir (many inputs), not both.")
    first: dict[str, Path] = {}
    for p in inputs:
        other = first.setdefault(p.stem, p)
        if other is not p:
            raise InputError(f"{other} and {p} share the name '{p.stem}', so both results would be written to "
                             f"{out_dir / (p.stem + '.h5')}; rename one, or give them separate --out-dir runs.")
    return [out_dir / f"{p.stem}.h5" for p in inputs]


def _prior_dirs(method: Optional[str], prior: Optional[Path]) -> list[Path]:
    """The prior directories a run may read, which no output may go into: --prior, or without
    it every shipped default prior (which one is chosen depends on each input's operator)."""
    from invdiff.pipeline.defaults import DEFAULT_PRIOR, PRIOR_FOR_OPERATOR, PRIORS_DIR

    if method is not None:
        return []
    if prior is not None:
        return [prior]
    return [PRIORS_DIR / name for name in sorted({DEFAULT_PRIOR, *PRIOR_FOR_OPERATOR.values()})]


def _check_dicom_folders(inputs: list[Path], outputs: list[Path], png: Optional[Path], dicom) -> None:
    """Before any work: each DICOM series folder must be new, empty or an earlier invdiff series
    (writing it replaces the folder), and hold none of the inputs and other outputs."""
    from invdiff.io.dicom import check_dicom_folder

    folders = [dicom] if isinstance(dicom, Path) else dicom
    # every folder that holds (or is) an input or another output -> that path; one pass over the
    # paths, so a batch of thousands of files is not resolved once per series folder
    holding: dict[Path, Path] = {}
    for p in [*inputs, *outputs, *([png] if png is not None else [])]:
        r = p.resolve()
        for folder in (r, *r.parents):
            holding.setdefault(folder, p)
    for folder in folders:
        check_dicom_folder(folder)
        inside = holding.get(folder.resolve())
        if inside is not None:
            raise InputError(f"{inside} lies in the --dicom folder {folder}, whose contents the series replaces; "
                             f"put the DICOM series in a folder of its own.")


def _refuse_method_solver_mix_up(method: str | None, solver: str | None) -> None:
    """InputError for a classical method given as --solver, or a solver given as --method
    (unless a plug-in registers the name as both)."""
    from invdiff.classical import method_names
    from invdiff.solvers.base import SOLVERS

    if solver is not None and solver in method_names() and solver not in SOLVERS.names():
        raise InputError(f"'{solver}' is a classical method, not a posterior solver: give --method {solver} "
                         "(without --prior) to run it.")
    if method is not None and method in SOLVERS.names() and method not in method_names():
        raise InputError(f"'{method}' is a posterior solver, not a classical method: give --solver {method} to run it.")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  invdiff reconstruct sino.h5 --out recon.h5 --dicom recon_dicom/ --png recon.png   (default prior and solver)\n\n"
        "  invdiff reconstruct sino.h5 --prior priors/brain128 --solver dps --steps 100 --samples 8 --out recon.h5\n\n"
        "  invdiff reconstruct sino.h5 --method tv --weight 0.02 --out tv.h5\n\n"
        "  invdiff reconstruct file_brain_AXT2_1.h5 --method cg-sense --out cgsense.h5          (fastMRI file as it is)\n\n"
        "  invdiff reconstruct sino.npy --operator radon --views 60 --image-size 256 --method fbp --out fbp.h5\n\n"
        "  invdiff reconstruct data/ --out-dir results/ --skip-existing                           (batch)\n\n"
        "  torchrun --standalone --nproc_per_node 4 -m invdiff reconstruct data/ --out-dir results/  (files shared out)\n\n"
        "An .h5 or .dat measurement records its geometry: a geometry option must agree with it (--filter, --boundary "
        "and --complex choose how to reconstruct and override it; --operator-params overrides any parameter)."
    )
)
def reconstruct(
    inputs: Annotated[list[Path], typer.Argument(help="Measurement files (.h5; .npy/.tif with --operator) or folders.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Result file (.h5) for one input.")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Folder for one result per input.")] = None,
    prior: Annotated[Optional[Path], typer.Option("--prior", help="Prior directory (default: the shipped prior for the operator).")] = None,
    solver: Annotated[Optional[str], typer.Option("--solver", help="Posterior solver (see `invdiff info --solvers`); default per operator.")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=METHOD_HELP)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Solver steps (default: tuned per operator).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Data-consistency strength (solver-specific).")] = None,
    option: Annotated[list[str], typer.Option("--option", help="Solver option KEY=VALUE (repeatable).")] = [],
    samples: Annotated[Optional[int], typer.Option("--samples", help="Posterior samples K (default 4): mean -> reconstruction, std -> std (a sample std needs K >= 2; with K = 1 the std is 0, or only the disagreement with the classical estimate a solver averages in).")] = None,
    keep_samples: Annotated[bool, typer.Option("--keep-samples", help="Also store the K samples.")] = False,
    std_window: Annotated[int, typer.Option("--std-window", help="Pool the posterior variance over W x W pixels (odd W; 1 = per-pixel sample std). A steadier std from few samples, at the window's resolution.")] = 1,
    calibration: Annotated[str, typer.Option("--calibration", help="A file from `invdiff calibrate`: scale the std by the factor it fitted for this prior, solver, K and operator on images with known truth. auto: a calibration shipped with the prior that fits this run, if any; none: the plain sample std.")] = "auto",
    weight: Annotated[Optional[float], typer.Option("--weight", help="Regularisation weight of a classical method.")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Iterations of a classical method.")] = None,
    dicom: Annotated[Optional[Path], typer.Option("--dicom", help="Also write the reconstruction (posterior mean) as a DICOM series into this folder; the std is in the HDF5 result and the PNG.")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Also write a PNG preview with the uncertainty map.")] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose result file exists.")] = False,
    operator: Annotated[Optional[str], typer.Option("--operator", help="Operator of a foreign .npy/.tif measurement.")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Image size N (NxN) for a foreign sinogram.")] = None,
    noise_std: Annotated[Optional[float], typer.Option("--noise-std", help="Noise std of the data (overrides the file's noise model).")] = None,
    views: ViewsOpt = None,
    angles: AnglesOpt = None,
    detectors: DetectorsOpt = None,
    detector_spacing: DetectorSpacingOpt = None,
    pixel_size: PixelSizeOpt = None,
    filter: FilterOpt = None,
    acceleration: AccelerationOpt = None,
    center_fraction: CenterFractionOpt = None,
    mask: MaskOpt = None,
    coils: CoilsOpt = None,
    complex_image: ComplexOpt = False,
    psf: PsfOpt = None,
    boundary: BoundaryOpt = None,
    operator_params: OperatorParamsOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices per batch for classical methods; posterior samples per network batch for a prior (a smaller batch needs less memory).")] = 16,
    bf16: Bf16Opt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved settings and stop.")] = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Reconstruct images from measurements; writes the posterior mean, its std and provenance."""
    from invdiff.io.hdf5 import is_result_file
    from invdiff.pipeline.inputs import expand_inputs, load_measurement
    from invdiff.pipeline.outputs import provenance, write_outputs
    from invdiff.pipeline.reconstruct import Settings, run_classical, run_prior
    from invdiff.pipeline.defaults import default_prior_for, default_solver_for
    from invdiff.prior.distributed import DistInfo

    if method is not None and (prior is not None or solver is not None):
        raise InputError("--method runs a classical reconstruction; it cannot be combined with --prior or --solver.")
    _refuse_method_solver_mix_up(method, solver)
    from invdiff.pipeline.pooling import check_window

    check_window(std_window)
    if method is not None and (steps is not None or guidance is not None or option):
        raise InputError("--steps, --guidance and --option set a prior's solver; a --method takes --weight and --iterations.")
    if method is not None and (samples is not None or keep_samples):
        raise InputError("--samples and --keep-samples are for the posterior samples a prior's solver draws; a --method draws none.")
    if filter is not None and method in NO_FBP_METHODS:
        raise InputError(f"--filter chooses the window of the filtered back-projection that --method fbp returns and tv "
                         f"and l1-wavelet start from; --method {method} starts from zero and uses none.")
    samples = 4 if samples is None else samples
    if method is not None and bf16:
        raise InputError("--bf16 runs a prior's network in bfloat16; a --method has no network.")
    if method is not None and std_window != 1:
        raise InputError("--std-window pools the posterior variance of a prior's samples; a --method has none.")
    the_calibration, calibration_path = None, None
    if calibration == "auto":
        the_calibration = None if method is not None else "auto"
    elif calibration != "none":
        if method is not None:
            raise InputError("--calibration scales the posterior std of a prior's samples; a --method has none.")
        from invdiff.pipeline.calibration import read_calibration

        calibration_path = Path(calibration)
        the_calibration = read_calibration(calibration_path)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}.")
    if image_size is not None and image_size < 1:
        raise InputError(f"--image-size must be at least 1, got {image_size}.")
    files = expand_inputs(inputs)
    outputs = _outputs_for(files, out, out_dir)
    if len(files) > 1 and (png is not None or dicom is not None):
        png_dir, dicom_root = png, dicom
    else:
        png_dir = dicom_root = None
    pngs = [] if png is None else [png] if png_dir is None else [png_dir / f"{f.stem}.png" for f in files]
    dicoms = [] if dicom is None else [dicom] if dicom_root is None else [dicom_root / f.stem for f in files]
    read_dirs = _prior_dirs(method, prior)
    refuse_clobbering(files + ([calibration_path] if calibration_path else []), outputs + pngs, read_dirs)
    refuse_clobbering([], dicoms, read_dirs)
    if out is not None:
        check_suffix(out, "--out", "hdf5")
    if png is not None and png_dir is None:
        check_suffix(png, "--png", "png")
    check_outputs(outputs + pngs)
    for folder in dicoms:
        check_writable(folder)  # the series is made beside the folder, then renamed onto it
    if dicom is not None:
        _check_dicom_folders(files, outputs, png, dicom if dicom_root is None else dicoms)
    share = DistInfo.from_env()
    n_inputs = len(files)  # over all ranks: one input fails the command, one of many is skipped
    if share.enabled:  # under torchrun: this process takes its share of the files
        pairs = share.deal(list(zip(files, outputs)))
        files, outputs = [p[0] for p in pairs], [p[1] for p in pairs]
    geometry = geometry_from_options(locals())
    dev = share.device(resolve_device(device))
    if bf16:
        warn_slow_bf16(dev, quiet or dry_run)
    settings = Settings(
        method=method, weight=weight, iterations=iterations, solver=solver, steps=steps, guidance=guidance,
        options=_parse_options(option), samples=samples, keep_samples=keep_samples, seed=seed, batch=batch_size,
        std_window=std_window, calibration=the_calibration, calibration_path=calibration_path,
    )
    if method is None and samples == 1 and not dry_run:
        warn("--samples 1 draws one posterior sample, so the std map holds no posterior spread "
             "(it is 0, or only the disagreement with a classical estimate the solver averages in); "
             "use --samples 2 or more for an uncertainty map.")
    loaded_priors: dict[str, object] = {}
    summary, failures = [], []
    bar = show_progress(quiet, json_out)
    for src, dst in zip(files, outputs):
        if skip_existing and dst.exists():
            if is_result_file(dst):
                summary.append({"input": str(src), "out": str(dst), "skipped": True})
                continue
            warn(f"{dst} exists but is not a readable invdiff result; reconstructing {src} again.")
        try:
            with naming(src):
                m = load_measurement(src, operator=operator, geometry=geometry, image_size=image_size, seed=seed)
            if noise_std is not None:
                m.operator["params"]["noise"] = {"kind": "gaussian", "std": float(noise_std)}
            s = Settings(**vars(settings))
            the_prior = None
            if s.method is None:
                prior_path = prior or default_prior_for(m.operator["name"])
                s.solver = s.solver or default_solver_for(m.operator["name"])
                if dry_run:
                    summary.append({"input": str(src), "out": str(dst), "prior": str(prior_path), "bf16": bf16,
                                    **vars(s)})
                    continue
                key = str(prior_path)
                if key not in loaded_priors:
                    from invdiff.prior.store import load_prior

                    try:
                        loaded_priors[key] = load_prior(prior_path, device=dev)
                    except InputError as exc:
                        exc.fatal = True  # a bad prior fails every input: stop the batch here
                        raise
                    loaded_priors[key].bf16 = bf16
                the_prior = loaded_priors[key]
            elif dry_run:
                summary.append({"input": str(src), "out": str(dst), **vars(s)})
                continue
            start = time.perf_counter()
            with progress_bar(bar, f"{src.name}", m.data.shape[0]) as advance, naming(src):
                if the_prior is None:
                    result = run_classical(m, s, dev, advance)
                else:
                    result = run_prior(m, s, the_prior, dev, advance)
            differ = (result.info.get("calibration") or {}).get("operator_settings_differ")
            if differ:
                warn(f"{src}: the calibration was fitted at other operator settings ({', '.join(differ)}); "
                     "its coverage guarantee is for those.")
            unfitting = result.info.get("calibration_none_fits")
            if unfitting:
                warn(f"{src}: no calibration shipped with the prior fits this run (the nearest, "
                     f"{Path(unfitting['nearest']).name}, was fitted at other {', '.join(unfitting['operator_settings_differ'])}); "
                     "the std is the plain sample std, which covers less than it claims (fit a scale for your "
                     "setting with `invdiff calibrate`).")
            record = provenance(m, result.info, seed=seed, device=str(dev), prior=the_prior)
            record["wall_seconds"] = time.perf_counter() - start
            this_png = png if png_dir is None else png_dir / f"{src.stem}.png"
            this_dicom = dicom if dicom_root is None else dicom_root / src.stem
            write_outputs(m, result.reconstruction, result.std, result.samples, record, out=dst, dicom_dir=this_dicom, png=this_png)
            if record.get("dicom_source_left_out"):
                warn_left_out(src, this_dicom, record["dicom_source_left_out"])
            summary.append({"input": str(src), "out": str(dst), **{k: result.info[k] for k in ("seconds",) if k in result.info}})
            if not quiet and not json_out:
                cal = result.info.get("calibration")
                scaled = f"; std x {cal['scale']:.2f} from {cal['file']}" if cal else ""
                typer.echo(f"wrote {dst} ({m.data.shape[0]} slice(s), {result.info.get('seconds', 0):.1f} s{scaled})")
        except InputError as exc:
            if n_inputs == 1 or getattr(exc, "fatal", False):
                raise
            failures.append({"input": str(src), "error": str(exc)})
            print(f"invdiff: error: {exc}", file=sys.stderr)
    if json_out or dry_run:  # a dry run prints its plan, one JSON object like a run's summary
        ranks = {"rank": share.rank, "world_size": share.world_size} if share.enabled else {}
        emit_json({"results": summary, "failed": failures, **ranks})
    if failures:
        done = "nothing was written (--dry-run)" if dry_run else "the others were written"
        raise InputError(f"{len(failures)} of {len(files)} input(s) failed and were skipped; {done}.")


def warn_left_out(src: Path, dicom_dir: Path, dropped: dict[str, str]) -> None:
    """Say which of the DICOM source's attributes the series left out (invdiff.io.dicom_meta.left_out)."""
    why = "; ".join(f"{keyword} {reason}" for keyword, reason in dropped.items())
    warn(f"{src}: the series in {dicom_dir} leaves out the DICOM source's {', '.join(dropped)}, "
         f"which a valid series cannot carry ({why}); a left-out UID gets a new one of its own.")
