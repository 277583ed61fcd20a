"""Calibrating the posterior std on images whose truth is known (``invdiff calibrate``).

A diffusion posterior's samples can be too narrow (a prior that fills unmeasured k-space more
confidently than its errors warrant) or too wide, and K = 4 samples estimate each pixel's std
from 3 degrees of freedom. A user who has a few images like theirs with ground truth (simulated
measurements of their own reference scans) can calibrate the reported std on them: the
calibrated std is ``scale * std``, with ``scale`` chosen by conformal risk control (Angelopoulos,
Bates, Fisch, Lei & Schuster, "Conformal risk control", ICLR 2024, Theorem 1; for image
uncertainty maps, Angelopoulos et al., "Image-to-image regression with distribution-free
uncertainty quantification", ICML 2022):

    L_i(lam)   = fraction of the pixels p of calibration image i with
                 |truth_i(p) - mean_i(p)| > z * lam * std_i(p),            in [0, 1]
    R_n(lam)   = (1/n) sum_i L_i(lam)                                      (non-increasing in lam)
    lam_hat    = inf { lam >= 0 : n/(n+1) R_n(lam) + 1/(n+1) <= alpha }.

For a new image exchangeable with the n calibration images (same prior, solver, operator
setting and kind of image), E[L_new(lam_hat)] <= alpha: on average at most ``alpha`` of its pixels
lie outside ``z`` calibrated stds. The guarantee needs n >= 1/alpha - 1 images (9 at alpha =
0.1) and says nothing about images of another kind: a scale calibrated on T1 brain slices may
under-cover a T2 slice (BENCHMARKS.md, "Calibrated uncertainty"). Each 2D slice is one image.

A calibration file is JSON (no code), written by ``invdiff calibrate`` and read by
``invdiff reconstruct --calibration FILE``, which refuses it for another prior, solver, sample
count K, std window, operator or solver settings (steps, guidance, options: the same solver
run with twice the steps has another spread), since the scale holds only for the pipeline it
was fitted on. A prior directory may ship calibrations in ``calibration/*.json``;
``--calibration auto`` (the default) applies the nearest whose pipeline and operator settings
(within their TOLERANCE) match the run, and none otherwise. A Gaussian noise std is compared
in units of the image scale the prior saw (``NOISE_PER_SCALE``, where both the run and the file
give it), so a calibration fitted on images scaled to [0, 1] holds for the same scan in HU or in
a scanner's k-space units.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from invdiff.errors import InputError

KIND = "invdiff_calibration"
VERSION = 1


@dataclass
class Calibration:
    """A fitted std scale and the pipeline it holds for (module docstring)."""

    scale: float
    alpha: float
    z: float
    images: int
    risk_calibrated: float  # R_n(scale): mean fraction of calibration pixels outside z * scale * std
    risk_uncalibrated: float  # R_n(1)
    solver: str
    samples: int
    std_window: int
    operator: str
    operator_settings: dict[str, Any] = field(default_factory=dict)
    prior_checksum: str | None = None
    solver_settings: dict[str, Any] | None = None  # {"steps", "guidance", "options"}; None: not recorded
    sources: list[str] = field(default_factory=list)
    invdiff_version: str = ""

    def to_json(self) -> str:
        return json.dumps({"kind": KIND, "version": VERSION, **asdict(self)}, indent=1) + "\n"


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise InputError(f"--alpha is the fraction of pixels allowed outside the interval; it must lie between 0 and 1, got {alpha:g}.")
    return alpha


def min_images(alpha: float) -> int:
    """The fewest calibration images for which conformal risk control can meet ``alpha``."""
    return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-12))


def std_ratios(truth: np.ndarray, mean: np.ndarray, std: np.ndarray, z: float) -> np.ndarray:
    """Per pixel, the smallest scale that covers it: ``|truth - mean| / (z std)`` ``(H, W)``;
    0 where the error is 0, inf where the std is 0 but the error is not."""
    err = np.abs(np.asarray(truth, np.float64) - np.asarray(mean, np.float64))
    s = z * np.asarray(std, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(err == 0, 0.0, err / s)
    return np.where(np.isnan(r), np.inf, r)


def risk(ratios: list[np.ndarray], scale: float) -> float:
    """R_n(scale): the mean over images of the fraction of pixels with ratio > scale."""
    return float(np.mean([np.mean(r > scale) for r in ratios]))


def conformal_scale(ratios: list[np.ndarray], alpha: float) -> float:
    """``lam_hat`` of the module docstring from the per-image pixel ratios (``std_ratios``).

    R_n(lam) is a step function that drops at the pixel ratios, so the infimum is 0 or one of
    them: sort every pixel's ratio with weight 1 / (n * pixels of its image), and take the
    smallest ratio whose tail weight (pixels strictly above it) is within the target."""
    alpha = check_alpha(alpha)
    n = len(ratios)
    if n < min_images(alpha):
        raise InputError(f"conformal calibration at alpha = {alpha:g} needs at least {min_images(alpha)} calibration "
                         f"slices, got {n}; add slices or raise --alpha.")
    target = (alpha * (n + 1) - 1.0) / n  # R_n(lam) must not exceed this
    values = np.concatenate([r.ravel() for r in ratios])
    weights = np.concatenate([np.full(r.size, 1.0 / (n * r.size)) for r in ratios])
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    tail = np.concatenate([np.cumsum(weights[::-1])[::-1], [0.0]])  # tail[j] = sum of weights[j:]
    if tail[np.searchsorted(values, 0.0, side="right")] <= target + 1e-12:
        return 0.0
    above = tail[np.searchsorted(values, values, side="right")]  # weight strictly above each value
    ok = np.nonzero(above <= target + 1e-12)[0]
    if ok.size == 0 or not np.isfinite(values[ok[0]]):
        uncoverable = float(tail[np.searchsorted(values, np.inf, side="left")])
        raise InputError(f"{uncoverable:.1%} of the calibration pixels have a zero std but a nonzero error, so no scale of "
                         f"the std can cover them; reconstruct with --samples 2 or more.")
    return float(values[ok[0]])


def calibrate(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]], alpha: float, z: float = 2.0) -> tuple[float, float, float]:
    """``[(truth, mean, std), ...]`` each ``(H, W)`` -> ``(scale, R_n(scale), R_n(1))``."""
    if not z > 0:
        raise InputError(f"--z must be positive, got {z:g}.")
    ratios = [std_ratios(t, m, s, z) for t, m, s in images]
    scale = conformal_scale(ratios, alpha)
    return scale, risk(ratios, scale), risk(ratios, 1.0)


# --- the pipeline a result came from, and whether a calibration fits it ------------------

#: the Gaussian noise std in units of the image scale the prior saw (``image_scale`` of a run)
NOISE_PER_SCALE = "noise_std_per_image_scale"


def operator_settings(operator: dict[str, Any], image_scale: float | None = None) -> dict[str, Any]:
    """The scalar parameters of an operator description, which name its setting; its arrays are
    summarised (the view count of the angles, the sampled fraction of an MRI mask, the coil
    count of its maps, the width of a PSF). With the run's ``image_scale`` (the scale by which
    the solver divides the image for the prior, invdiff/pipeline/units.py), a Gaussian noise std
    is also given in units of it (``NOISE_PER_SCALE``): the same scan in other units (HU,
    1/mm, scanner units of k-space) has the same value, which `settings_differ` compares."""
    params = operator.get("params", {}) if isinstance(operator, dict) else {}
    out: dict[str, Any] = {}
    noise = params.get("noise")
    std = noise.get("std") if isinstance(noise, dict) and noise.get("kind") == "gaussian" else None
    if (image_scale and math.isfinite(image_scale) and image_scale > 0 and isinstance(std, (int, float))
            and not isinstance(std, bool)):
        out[NOISE_PER_SCALE] = _significant(std / image_scale)
    for key, value in sorted(params.items()):
        if key == "noise" and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if isinstance(v, (bool, int, float, str))}
        elif key in ("angles_deg", "mask", "coil_maps", "psf") and isinstance(value, (list, tuple, np.ndarray)):
            array = np.asarray(value)
            if key == "psf" and array.ndim == 2 and array.sum() > 0:
                out["psf_width_px"] = round(psf_width(array), 3)
            elif key == "angles_deg":
                out["views"] = int(array.size)
            elif key == "mask" and array.size:
                out["sampled_fraction"] = round(float(np.mean(array != 0)), 4)
            elif key == "coil_maps" and array.ndim >= 3:
                out["coils"] = int(array.shape[0])
        elif isinstance(value, (bool, int, float, str)) and not isinstance(value, np.ndarray):
            out[key] = value
    return out


def psf_width(psf: np.ndarray) -> float:
    """The rms radius of a PSF ``(h, w)`` in pixels, sqrt(sum p(r) |r - centroid|^2 / sum p)
    (a Gaussian of std s: sqrt(2) s)."""
    p = np.clip(np.asarray(psf, np.float64), 0, None)
    p = p / p.sum()
    yy, xx = np.indices(p.shape)
    cy, cx = (p * yy).sum(), (p * xx).sum()
    return float(np.sqrt((p * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()))


#: Relative tolerance within which an operator setting still fits a calibration: 20 % (a noise
#: std set relative to each image's peak differs a little from image to image), and 35 % for
#: the sampled fraction of an MRI mask, which varies from draw to draw: for fastMRI random line
#: masks of 128 lines its spread is 12 % of the mean at 4x (0.25) and 19 % at 8x (0.125), over
#: 200 seeds. A calibration fitted over the masks of a setting (examples/calibrate_priors.py
#: draws one per slice) so applies to 98 % or more of that setting's masks at 4x and to 89 % at
#: 8x, whose masks of 10 lines or fewer fit no file and of 24 or more are nearer to 4x
#: (tests/test_calibration.py). The noise std per image scale fits within 50 %: where the
#: missing views or k-space lines, not the noise, make the error, the scale hardly depends on
#: the noise (brain128's diffpir scale at 30 views: x2.03, 2.10, 2.09 at 0.48, 0.67, 0.96 of the
#: image scale; at 60 views x2.20, 2.25, 2.26; ct128's x2.06 / 2.15 at 0.40 / 0.59; shipped
#: files, BENCHMARKS.md), and among the files that fit, the nearest applies.
SETTINGS_TOLERANCE = 0.2
TOLERANCE = {"sampled_fraction": 0.35, NOISE_PER_SCALE: 0.5}


def _same(a: Any, b: Any, rel: float = SETTINGS_TOLERANCE) -> bool:
    """Equal settings; numbers within ``rel`` of each other (a noise std set relative to each
    image's peak differs a little from image to image)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_same(a[k], b[k], rel) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def pipeline(solver: str, samples: int, std_window: int, operator: str, prior_checksum: str | None,
             solver_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a calibration must match (check_fits): the run's solver, K, std window, operator
    name, prior weights and solver settings (``invdiff.solvers.base.resolved_settings``)."""
    return {"solver": solver, "samples": samples, "std_window": std_window, "operator": operator,
            "prior_checksum": prior_checksum, "solver_settings": solver_settings}


def pipeline_of(provenance: dict[str, Any], source: str) -> dict[str, Any]:
    """What a calibration must match, from a result's provenance (InputError if it is not a
    prior's result with a std)."""
    if not isinstance(provenance, dict) or not provenance.get("solver"):
        raise InputError(f"{source}: not a diffusion-prior result (no solver in its provenance); a classical method has no std to calibrate.")
    if provenance.get("calibration"):
        raise InputError(f"{source}: its std is already calibrated; calibrate on results written with --calibration none.")

    def damaged(problem: str) -> InputError:
        return InputError(f"{source}: the result's provenance is damaged ({problem}).")

    solver, operator, prior = provenance["solver"], provenance.get("operator"), provenance.get("prior", {})
    if not isinstance(solver, str):
        raise damaged(f"'solver' must be a name, got {solver!r}")
    counts = {key: provenance.get(key, 1) for key in ("samples", "std_window")}  # 1: not recorded by an old invdiff
    for key, value in counts.items():
        if not _whole(value):
            raise damaged(f"'{key}' must be a whole number >= 1, got {value!r}")
    if not isinstance(operator, dict) or not isinstance(operator.get("name"), str):
        raise damaged(f"'operator' must be an object with a 'name', got {operator!r}")
    if not isinstance(prior, dict) or not isinstance(prior.get("checksum"), (str, type(None))):
        raise damaged(f"'prior' must be an object whose 'checksum' is a string, got {prior!r}")
    settings = None
    if "steps" in provenance and isinstance(provenance.get("options"), dict):
        if not _whole(provenance["steps"]):
            raise damaged(f"'steps' must be a whole number >= 1, got {provenance['steps']!r}")
        settings = {"steps": provenance["steps"], "guidance": provenance.get("guidance"), "options": provenance["options"]}
    return pipeline(solver, counts["samples"], counts["std_window"], operator["name"], prior.get("checksum"), settings)


def pipeline_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[str, str]:
    """How two pipelines (`pipeline_of`) differ, as the options each was run with: e.g.
    ``("--samples 3", "--samples 2")``; several differences are joined with "and"."""
    def one(key: str, value: Any) -> str:
        if key == "operator":
            return f"the {value} operator"
        if key == "prior_checksum":
            return "a prior of unrecorded weights" if value is None else f"the prior {str(value)[:12]}..."
        return f"--{key.replace('_', '-')} {value}"

    mine, other = [], []
    for key in ours:
        if key == "solver_settings" or ours[key] == theirs.get(key):
            continue
        mine.append(one(key, ours[key]))
        other.append(one(key, theirs.get(key)))
    a, b = ours.get("solver_settings"), theirs.get("solver_settings")
    if a != b:
        named = len(mine)
        if isinstance(a, dict) and isinstance(b, dict):
            for key in ("steps", "guidance"):
                if a.get(key) != b.get(key):
                    mine.append(f"--{key} {a.get(key)}")
                    other.append(f"--{key} {b.get(key)}")
            options_a, options_b = a.get("options") or {}, b.get("options") or {}
            for key in sorted(set(options_a) | set(options_b)):
                if options_a.get(key) != options_b.get(key):
                    mine.append(f"--option {key}={options_a[key]}" if key in options_a else f"no option {key}")
                    other.append(f"--option {key}={options_b[key]}" if key in options_b else f"no option {key}")
        if len(mine) == named:  # one side did not record them, or they differ in a way not named above
            mine.append("other solver settings" if a is not None else "unrecorded solver settings")
            other.append("other solver settings" if b is not None else "unrecorded solver settings")
    return " and ".join(mine), " and ".join(other)


def _whole(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 1 (not a bool, float or string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_fits(cal: Calibration, pipeline: dict[str, Any], source: str) -> None:
    """InputError unless ``cal`` was fitted on the pipeline ``pipeline`` (keys of pipeline_of)."""
    names = {"solver": "solver", "samples": "--samples", "std_window": "--std-window", "operator": "operator",
             "prior_checksum": "prior"}
    for key, label in names.items():
        theirs, ours = pipeline.get(key), getattr(cal, key)
        if key == "prior_checksum" and (theirs is None or ours is None):
            continue
        if theirs != ours:
            what = f"{label} {ours}" if key != "prior_checksum" else f"prior {str(ours)[:12]}..."
            now = theirs if key != "prior_checksum" else f"{str(theirs)[:12]}..."
            raise InputError(f"{source}: the calibration was fitted with {what} but this run uses {now}; "
                             f"a std scale holds only for the pipeline it was fitted on.")
    differ = solver_settings_differ(cal.solver_settings, pipeline.get("solver_settings"), _option_defaults(cal.solver))
    if differ:
        what, now = differ[0]
        raise InputError(f"{source}: the calibration was fitted with {what} but this run uses {now}; "
                         f"a std scale holds only for the solver settings it was fitted with.")


def _option_defaults(solver: str) -> dict[str, Any]:
    """The solver's own option defaults; none for a solver that is not installed any more."""
    from invdiff.solvers.base import option_defaults

    try:
        return option_defaults(solver)
    except InputError:
        return {}


_ROUNDING = 1e-9  # solver settings must be equal: numbers only up to a float written by another program


def solver_settings_differ(fitted: dict[str, Any] | None, run: dict[str, Any] | None,
                           option_defaults: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """``[(as fitted, as run), ...]`` for the steps, guidance and options in which a run differs
    from a calibration; nothing when either side did not record them. An option only the run
    names was added to the solver after the fit, at a default that keeps the old behaviour
    (``option_defaults``, `invdiff.solvers.base.option_defaults`): it counts only when the run
    sets it to another value. One only the calibration names (since removed) does not count."""
    if not isinstance(fitted, dict) or not isinstance(run, dict):
        return []
    out = []
    if fitted.get("steps") != run.get("steps"):
        out.append((f"--steps {fitted.get('steps')}", f"{run.get('steps')}"))
    if not _same(fitted.get("guidance"), run.get("guidance"), _ROUNDING):
        out.append((f"--guidance {fitted.get('guidance')}", f"{run.get('guidance')}"))
    theirs, ours = fitted.get("options") or {}, run.get("options") or {}
    for key in sorted(set(theirs) & set(ours)):
        if not _same(theirs[key], ours[key], _ROUNDING):
            out.append((f"option {key}={theirs[key]}", f"{key}={ours[key]}"))
    for key in sorted(set(ours) - set(theirs)):
        default = (option_defaults or {}).get(key, ours[key])
        if not _same(default, ours[key], _ROUNDING):
            out.append((f"option {key} at its default {default} (the option is newer than the calibration)",
                        f"{key}={ours[key]}"))
    return out


def _compared(now: dict[str, Any], fitted: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's and the calibration's settings as they are compared: where both give the noise
    std in units of the image scale (``NOISE_PER_SCALE``), that stands for the noise std (the
    noise kind still counts); otherwise the noise std itself, in the measurement's units."""
    if NOISE_PER_SCALE in now and NOISE_PER_SCALE in fitted:
        def no_std(d: dict[str, Any]) -> dict[str, Any]:
            noise = d.get("noise")
            return {**d, "noise": {k: v for k, v in noise.items() if k != "std"}} if isinstance(noise, dict) else d

        return no_std(now), no_std(fitted)
    return ({k: v for k, v in now.items() if k != NOISE_PER_SCALE},
            {k: v for k, v in fitted.items() if k != NOISE_PER_SCALE})


def settings_differ(cal: Calibration, operator: dict[str, Any], image_scale: float | None = None) -> list[str]:
    """Operator settings (views, sampled fraction, noise, ...) of this run that differ from the
    calibration's by more than their TOLERANCE: allowed, but the guarantee is then for another
    setting. ``image_scale``: the run's (`operator_settings`)."""
    now, fitted = _compared(operator_settings(operator, image_scale), cal.operator_settings)
    keys = sorted(set(now) | set(fitted))
    return [k for k in keys if not _same(now.get(k), fitted.get(k), TOLERANCE.get(k, SETTINGS_TOLERANCE))]


def settings_distance(cal: Calibration, operator: dict[str, Any], image_scale: float | None = None) -> float:
    """The largest relative difference between this run's operator settings and a calibration's
    (0 when equal): among several calibrations that fit, the nearest applies."""
    def far(a: Any, b: Any) -> float:
        if isinstance(a, dict) and isinstance(b, dict):
            return max((far(a[k], b[k]) for k in set(a) & set(b)), default=0.0)
        numbers = (int, float)
        if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
            top = max(abs(a), abs(b))
            return abs(a - b) / top if top > 0 else 0.0
        return 0.0 if a == b else math.inf

    return far(*_compared(operator_settings(operator, image_scale), cal.operator_settings))


def mean_settings(settings: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator settings of a calibration fitted on several results: numbers averaged over
    them (the mean sampled fraction of the masks, the mean noise std of images whose noise was
    set relative to their peak), anything else as in the first."""
    def mean(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict) and all(isinstance(v, dict) and set(v) == set(first) for v in values):
            return {k: mean([v[k] for v in values]) for k in first}
        numbers = (int, float)
        if all(isinstance(v, numbers) and not isinstance(v, bool) for v in values) and not all(v == first for v in values):
            return _significant(float(np.mean(values)))
        return first

    return mean(settings) if settings else {}


def _significant(x: float) -> float:
    """``x`` to 7 significant digits (a JSON file need not carry float noise)."""
    return float(f"{x:.7g}")


def record(cal: Calibration, path: Path | None, differ: list[str]) -> dict[str, Any]:
    """The ``calibration`` entry of a result's provenance."""
    out = {"file": str(path) if path else None, "scale": cal.scale, "alpha": cal.alpha, "z": cal.z, "images": cal.images}
    if differ:
        out["operator_settings_differ"] = differ
    return out


@functools.lru_cache(maxsize=16)
def _shipped(prior_dir: str) -> tuple[tuple[Calibration, Path], ...]:
    """The parsed ``calibration/*.json`` of a prior directory, read once per process (a batch
    run over many files asks for them once per file)."""
    folder = Path(prior_dir) / "calibration"
    return tuple((read_calibration(path), path) for path in sorted(folder.glob("*.json"))) if folder.is_dir() else ()


def _shipped_for(prior_dir: Path | None, pipeline: dict[str, Any]) -> list[tuple[Calibration, Path]]:
    """The calibrations a prior directory ships for this pipeline (`check_fits`), whatever their
    operator settings."""
    fitted = []
    for cal, path in _shipped(str(prior_dir)) if prior_dir is not None else ():
        try:
            check_fits(cal, pipeline, str(path))
        except InputError:
            continue
        fitted.append((cal, path))
    return fitted


def shipped_calibration(prior_dir: Path | None, pipeline: dict[str, Any], operator: dict[str, Any],
                        image_scale: float | None = None) -> tuple[Calibration, Path] | None:
    """The ``calibration/*.json`` of a prior directory that fits this run (same pipeline,
    operator settings within their TOLERANCE), the nearest in operator settings when several
    do (a 6x mask is within 35 % of both the 4x and the 8x file's sampled fraction), or None.
    ``image_scale``: the run's (`operator_settings`)."""
    fitting = []
    for cal, path in _shipped_for(prior_dir, pipeline):
        if cal.prior_checksum is not None and not settings_differ(cal, operator, image_scale):
            fitting.append((settings_distance(cal, operator, image_scale), len(fitting), cal, path))
    if not fitting:
        return None
    _, _, cal, path = min(fitting)
    return cal, path


def nearest_unfitting(prior_dir: Path | None, pipeline: dict[str, Any], operator: dict[str, Any],
                      image_scale: float | None = None) -> tuple[Path, list[str]] | None:
    """When no shipped calibration fits a run (`shipped_calibration` gave None): the one fitted
    on this run's pipeline that is nearest in operator settings, and the settings in which it
    differs by more than their TOLERANCE; None when none was fitted on this pipeline."""
    near = []
    for cal, path in _shipped_for(prior_dir, pipeline):
        differ = settings_differ(cal, operator, image_scale)
        if differ:  # (one that differs in nothing was passed over for lack of a prior checksum)
            near.append((settings_distance(cal, operator, image_scale), len(near), path, differ))
    if not near:
        return None
    _, _, path, differ = min(near)
    return path, differ


def read_calibration(path: Path) -> Calibration:
    """Parse a calibration file (plain JSON; InputError for anything else)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: --calibration is a folder; give a calibration file (.json) written by `invdiff calibrate`.")
    if not path.is_file():
        raise InputError(f"{path}: calibration file does not exist.")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as a JSON calibration file ({exc.__class__.__name__}).") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{path}: not an invdiff calibration file (write one with `invdiff calibrate`).")
    if data.get("version") != VERSION:
        raise InputError(f"{path}: calibration file version {data.get('version')} is not supported (this invdiff reads {VERSION}).")
    fields_ = {k: v for k, v in data.items() if k not in ("kind", "version")}
    try:
        cal = Calibration(**fields_)
    except TypeError:
        raise InputError(f"{path}: the calibration file lacks fields or has unknown ones.") from None
    check_calibration(cal, path)
    return cal


def check_calibration(cal: Calibration, path: Path) -> None:
    """InputError naming ``path`` unless every field of ``cal`` is one `reconstruct` can apply
    (read_calibration; `invdiff calibrate` checks what it is about to write the same way)."""
    scale = cal.scale
    # a scale of 0 would turn every std into 0: a claim of certainty, not a calibration
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
        raise InputError(f"{path}: the calibration scale must be a finite number > 0, got {scale!r}.")
    for key in ("samples", "std_window", "images"):
        value = getattr(cal, key)
        if not _whole(value):
            raise InputError(f"{path}: '{key}' must be a whole number >= 1, got {value!r}.")
    if not isinstance(cal.solver, str) or not isinstance(cal.operator, str):
        raise InputError(f"{path}: 'solver' and 'operator' must be names.")
    if not isinstance(cal.operator_settings, dict) or not (cal.prior_checksum is None or isinstance(cal.prior_checksum, str)):
        raise InputError(f"{path}: 'operator_settings' must be an object and 'prior_checksum' a string.")
    settings = cal.solver_settings
    if settings is not None and not (isinstance(settings, dict) and isinstance(settings.get("options", {}), dict)
                                     and isinstance(settings.get("steps"), int) and not isinstance(settings.get("steps"), bool)):
        raise InputError(f"{path}: 'solver_settings' must be an object with whole-number 'steps' and an 'options' object.")
    for key in ("alpha", "z", "risk_calibrated", "risk_uncalibrated"):
        value = getattr(cal, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise InputError(f"{path}: '{key}' must be a finite number, got {value!r}.")
