"""fastMRI HDF5 files read as they are (Zbontar et al. 2018; fastmri/data/mri_data.py).

Layout of a fastMRI file:

* dataset ``kspace`` complex64 ``(slices, H, W)`` (single-coil) or ``(slices, coils, H, W)``
  (multi-coil), centred k-space, W the phase-encode (undersampled) axis;
* optional ``mask`` ``(W,)`` (test and challenge files: the sampled lines);
* optional ``reconstruction_esc`` / ``reconstruction_rss`` ``(slices, h, w)`` (training and
  validation targets) and ``ismrmrd_header`` (the ISMRMRD XML, bytes);
* root attributes ``acquisition`` (e.g. CORPD_FBK), ``max``, ``norm``, ``patient_id``, and for
  the challenge data ``acceleration`` and ``num_low_frequency``.

The k-space keeps the readout oversampling (e.g. 640 x 368 for knee), while the targets and a
submission are the centre of the image at the reconstruction size (320 x 320): the targets'
shape, else the ISMRMRD header's ``reconSpace`` matrix size (fastmri/data/mri_data.py and
``transforms.center_crop``). :func:`target_shape` finds it and :func:`center_crop` applies it.

A damaged file is an InputError naming the file and what is wrong (a ``kspace`` that is real or
of other dimensions, a target that is not a numeric ``(slices, h, w)`` stack or holds NaN/Inf,
data kept outside the file), except the ISMRMRD header: invdiff reads nothing from it but the
reconstruction size, which the targets also give, so a header that is not text is ignored with
a one-line warning on stderr and the k-space is still reconstructed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from invdiff.errors import InputError
from invdiff.notices import warn

RECONSTRUCTION_KEYS = ("reconstruction_esc", "reconstruction_rss")


def recon_space(header: str | None) -> tuple[int, int] | None:
    """``(x, y)`` of the ISMRMRD header's ``reconSpace`` ``matrixSize``, or None.

    Read by pattern, not by an XML parser, so that a header crafted against XML parsers
    (entity expansion) costs nothing.
    """
    if not header or not isinstance(header, str):
        return None
    space = re.search(r"<reconSpace>(.*?)</reconSpace>", header, re.S)
    size = re.search(r"<matrixSize>(.*?)</matrixSize>", space.group(1), re.S) if space else None
    if size is None:
        return None
    x = re.search(r"<x>\s*(\d+)\s*</x>", size.group(1))
    y = re.search(r"<y>\s*(\d+)\s*</y>", size.group(1))
    return (int(x.group(1)), int(y.group(1))) if x and y else None


def target_shape(raw: dict[str, Any]) -> tuple[int, int] | None:
    """``(h, w)`` a fastMRI reconstruction is cropped to: the shape of the file's targets,
    else the header's reconSpace; each side at most the image's (as fastMRI does). None when
    neither is known or the crop would keep the whole image."""
    height, width = raw["kspace"].shape[-2:]
    shape = None
    for key in RECONSTRUCTION_KEYS:
        if key in raw:
            shape = tuple(int(v) for v in raw[key].shape[-2:])
            break
    if shape is None:
        shape = recon_space(raw.get("ismrmrd_header"))
    if shape is None:
        return None
    shape = (min(shape[0], height), min(shape[1], width))
    return None if shape == (height, width) or min(shape) < 1 else shape


def center_crop(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centre ``shape`` of the last two axes (fastmri.data.transforms.center_crop)."""
    top = (data.shape[-2] - shape[0]) // 2
    left = (data.shape[-1] - shape[1]) // 2
    return data[..., top : top + shape[0], left : left + shape[1]]


def reference_image(raw: dict[str, Any]) -> np.ndarray | None:
    """The file's target ``(slices, h, w)``: ``reconstruction_esc`` for single-coil,
    ``reconstruction_rss`` for multi-coil data (the fastMRI leaderboard's), else the other."""
    order = RECONSTRUCTION_KEYS if raw["kspace"].shape[1] == 1 else RECONSTRUCTION_KEYS[::-1]
    for key in order:
        if key in raw:
            return raw[key]
    return None


def is_fastmri(h5file: h5py.Group | str | os.PathLike) -> bool:
    """True when the open HDF5 file (or the file at a path) holds a complex ``kspace``
    dataset of 3 or 4 dimensions: the fastMRI layout."""
    if not isinstance(h5file, h5py.Group):
        try:
            with h5py.File(h5file, "r") as f:
                return is_fastmri(f)
        except OSError:
            return False
    data = h5file.get("kspace")
    return isinstance(data, h5py.Dataset) and data.dtype.kind == "c" and data.ndim in (3, 4)


def _kspace_problem(f: h5py.File, path: Path) -> str:
    """Why the open file is not a fastMRI file, in one sentence: what its ``kspace`` is when it
    has one that is not complex of 3 or 4 dimensions, else that it has none."""
    data = f.get("kspace")
    if data is None:
        return f"{path}: not a fastMRI file (no complex 'kspace' dataset of 3 or 4 dimensions)."
    what = f"{data.dtype} {data.shape}" if isinstance(data, h5py.Dataset) else "an HDF5 group"
    return f"{path}: 'kspace' must be complex (slices, [coils,] H, W), got {what}."


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def infer_mask(kspace: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: 1 on the columns that are non-zero anywhere in ``(..., H, W)`` k-space."""
    lines = np.any(kspace != 0, axis=tuple(range(kspace.ndim - 1)))
    return np.broadcast_to(lines.astype(np.float32), kspace.shape[-2:]).copy()


def read_fastmri(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fastMRI file.

    Returns ``{"kspace": (slices, coils, H, W) complex64, "mask": (H, W) float32 0/1,
    "mask_source": "dataset" | "inferred", "attrs": {...}, "ismrmrd_header": str | None,
    "reconstruction_esc"/"reconstruction_rss": (slices, h, w) float32 when present}``.
    Single-coil k-space gets a coil axis of 1. The mask comes from the ``mask`` dataset, or
    else from the k-space columns that hold data. InputError for anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise InputError(f"{path}: not a readable HDF5 file.") from None
    try:
        with f:
            return _read(f, path)
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:  # a damaged file that still opens
        raise InputError(f"{path}: HDF5 file is corrupted or truncated ({type(exc).__name__}).") from None


def _read(f: h5py.File, path: Path) -> dict[str, Any]:
    """The body of :func:`read_fastmri` on an open file."""
    if not is_fastmri(f):
        raise InputError(_kspace_problem(f, path))
    from invdiff.io.hdf5 import read_whole

    kspace = np.asarray(read_whole(f["kspace"], path, "kspace"), dtype=np.complex64)
    if kspace.ndim == 3:
        kspace = kspace[:, None]
    _, _, height, width = kspace.shape
    if not np.isfinite(kspace).all():
        raise InputError(f"{path}: dataset 'kspace' contains NaN or Inf values.")
    out: dict[str, Any] = {"kspace": kspace}
    if "mask" in f:
        if not isinstance(f["mask"], h5py.Dataset) or f["mask"].dtype.kind not in "biuf":
            raise InputError(f"{path}: 'mask' must be a dataset of 0/1 numbers or booleans.")
        lines = np.asarray(read_whole(f["mask"], path, "mask")).reshape(-1)
        if lines.shape != (width,):
            raise InputError(f"{path}: dataset 'mask' has {lines.size} entries, but the k-space has {width} columns.")
        lines = lines.astype(np.float64)
        if not np.isin(lines, (0.0, 1.0)).all():
            raise InputError(f"{path}: dataset 'mask' must hold only 0 and 1 (or booleans).")
        out["mask"] = np.broadcast_to(lines.astype(np.float32), (height, width)).copy()
        out["mask_source"] = "dataset"
    else:
        out["mask"] = infer_mask(kspace)
        out["mask_source"] = "inferred"
    if not out["mask"].any():
        raise InputError(f"{path}: the k-space holds no sampled line (all zeros).")
    out["ismrmrd_header"] = _header(f, path)
    for key in RECONSTRUCTION_KEYS:
        if key in f:
            out[key] = _target(f, key, path)
    out["attrs"] = {k: _attr(v) for k, v in f.attrs.items()}
    return out


def _header(f: h5py.File, path: Path) -> str | None:
    """The ``ismrmrd_header`` text, or None when there is none. One that is not text (opaque
    bytes, numbers, a group) is ignored with a warning on stderr rather than refused: invdiff
    reads only the reconstruction size from it (`recon_space`), which the targets also give,
    so the k-space can still be reconstructed (uncropped when the file has no target)."""
    from invdiff.io.hdf5 import read_whole

    header = f.get("ismrmrd_header")
    if header is None:
        return None
    text = _text(read_whole(header, path, "ismrmrd_header")) if isinstance(header, h5py.Dataset) else None
    if text is None:
        warn(f"{path}: 'ismrmrd_header' is not text, so it is ignored (it gives only the reconstruction size, "
             "which then comes from the targets, or the result keeps the k-space size).")
    return text


def _text(value: Any) -> str | None:
    """``value`` as text when it is a string (str, bytes, a numpy string, or an array of one
    string), else None. Bytes that are not UTF-8 are decoded with replacement characters."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "SUO" and value.size == 1:
        value = value.reshape(-1)[0]
    value = _attr(value)  # bytes decoded as UTF-8
    return str(value) if isinstance(value, str) else None


def _target(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """Target ``key`` (``reconstruction_esc`` / ``_rss``) as float32 ``(slices, h, w)``;
    InputError naming the file when it is a group, not real numbers, of other dimensions or
    holds NaN or Inf."""
    from invdiff.io.hdf5 import check_finite, read_whole

    dataset = f[key]
    if not isinstance(dataset, h5py.Dataset):
        raise InputError(f"{path}: '{key}' is an HDF5 group, not a dataset.")
    if dataset.dtype.kind not in "biuf":
        raise InputError(f"{path}: dataset '{key}' holds {dataset.dtype} values, not real numbers.")
    if dataset.ndim != 3:
        raise InputError(f"{path}: '{key}' has shape {dataset.shape}; expected (slices, H, W).")
    target = np.asarray(read_whole(dataset, path, key), dtype=np.float32)
    check_finite(target, key, path)
    return target
