"""PNG previews (Pillow only): one image, a reconstruction beside its uncertainty, a grid of samples.

Intensities are windowed linearly, ``grey = clip((x - vmin) / (vmax - vmin), 0, 1)``, with
vmin/vmax the 0.5th and 99.5th percentiles by default so a few outliers do not wash out the
image. Complex images are shown as magnitude; NaN/Inf pixels are drawn black. All files are
written atomically (invdiff/io/atomic.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from invdiff.errors import InputError
from invdiff.io.atomic import atomic_path, write_reason

PERCENTILES = (0.5, 99.5)
MIN_PANEL = 128  # small images are enlarged (nearest neighbour, integer factor) to at least this size
_PAD = 4
_LABEL_HEIGHT = 26  # two text lines: the column's name, then its window
# anchor colours of a perceptually ordered black-red-yellow-white map (like "inferno") for std
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def save_png(
    path: str | os.PathLike, image: Any, vmin: float | None = None, vmax: float | None = None, *, bits: int = 8
) -> Path:
    """Write one ``(H, W)`` image as a grey PNG, 8-bit (default) or 16-bit.

    vmin, vmax: the intensities drawn black and white (default: 0.5th/99.5th percentiles).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16; got {bits}")
    array = _as_images(image, ndim=2, name="image")
    unit = _window(array, vmin, vmax)
    if bits == 8:
        pixels = np.rint(unit * 255).astype(np.uint8)
    else:
        pixels = np.rint(unit * 65535).astype(np.uint16)
    return _write(path, pixels)


def save_preview(
    path: str | os.PathLike,
    reconstruction: Any,
    std: Any = None,
    reference: Any = None,
    *,
    max_slices: int = 4,
) -> Path:
    """Write a preview: one row per shown slice, columns [reference], reconstruction, [std].

    reconstruction, std, reference: ``(slices, H, W)`` (or ``(H, W)``), the same shape.
    Shown slices: all of them up to ``max_slices``, else ``max_slices`` evenly spaced interior
    slices (one slice: the middle one when ``max_slices=1``). Reconstruction and reference share
    one grey window (the reconstruction's percentiles), so their difference is visible; the
    posterior std has its own scale from 0 to its 99.5th percentile, in a heat colour map. The
    header names each column with its window ``[vmin, vmax]``.
    """
    recon = _as_images(reconstruction, ndim=3, name="reconstruction")
    columns: list[tuple[str, np.ndarray, bool, tuple[float, float]]] = []
    lo, hi = _limits(recon, None, None)
    if reference is not None:
        ref = _same_shape(_as_images(reference, ndim=3, name="reference"), recon, "reference")
        columns.append(("reference", ref, False, (lo, hi)))
    columns.append(("reconstruction", recon, False, (lo, hi)))
    if std is not None:
        sd = _same_shape(_as_images(std, ndim=3, name="std"), recon, "std")
        finite = sd[np.isfinite(sd)]
        top = float(np.percentile(finite, PERCENTILES[1])) if finite.size else 1.0
        columns.append(("std", sd, True, (0.0, top if top > 0 else 1.0)))
    rows = _preview_slices(recon.shape[0], max_slices)
    panels = []
    for k in rows:
        row = []
        for _, images, heat, (vmin, vmax) in columns:
            unit = _window(images[k], vmin, vmax)
            row.append(_heat(unit) if heat else np.repeat(_to_uint8(unit)[..., None], 3, axis=-1))
        panels.append(row)
    labels = [f"{name}\n[{_fmt(vmin)}, {_fmt(vmax)}]" for name, _, _, (vmin, vmax) in columns]
    return _write(path, _compose(panels, labels))


def save_grid(path: str | os.PathLike, images: Any, ncols: int | None = None) -> Path:
    """Write ``images`` ``(N, H, W)`` as a grid (``ncols`` default ceil(sqrt(N))), one shared window."""
    stack = _as_images(images, ndim=3, name="images")
    n = stack.shape[0]
    ncols = int(np.ceil(np.sqrt(n))) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1; got {ncols}")
    vmin, vmax = _limits(stack, None, None)
    tiles = [np.repeat(_to_uint8(_window(image, vmin, vmax))[..., None], 3, axis=-1) for image in stack]
    blank = np.zeros_like(tiles[0])
    rows = [tiles[r : r + ncols] + [blank] * max(0, r + ncols - n) for r in range(0, n, ncols)]
    return _write(path, _compose(rows, None))


# ---------------------------------------------------------------------------------------


def _as_images(value: Any, ndim: int, name: str) -> np.ndarray:
    """A float64 numpy copy of an array or torch tensor (magnitude if complex), ``ndim`` dims."""
    if hasattr(value, "detach"):  # a torch tensor: one explicit copy to the host for drawing
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if np.iscomplexobj(array):
        array = np.abs(array)
    array = array.astype(np.float64)
    if ndim == 3 and array.ndim == 2:
        array = array[None]
    if array.ndim != ndim or array.size == 0:
        raise ValueError(f"{name} must have {ndim} dimensions and pixels; got shape {array.shape}")
    return array


def _same_shape(array: np.ndarray, recon: np.ndarray, name: str) -> np.ndarray:
    if array.shape != recon.shape:
        raise ValueError(f"{name} has shape {array.shape}, the reconstruction {recon.shape}")
    return array


def _limits(array: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(finite, PERCENTILES)
    lo = float(lo) if vmin is None else float(vmin)
    hi = float(hi) if vmax is None else float(vmax)
    if hi <= lo:  # a constant image (or a degenerate window): fall back to min/max, then to a unit window
        lo, hi = (float(finite.min()), float(finite.max())) if vmin is None and vmax is None else (lo, hi)
        if hi <= lo:
            hi = lo + 1.0
    return lo, hi


def _window(array: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    lo, hi = _limits(array, vmin, vmax)
    unit = np.clip((array - lo) / (hi - lo), 0.0, 1.0)
    return np.where(np.isfinite(unit), unit, 0.0)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 255).astype(np.uint8)


def _heat(unit: np.ndarray) -> np.ndarray:
    """Map [0, 1] to RGB by linear interpolation between the `_HEAT` anchors."""
    position = unit * (len(_HEAT) - 1)
    index = np.minimum(position.astype(int), len(_HEAT) - 2)
    frac = (position - index)[..., None]
    rgb = _HEAT[index] * (1 - frac) + _HEAT[index + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def _preview_slices(n: int, max_slices: int) -> list[int]:
    if max_slices < 1:
        raise ValueError(f"max_slices must be at least 1; got {max_slices}")
    if n <= max_slices:
        return list(range(n))
    if max_slices == 1:
        return [n // 2]
    return [int(round(v)) for v in np.linspace(0, n - 1, max_slices + 2)[1:-1]]


def _compose(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None) -> np.ndarray:
    """Tile RGB panels ``(H, W, 3)`` with padding, enlarging small panels, under a label strip."""
    h, w = rows[0][0].shape[:2]
    factor = max(1, int(np.ceil(MIN_PANEL / max(h, w))))
    ph, pw = h * factor, w * factor
    ncols = max(len(r) for r in rows)
    top = _LABEL_HEIGHT if labels else 0
    canvas = np.full((top + len(rows) * (ph + _PAD) + _PAD, ncols * (pw + _PAD) + _PAD, 3), 32, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            big = np.repeat(np.repeat(panel, factor, axis=0), factor, axis=1)
            y, x = top + _PAD + i * (ph + _PAD), _PAD + j * (pw + _PAD)
            canvas[y : y + ph, x : x + pw] = big
    if labels:
        from PIL import Image, ImageDraw

        image = Image.fromarray(canvas)
        draw = ImageDraw.Draw(image)
        for j, label in enumerate(labels):
            for line, text in enumerate(label.split("\n")):
                draw.text((_PAD + j * (pw + _PAD), 1 + 12 * line), text, fill=(230, 230, 230))
        canvas = np.asarray(image)
    return canvas


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _write(path: str | os.PathLike, pixels: np.ndarray) -> Path:
    """Write RGB or grey ``pixels`` as a PNG file at ``path``, atomically. InputError naming
    the path for a folder, a device or pipe (`atomic_path` refuses it) or a failed write (a
    full disk; nothing is left behind)."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: PNG output path is a folder; give a file name.")
    image = Image.fromarray(pixels)
    with atomic_path(path) as tmp:
        try:
            image.save(tmp, format="PNG")
        except OSError as exc:
            raise InputError(f"{path}: cannot write the PNG file ({write_reason(exc)}).") from None
    return path
