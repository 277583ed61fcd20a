"""Cartesian k-space sampling masks ``(H, W)`` of 0/1 (float32).

The line masks follow fastMRI's ``fastmri/data/subsample.py`` exactly (Zbontar et al. 2018,
"fastMRI: An Open Dataset and Benchmarks for Accelerated MRI"): phase-encode lines are the
columns (last axis, W) of the centred k-space, every row H is read out.

* ``num_low = round(W * center_fraction)`` centre columns ``[pad, pad + num_low)`` with
  ``pad = (W - num_low + 1) // 2`` are always sampled;
* random (``RandomMaskFunc``): each other column with probability
  ``p = (W / acceleration - num_low) / (W - num_low)``, so ``E[#columns] = W / acceleration``;
* equispaced (``EquispacedMaskFractionFunc``, the rule of the public multi-coil data): the
  other columns at spacing ``a' = acceleration (num_low - W) / (num_low acceleration - W)``
  from a random offset, rounded with ``np.around``.

Seeding is fastMRI's: ``rng = np.random.RandomState(seed)``, then ``rng.randint(1)`` (its
choice among one (center_fraction, acceleration) pair), then ``rng.uniform(size=W)`` (random)
or ``rng.randint(0, round(a'))`` (the equispaced offset). The same seed gives fastMRI's mask.

The 2-D mask is variable-density Poisson-disc sampling (Bridson 2007, "Fast Poisson disk
sampling in arbitrary dimensions"; variable density as in Vasanawala et al. 2011 and sigpy's
``poisson``): k-space points at least ``r(k)`` apart, with ``r`` growing linearly with the
distance from the centre, and a fully sampled calibration box.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from invdiff.errors import InputError

MASK_KINDS = ("random", "equispaced", "poisson")

#: Poisson-disc radius at the k-space edge over the radius at the centre, minus one
#: (``r(d) = r0 (1 + POISSON_DENSITY_SLOPE d)``, d = 0 at the centre, 1 at the edge midpoints).
POISSON_DENSITY_SLOPE = 2.0
#: Relative tolerance on the achieved acceleration of the Poisson-disc bisection.
POISSON_TOLERANCE = 0.03


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise InputError(f"a mask shape must be (H, W), got {shape!r}.") from None
    if h < 1 or w < 1:
        raise InputError(f"a mask shape must have H, W >= 1, got {shape!r}.")
    return h, w


def _check_acceleration(acceleration: float) -> float:
    if not (isinstance(acceleration, (int, float)) and math.isfinite(acceleration) and acceleration >= 1):
        raise InputError(f"--acceleration must be a number >= 1, got {acceleration!r}.")
    return float(acceleration)


def _check_center_fraction(center_fraction: float) -> float:
    if not (isinstance(center_fraction, (int, float)) and math.isfinite(center_fraction) and 0 <= center_fraction <= 1):
        raise InputError(f"--center-fraction must be a number in [0, 1], got {center_fraction!r}.")
    return float(center_fraction)


def _lines_to_mask(lines: np.ndarray, height: int) -> np.ndarray:
    return np.broadcast_to(lines.astype(np.float32), (height, lines.size)).copy()


def center_lines(width: int, center_fraction: float) -> tuple[int, int]:
    """``(pad, num_low)``: the fully sampled centre columns are ``[pad, pad + num_low)``."""
    num_low = int(round(width * center_fraction))
    return (width - num_low + 1) // 2, num_low


def random_line_mask(shape: Sequence[int], acceleration: float, center_fraction: float, seed: int | None = None) -> np.ndarray:
    """fastMRI ``RandomMaskFunc`` as an ``(H, W)`` float32 0/1 mask (columns are lines)."""
    height, width = _check_shape(shape)
    acceleration = _check_acceleration(acceleration)
    pad, num_low = center_lines(width, _check_center_fraction(center_fraction))
    rng = np.random.RandomState(seed)
    rng.randint(1)  # fastMRI's choose_acceleration among one pair: keeps its draw order
    if num_low < width:
        prob = (width / acceleration - num_low) / (width - num_low)
        lines = rng.uniform(size=width) < prob
    else:
        lines = np.ones(width, dtype=bool)
    lines[pad : pad + num_low] = True
    return _lines_to_mask(lines, height)


def equispaced_line_mask(
    shape: Sequence[int], acceleration: float, center_fraction: float, seed: int | None = None
) -> np.ndarray:
    """fastMRI ``EquispacedMaskFractionFunc`` as an ``(H, W)`` float32 0/1 mask.

    If the centre lines alone reach the acceleration (``num_low >= W / acceleration``), only
    they are sampled."""
    height, width = _check_shape(shape)
    acceleration = _check_acceleration(acceleration)
    pad, num_low = center_lines(width, _check_center_fraction(center_fraction))
    rng = np.random.RandomState(seed)
    rng.randint(1)  # fastMRI's choose_acceleration
    lines = np.zeros(width, dtype=bool)
    lines[pad : pad + num_low] = True
    if num_low * acceleration < width:
        adjusted = acceleration * (num_low - width) / (num_low * acceleration - width)
        offset = rng.randint(0, max(round(adjusted), 1))
        samples = np.around(np.arange(offset, width - 1, adjusted)).astype(np.int64)
        lines[samples] = True
    return _lines_to_mask(lines, height)


def _disc_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets ``(dy, dx)`` with ``0 < dy^2 + dx^2 < radius^2``."""
    n = int(math.ceil(radius))
    dy, dx = np.mgrid[-n : n + 1, -n : n + 1]
    keep = (dy**2 + dx**2 < radius**2) & ((dy != 0) | (dx != 0))
    return dy[keep], dx[keep]


def _poisson_disc(radius: np.ndarray, calib_box: tuple[slice, slice], seed: int, candidates: int) -> np.ndarray:
    """Bridson's active-list sampling on the integer grid with a per-pixel radius ``(H, W)``.

    A candidate ``q`` drawn in the annulus ``[r(p), 2 r(p))`` around an active point ``p`` is
    accepted when no accepted point lies closer than ``r(q)``; after ``candidates`` misses
    ``p`` leaves the active list. The calibration box starts accepted (its points active),
    plus one random first point. ``np.random.RandomState(seed)`` gives every call the same
    random stream, so a search over the radius sees a deterministic function.
    """
    height, width = radius.shape
    rng = np.random.RandomState(seed)
    pad = int(math.ceil(float(radius.max()))) + 1
    grid = np.zeros((height + 2 * pad, width + 2 * pad), dtype=bool)  # accepted points, padded
    grid[pad:-pad, pad:-pad][calib_box] = True
    offsets: dict[float, tuple[np.ndarray, np.ndarray]] = {}

    def free(y: int, x: int) -> bool:
        key = round(float(radius[y, x]), 2)
        if key not in offsets:
            offsets[key] = _disc_offsets(key)
        dy, dx = offsets[key]
        return not grid[dy + (y + pad), dx + (x + pad)].any()

    ys, xs = np.nonzero(grid[pad:-pad, pad:-pad])
    active = [(int(y), int(x)) for y, x in zip(ys, xs)]
    y0, x0 = divmod(int(rng.randint(height * width)), width)
    if not grid[y0 + pad, x0 + pad] and free(y0, x0):
        grid[y0 + pad, x0 + pad] = True
        active.append((y0, x0))
    while active:
        u = rng.uniform(size=2 * candidates + 1)
        index = min(int(u[0] * len(active)), len(active) - 1)
        y, x = active[index]
        angle = 2 * np.pi * u[1 : candidates + 1]
        dist = radius[y, x] * (1 + u[candidates + 1 :])
        qy = np.rint(y + dist * np.sin(angle)).astype(np.int64)
        qx = np.rint(x + dist * np.cos(angle)).astype(np.int64)
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        for cy, cx in zip(qy[inside].tolist(), qx[inside].tolist()):
            if not grid[cy + pad, cx + pad] and free(cy, cx):
                grid[cy + pad, cx + pad] = True
                active.append((cy, cx))
                break
        else:
            active[index] = active[-1]
            active.pop()
    return grid[pad:-pad, pad:-pad].astype(np.float32)


def poisson_disc_mask(
    shape: Sequence[int],
    acceleration: float,
    seed: int | None = None,
    calib: Sequence[int] = (16, 16),
    candidates: int = 20,
) -> np.ndarray:
    """Variable-density Poisson-disc mask ``(H, W)`` float32 0/1 with ``H W / sum(mask)``
    within ``POISSON_TOLERANCE`` of ``acceleration`` where the grid allows it.

    The radius is ``r(k) = r0 (1 + POISSON_DENSITY_SLOPE d(k))`` with
    ``d = sqrt((ky / (H/2))^2 + (kx / (W/2))^2)`` from the k-space centre ``(H//2, W//2)``;
    ``r0`` is found by Newton steps on ``log(acceleration) ~ 2 log(r0)`` safeguarded by
    bisection, every trial with the same random stream (seeded by
    ``np.random.RandomState(seed)``). The centred calibration
    box ``calib = (h, w)`` is fully sampled (it counts toward the acceleration).
    """
    height, width = _check_shape(shape)
    acceleration = _check_acceleration(acceleration)
    try:
        ch, cw = (int(n) for n in calib)
    except (TypeError, ValueError):
        raise InputError(f"the calibration region must be (h, w), got {calib!r}.") from None
    if not (0 <= ch <= height and 0 <= cw <= width):
        raise InputError(f"the calibration region {ch}x{cw} does not fit in the {height}x{width} k-space.")
    total = height * width
    if acceleration > total / max(ch * cw + 1, 1):
        raise InputError(
            f"--acceleration {acceleration:g} is impossible with a {ch}x{cw} calibration region in a "
            f"{height}x{width} k-space; lower it or the calibration size."
        )
    if acceleration == 1:
        return np.ones((height, width), dtype=np.float32)
    cy, cx = height // 2, width // 2
    calib_box = (slice(cy - ch // 2, cy - ch // 2 + ch), slice(cx - cw // 2, cx - cw // 2 + cw))
    ky, kx = np.mgrid[:height, :width]
    d = np.sqrt(((ky - cy) / max(height / 2, 1)) ** 2 + ((kx - cx) / max(width / 2, 1)) ** 2)
    shape_r = 1 + POISSON_DENSITY_SLOPE * d
    stream = int(np.random.RandomState(seed).randint(2**31 - 1))  # one stream for every trial

    def achieved(r0: float) -> tuple[float, np.ndarray]:
        mask = _poisson_disc(np.maximum(r0 * shape_r, 1.0), calib_box, stream, candidates)
        return total / mask.sum(), mask

    # Density ~ 1 / r0^2, so acceleration ~ r0^2: a Newton step in log-log space, kept inside
    # the bisection bracket [lo, hi] (the achieved acceleration grows with r0).
    r0 = math.sqrt(acceleration * 2 / math.pi) / (1 + POISSON_DENSITY_SLOPE / 2)
    lo, hi = 0.0, math.inf
    best = None
    for _ in range(30):
        value, mask = achieved(r0)
        if best is None or abs(value - acceleration) < abs(best[0] - acceleration):
            best = (value, mask)
        if abs(value - acceleration) <= POISSON_TOLERANCE * acceleration:
            break
        if value < acceleration:
            lo = max(lo, r0)
        else:
            hi = min(hi, r0)
        step = r0 * math.sqrt(acceleration / value)
        # the step moves away from the bound just set, so leaving the bracket means the
        # other bound is finite and positive: bisect (geometrically) instead
        r0 = step if lo < step < hi else math.sqrt(lo * hi)
        if hi - lo < 1e-6 * hi:
            break
    return best[1]


def make_mask(
    kind: str, shape: Sequence[int], acceleration: float, center_fraction: float, seed: int | None = None
) -> np.ndarray:
    """The ``(H, W)`` mask of ``kind`` (random, equispaced, poisson). For poisson the
    calibration box is ``round(center_fraction * (H, W))`` (at least 1x1 when the fraction is
    positive)."""
    if kind == "random":
        return random_line_mask(shape, acceleration, center_fraction, seed)
    if kind == "equispaced":
        return equispaced_line_mask(shape, acceleration, center_fraction, seed)
    if kind == "poisson":
        height, width = _check_shape(shape)
        fraction = _check_center_fraction(center_fraction)
        calib = tuple(max(int(round(fraction * n)), 1 if fraction > 0 else 0) for n in (height, width))
        return poisson_disc_mask((height, width), acceleration, seed, calib)
    raise InputError(f"unknown --mask '{kind}'; choose one of {', '.join(MASK_KINDS)}.")
