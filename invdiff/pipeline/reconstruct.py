"""Measurement -> image: a classical method or posterior sampling with a diffusion prior.

Data flow (DESIGN.md): file -> io -> operator + prior -> solver -> io -> file. This module is
the "operator + prior -> solver" step for a whole stack of slices:

* a classical method (``method``) runs on batches of slices;
* a diffusion solver runs slice by slice on K = ``samples`` copies of the slice, at most
  ``batch`` of them per network batch (so that a large K cannot exhaust the memory; K <= batch,
  the usual case, is one batch), in units z where the physical image is ``scale * z``: for a
  prior normalised per slice by a percentile of |x| (99.5 by default), ``scale`` is that
  percentile of |direct reconstruction| over the volume and z is the prior's own units; for a
  prior normalised by a fixed window, the window sets ``scale`` and an offset
  (invdiff/pipeline/units.py). The solver sees ``operator.scaled(scale)``.
  The result is the mean of the K samples (``reconstruction``) and their standard deviation
  (``std``, the per-pixel posterior uncertainty), times the scale of a calibration when one is
  given or shipped with the prior for this run (invdiff/pipeline/calibration.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from invdiff.errors import DivergenceError, InputError, naming
from invdiff.io.hdf5 import Measurement
from invdiff.memory import physical_memory
from invdiff.operators.base import Operator, build_operator, to_complex
from invdiff.pipeline import calibration as calib
from invdiff.pipeline.operator_cache import cached_operator
from invdiff.pipeline.pooling import check_window, pooled_std
from invdiff.pipeline.units import PriorUnits, ShiftedDenoiser, window_units


@dataclass
class Settings:
    """What to run. Exactly one of ``method`` (classical) or a prior/solver pair is used."""

    method: str | None = None
    weight: float | None = None
    iterations: int | None = None
    solver: str | None = None
    steps: int | None = None
    guidance: float | None = None
    options: dict[str, str] = field(default_factory=dict)
    samples: int = 1
    keep_samples: bool = False
    std_window: int = 1  # pool the posterior variance over W x W pixels (invdiff/pipeline/pooling.py)
    calibration: Any = None  # a Calibration (std -> scale * std), "auto" (one shipped with the prior) or None
    calibration_path: Any = None  # the file it came from, for the provenance
    seed: int = 0
    batch: int = 16  # slices per classical batch; posterior samples per network batch


@dataclass
class Result:
    reconstruction: np.ndarray  # (slices, H, W) real, or complex64 for complex images
    std: np.ndarray | None
    samples: np.ndarray | None
    info: dict[str, Any]


def slice_operators(m: Measurement, device, dtype=torch.float32) -> Callable[[int], Operator]:
    """A function slice index -> operator; coil maps given as "estimate" are estimated per
    slice from the fully sampled k-space centre. An operator description that cannot be built
    (impossible geometry) or that the data do not fit is an InputError naming the file."""
    params = dict(m.operator["params"])
    name = m.operator["name"]
    source = m.source or "measurement"
    if name == "mri" and isinstance(params.get("coil_maps"), str):
        from invdiff.operators.coils import estimate_maps

        def per_slice(i: int) -> Operator:
            p = dict(params)
            with naming(source):
                p["coil_maps"] = np.asarray(estimate_maps(m.data[i]), np.complex64)
                op = build_operator({"name": name, "params": p}, device=device, dtype=dtype)
                check_geometry(m, op)
            return op

        return per_slice
    with naming(source):
        check_shape_before_building(m)
        op = cached_operator({"name": name, "params": params}, device=device, dtype=dtype)
        check_geometry(m, op)
    return lambda i: op


def expected_measurement_shape(name: str, params: dict) -> tuple[int, ...] | None:
    """The measurement shape a built-in operator description implies, computed from its
    parameters without building the operator (None for plug-ins or malformed descriptions;
    building then reports the problem)."""
    try:
        _, height, width = (int(v) for v in params["image_shape"])
        if name == "radon":
            from invdiff.operators.radon import default_detectors

            angles, detectors = params["angles_deg"], params.get("detectors")
            if not isinstance(angles, (list, tuple, np.ndarray)):
                return None
            detectors = default_detectors(height, width) if detectors is None else int(detectors)
            return (len(angles), detectors)
        if name == "blur":
            return (height, width)
        if name == "mri":
            maps = params.get("coil_maps")
            coils = 1 if maps is None else (None if isinstance(maps, str) else int(np.shape(maps)[0]))
            return None if coils is None else (coils, height, width)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


#: float32 copies of one image a reconstruction must be able to hold (samples, gradients, workspace)
IMAGE_COPIES = 64


def check_shape_before_building(m: Measurement) -> None:
    """Compare the data with the shape the description implies before building the operator,
    so that an edited description (a 20000x20000 image, say) cannot allocate a huge operator."""
    source = m.source or "measurement"
    try:
        _, height, width = (int(v) for v in m.operator["params"]["image_shape"])
    except (KeyError, TypeError, ValueError):
        height = width = 0  # building the operator reports a bad or missing image shape
    memory = physical_memory()
    if memory is not None and height > 0 and width > 0 and height * width * 4 * IMAGE_COPIES > memory:
        raise InputError(f"{source}: the {height}x{width} image its operator describes is too large for this "
                         f"machine's {memory / 2**30:.0f} GiB of memory.")
    expected = expected_measurement_shape(m.operator["name"], m.operator["params"])
    if expected is not None and tuple(m.data.shape[1:]) != expected:
        raise InputError(
            f"{source}: data of shape {tuple(m.data.shape[1:])} does not match the "
            f"{m.operator['name']} geometry, which expects {expected}."
        )


def check_geometry(m: Measurement, op: Operator) -> None:
    """InputError unless the measurement (and its ground truth) have the shapes ``op`` works on."""
    source = m.source or "measurement"
    if tuple(m.data.shape[1:]) != tuple(op.measurement_shape):
        raise InputError(
            f"{source}: data of shape {tuple(m.data.shape[1:])} does not match the {op.name} "
            f"geometry, which expects {tuple(op.measurement_shape)}."
        )
    truth = m.ground_truth
    if truth is not None and tuple(truth.shape[1:]) != tuple(op.image_shape[1:]):
        raise InputError(
            f"{source}: the ground_truth images are {truth.shape[1]}x{truth.shape[2]} but the {op.name} "
            f"operator's images are {op.image_shape[1]}x{op.image_shape[2]}."
        )


def _tensor(data: np.ndarray, device, dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(data))
    if t.is_complex():
        t = t.to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    else:
        t = t.to(dtype)
    return t.to(device)


def _to_image(x: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` -> ``(B, H, W)``: real for C = 1, complex64 for C = 2."""
    if x.shape[1] == 2:
        return to_complex(x)[:, 0].detach().cpu().numpy().astype(np.complex64)
    return x[:, 0].detach().cpu().numpy().astype(np.float32)


def check_data(m: Measurement) -> None:
    name = m.source or "measurement"
    if not np.isfinite(m.data).all():
        raise InputError(f"{name}: the measurement contains NaN or Inf values.")
    if not np.any(m.data):
        raise InputError(f"{name}: the measurement is all zero.")


def run_classical(m: Measurement, s: Settings, device, progress=lambda n=1: None) -> Result:
    from invdiff.classical.methods import run_method

    check_data(m)
    op_for = slice_operators(m, device)
    out = []
    start = time.perf_counter()
    shared = not isinstance(m.operator["params"].get("coil_maps"), str)
    step = s.batch if shared else 1
    for i in range(0, m.data.shape[0], step):
        op = op_for(i)
        y = _tensor(m.data[i : i + step], device, op.dtype)
        op.check_measurement(y, str(m.source or "measurement"))
        with torch.no_grad():
            x = run_method(s.method, op, y, weight=s.weight, iterations=s.iterations)
        if not torch.isfinite(x).all():
            raise DivergenceError(f"{s.method} produced NaN/Inf values; try a smaller --weight or fewer --iterations.")
        out.append(_to_image(x))
        progress(y.shape[0])
    seconds = time.perf_counter() - start
    rec = np.concatenate(out)
    info = {"method": s.method, "weight": s.weight, "iterations": s.iterations, "seconds": seconds}
    return Result(rec, None, None, info)


def image_scale(m: Measurement, device, percentile: float) -> float:
    """The ``percentile``-th percentile of |direct reconstruction| over the volume (module doc).

    ``percentile`` is the one the prior was normalised by (``normalisation.percentile`` in its
    config.json, 99.5 unless ``invdiff train --percentile`` said otherwise), so that the solver's
    units z match the prior's.
    """
    op_for = slice_operators(m, device)
    values = []
    for i in range(m.data.shape[0]):
        op = op_for(i)
        with torch.no_grad():
            x = op.direct(_tensor(m.data[i : i + 1], device, op.dtype))
        values.append(torch.linalg.vector_norm(x, dim=1).flatten().cpu())
    scale = float(torch.quantile(torch.cat(values).double(), percentile / 100.0))
    if not scale > 0:
        raise InputError(f"{m.source or 'measurement'}: the direct reconstruction is all zero; cannot set the image scale.")
    return scale


def prior_units(prior, m: Measurement, device) -> PriorUnits:
    """How the solver's units map to the image and to the prior (invdiff/pipeline/units.py)."""
    from invdiff.prior.data import Normalisation

    norm = getattr(prior, "normalisation", None) or Normalisation()  # a prior without one: the training default
    if norm.kind == "window":
        return window_units(norm, str(m.operator["name"]))
    return PriorUnits(image_scale(m, device, norm.percentile), 0.0,
                      f"{norm.percentile:g}th percentile of |direct reconstruction| over the volume")


def check_prior_fits(prior, op: Operator, source: str) -> None:
    channels = op.image_shape[0]
    if prior.channels != channels:
        raise InputError(
            f"{source}: the prior has {prior.channels} channel(s) but this measurement needs {channels} "
            f"({'complex' if channels == 2 else 'real'} images)."
        )
    h, w = op.image_shape[1:]
    multiple = int(prior.config.get("size_multiple", 1)) if hasattr(prior, "config") else 1
    fixed = getattr(prior, "image_shape", (None, None, None))
    if fixed[1] is not None and (fixed[1], fixed[2]) != (h, w):
        raise InputError(f"{source}: the prior is for {fixed[1]}x{fixed[2]} images but the measurement is {h}x{w}.")
    if multiple > 1 and (h % multiple or w % multiple):
        raise InputError(f"{source}: the image size {h}x{w} is not a multiple of {multiple}, which this prior needs.")


def with_prior_defaults(s: Settings, prior, operator: str) -> tuple[Settings, dict[str, Any]]:
    """``s`` with the solver settings a prior ships for its solver and operator kind, and what
    was taken from them. A prior's config.json may hold ``solver_defaults``, ``{solver:
    {operator: {"steps": int, "guidance": float, "options": {name: value}}}}``: the values tuned
    for that prior (the head-CT prior's diffpir guidance on CT, data/priors/ct128/TRAINING.md),
    which replace the solver's own defaults for it. Each applies only where the run did not set
    it: --steps, --guidance and --option NAME=VALUE win."""
    table = (getattr(prior, "config", None) or {}).get("solver_defaults") or {}
    per_solver = table.get(s.solver, {}) if isinstance(table, dict) else None
    mine = per_solver.get(operator, {}) if isinstance(per_solver, dict) else None
    if (not isinstance(mine, dict) or not all(k in ("steps", "guidance", "options") for k in mine)
            or not isinstance(mine.get("options", {}), dict)):
        raise InputError(f"{getattr(prior, 'path', 'the prior')}: config.json's solver_defaults for {s.solver} on "
                         f"{operator} must map steps, guidance and options; edit or remove it.")
    taken: dict[str, Any] = {}
    if "steps" in mine and s.steps is None:
        taken["steps"] = mine["steps"]
    if "guidance" in mine and s.guidance is None:
        taken["guidance"] = mine["guidance"]
    options = {k: str(v) for k, v in (mine.get("options") or {}).items() if k not in (s.options or {})}
    if options:
        taken["options"] = options
    if not taken:
        return s, taken
    return replace(s, steps=taken.get("steps", s.steps), guidance=taken.get("guidance", s.guidance),
                   options={**options, **(s.options or {})}), taken


def run_prior(m: Measurement, s: Settings, prior, device, progress=lambda n=1: None) -> Result:
    from invdiff.solvers.averaging import posterior_moments
    from invdiff.solvers.base import initial_estimate, operator_name, resolved_settings, run_solver_with_info

    check_data(m)
    if s.samples < 1:
        raise InputError(f"--samples must be at least 1, got {s.samples}.")
    check_window(s.std_window)
    source = str(m.source or "measurement")
    op_for = slice_operators(m, device)
    op0 = op_for(0)
    check_prior_fits(prior, op0, source)
    s, from_prior = with_prior_defaults(s, prior, operator_name(op0))
    units = prior_units(prior, m, device)
    scale = units.scale
    # views, sampled fraction, noise (also per image scale): what calibrate records and matches
    operator_summary = calib.operator_settings(m.operator, scale)
    settings = resolved_settings(s.solver, operator_name(op0), s.steps, s.guidance, s.options)
    pipeline = calib.pipeline(s.solver, s.samples, s.std_window, m.operator["name"], getattr(prior, "checksum", None),
                              settings)
    calibration, unfitting = None, None
    if s.calibration == "auto":  # a calibration shipped with the prior, if one fits this run
        found = calib.shipped_calibration(getattr(prior, "path", None), pipeline, m.operator, scale)
        s = replace(s, calibration=found[0] if found else None, calibration_path=found[1] if found else None)
        if not found:  # say so where the prior ships one for this pipeline at other settings
            near = calib.nearest_unfitting(getattr(prior, "path", None), pipeline, m.operator, scale)
            unfitting = {"nearest": str(near[0]), "operator_settings_differ": near[1]} if near else None
    if s.calibration is not None:
        calib.check_fits(s.calibration, pipeline, source)
        differ = calib.settings_differ(s.calibration, m.operator, scale)
        calibration = calib.record(s.calibration, s.calibration_path, differ)
    denoiser = ShiftedDenoiser(prior, units.shift) if units.shift != 0.0 else prior
    generator = torch.Generator().manual_seed(int(s.seed))
    means, stds, all_samples = [], [], []
    nfe_total = 0
    discrepancies: list[float] = []
    start = time.perf_counter()
    for i in range(m.data.shape[0]):
        op = op_for(i)
        y = _tensor(m.data[i : i + 1], device, op.dtype)
        op.check_measurement(y, source)
        op_s = op.scaled(scale)
        chunks = []
        for first in range(0, s.samples, s.batch):  # the K samples, at most s.batch per network batch
            y_k = y.expand(min(s.batch, s.samples - first), *y.shape[1:]).clone()
            x_n, solver_info = run_solver_with_info(
                s.solver,
                op_s,
                y_k,
                denoiser,
                steps=s.steps,
                guidance=s.guidance,
                options=s.options,
                generator=generator,
            )
            discrepancies.extend(solver_info.discrepancy)
            chunks.append(x_n.detach())
        nfe_total += solver_info.nfe  # evaluations per sample: the same in every chunk
        x = (torch.cat(chunks) * scale).double()
        beta = float(solver_info.options.get("classical_weight", 0.0))
        classical = None
        if beta > 0:
            classical = (initial_estimate(op_s, y, solver_info.options["classical_method"]) * scale).double()
            classical = to_complex(classical)[0, 0] if classical.shape[1] == 2 else classical[0, 0]
        if x.shape[1] == 2:
            mean, std = posterior_moments(to_complex(x)[:, 0], classical, beta)
            means.append(mean.cpu().numpy().astype(np.complex64))
        else:
            mean, std = posterior_moments(x[:, 0], classical, beta)
            means.append(mean.cpu().numpy().astype(np.float32))
        std = pooled_std(std.cpu().numpy().astype(np.float32), s.std_window)
        stds.append(std * np.float32(s.calibration.scale) if calibration else std)
        if s.keep_samples:
            all_samples.append(_to_image(x))
        progress(1)
    seconds = time.perf_counter() - start
    samples = np.stack(all_samples, axis=1) if s.keep_samples else None  # (K, slices, H, W)
    info = {
        "solver": s.solver,
        **settings,  # the steps, guidance and options each slice ran with (resolve_settings)
        **({"prior_solver_defaults": from_prior} if from_prior else {}),  # those of them the prior set
        "discrepancy_mean": float(np.mean(discrepancies)) if discrepancies else None,
        "samples": s.samples,
        "std_window": s.std_window,
        "operator_settings": operator_summary,
        **({"calibration": calibration} if calibration else {}),
        **({"calibration_none_fits": unfitting} if unfitting else {}),
        "image_scale": scale,
        "image_offset": units.offset,
        "image_units": units.description,
        "nfe_per_sample": nfe_total / max(m.data.shape[0], 1),
        "seconds": seconds,
        "seconds_per_slice": seconds / max(m.data.shape[0], 1),
    }
    return Result(np.stack(means), np.stack(stds), samples, info)
