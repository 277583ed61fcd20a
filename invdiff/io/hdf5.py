"""invdiff's HDF5 measurement and result files (DESIGN.md section 2).

Measurement file::

    /sinogram | /kspace | /image     (slices, *measurement_shape)  float32 or complex64
    /mask, /psf, /coil_maps, ...      arrays of the operator description
    /ground_truth                     (slices, H, W) float32 (complex64 for complex images)
    attrs: invdiff_operator = JSON {"name", "params"} (arrays as {"$array": "<dataset>"}),
           invdiff_format = 1, plus free-form attrs (units, source, hounsfield...)

Result file::

    /reconstruction  (slices, H, W)  posterior mean (magnitude for complex images; the
                                     fastMRI submission key)
    /reconstruction_complex (slices, H, W) complex64, complex images only
    /std             (slices, H, W)  per-pixel posterior standard deviation (optional)
    /samples         (K, slices, H, W) (optional)
    attrs: invdiff_provenance = JSON (version, command line, operator, solver, settings, ...)

Every writer is atomic (invdiff/io/atomic.py) and writes through `h5_writing`, so that a full
disk is an InputError naming the output; every reader turns a bad file into an InputError
naming the file, and every dataset is read through `read_whole`, which refuses data kept
outside the file (external raw storage, an external link, a virtual dataset).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from invdiff.errors import InputError, naming
from invdiff.io.atomic import atomic_path
from invdiff.operators.base import config_from_json, config_to_json

FORMAT_VERSION = 1
MEASUREMENT_KEYS = {"radon": "sinogram", "mri": "kspace", "blur": "image"}
DEFAULT_MEASUREMENT_KEY = "measurement"


def measurement_key(operator_name: str) -> str:
    """The dataset name of an operator's measurement (``measurement`` for plug-ins)."""
    return MEASUREMENT_KEYS.get(operator_name, DEFAULT_MEASUREMENT_KEY)


@dataclass
class Measurement:
    """A stack of measurements that share one operator description.

    data: ``(slices, *measurement_shape)``; operator: ``{"name", "params"}`` (params may hold
    numpy arrays); ground_truth: ``(slices, H, W)`` or None; attrs: JSON-able extras.
    """

    data: np.ndarray
    operator: dict[str, Any]
    ground_truth: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file for reading; InputError if missing, empty or not HDF5.

    Reading from the file can still fail later (a corrupted or truncated file often opens);
    read inside :func:`reading` to turn those failures into InputErrors too.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an HDF5 file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty.")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        reason = "truncated or corrupted" if "truncated" in str(exc).lower() or "signature" not in str(exc).lower() else "not an HDF5 file"
        raise InputError(f"{path}: cannot be read as HDF5 ({reason}).") from None


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[h5py.File]:
    """``with reading(path) as f``: the open file; any HDF5 read failure inside the block (a
    corrupted attribute, a truncated dataset, a damaged object header) becomes an InputError
    naming the file."""
    path = Path(path)
    f = open_h5(path)
    try:
        with f:
            yield f
    except InputError:
        raise
    except (OSError, RuntimeError, KeyError) as exc:  # what h5py raises for damaged files
        raise InputError(f"{path}: HDF5 file is corrupted or truncated ({_short(exc)}).") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).rstrip(".")
    return (text[:120] + "...") if len(text) > 120 else (text or type(exc).__name__)


def _read_attr(f: h5py.File, name: str, path: Path) -> Any:
    """Root attribute ``name``; InputError naming the file when it cannot be decoded (h5py
    raises TypeError or ValueError for a damaged string or an unsupported type)."""
    try:
        return f.attrs[name]
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: attribute '{name}' cannot be read ({type(exc).__name__}); the file may be corrupted.") from None


def _outside_the_file(dataset: h5py.Dataset, path: Path) -> str | None:
    """Where ``dataset`` keeps its data when that is not inside the file at ``path`` (external
    raw storage, an external link to another file, a virtual dataset), in words; else None."""
    if dataset.external is not None:
        return "keeps its data in another file (external storage)"
    if dataset.is_virtual:
        return "keeps its data in other files (a virtual dataset)"
    try:
        same = os.path.samefile(dataset.file.filename, path)
    except (OSError, ValueError, TypeError):
        same = False
    return None if same else "is a link to another file (an external link)"


def check_inside(dataset: h5py.Dataset, path: Path, key: str | None = None) -> None:
    """InputError unless ``dataset`` keeps its data inside the file at ``path``: a crafted file
    could otherwise make invdiff read (and write into its results) the bytes of any local file."""
    where = _outside_the_file(dataset, path)
    if where is not None:
        name = key if key is not None else dataset.name.lstrip("/")
        raise InputError(f"{path}: dataset '{name}' {where}; invdiff reads only data inside the file.")


def read_whole(dataset: h5py.Dataset, path: Path, key: str | None = None) -> np.ndarray:
    """All of ``dataset`` (named ``key`` in the file, default its own name) as an array;
    InputError when its data lie outside the file (`check_inside`), or, with its shape and size,
    when it does not fit in memory (a file that describes a huge dataset can still be small on
    disk). Every HDF5 dataset invdiff reads passes through here."""
    check_inside(dataset, path, key)
    try:
        return dataset[()]
    except MemoryError:
        size = dataset.size * dataset.dtype.itemsize / 2**30
        raise InputError(f"{path}: dataset '{dataset.name.lstrip('/')}' ({'x'.join(map(str, dataset.shape))} "
                         f"{dataset.dtype}, {size:.1f} GiB) does not fit in this machine's memory.") from None


def _read_dataset(f: h5py.File, key: str, path: Path) -> np.ndarray:
    obj = f.get(key)
    if obj is None:
        raise InputError(f"{path}: has no dataset '{key}'.")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path}: '{key}' is an HDF5 group, not a dataset.")
    try:
        return read_whole(obj, path, key)
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: dataset '{key}' cannot be read ({exc.__class__.__name__}); the file may be truncated.") from None


def _numeric(array: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``array`` if it holds numbers (bool, int, float, complex); else InputError naming the file."""
    array = np.asarray(array)
    if array.dtype.kind not in "biufc":
        raise InputError(f"{path}: dataset '{key}' holds {array.dtype} values, not numbers.")
    return array


def read_array(f: h5py.File, key: str, path: Path) -> np.ndarray:
    """Dataset ``key`` of the open file as a numeric numpy array (InputError naming the file
    for a group, an unreadable dataset or non-numeric values)."""
    return _numeric(_read_dataset(f, key, path), key, path)


#: operators whose measurement must be complex (True) or real (False); plug-ins are not checked.
COMPLEX_MEASUREMENT = {"radon": False, "mri": True, "blur": False}


#: operators whose measurement of one slice is 2-D, so that a 2-D dataset is one slice
ONE_SLICE_2D = ("radon", "blur")


def _check_operator_name(name: str, path: Path) -> None:
    """InputError unless ``name`` is a registered operator (built-in or plug-in)."""
    from invdiff.operators.base import OPERATORS

    known = OPERATORS.names()
    if name not in known:
        raise InputError(f"{path}: unknown operator '{name}' in the 'invdiff_operator' attribute "
                         f"(known operators: {', '.join(known) or 'none'}).")


def check_radon_geometry(path: Path, params: dict[str, Any]) -> None:
    """The radon description's own checks (no projector is built), so that an empty angle list
    or image is named as such rather than later as data that do not match the geometry."""
    from invdiff.operators.radon import check_geometry

    with naming(path):
        check_geometry(params)


#: operators whose measurement has a fixed number of dimensions, and how they read
FIXED_NDIM = {"mri": (4, "(slices, coils, H, W)")}


def _check_measurement_data(data: np.ndarray, operator_name: str, key: str, path: Path) -> np.ndarray:
    """Numeric, at least (slices, n), of the kind (real/complex) the operator measures;
    float32 / complex64 for the built-in operators. A 2-D sinogram ``(views, detectors)`` or
    blurred image ``(H, W)`` is one slice, as in a foreign .npy; MRI k-space is always
    ``(slices, coils, H, W)``, so a k-space that lost an axis is named as such (not later as
    a ground truth of the wrong slice count)."""
    data = _numeric(data, key, path)
    if data.ndim == 2 and operator_name in ONE_SLICE_2D:
        data = data[None]
    ndim, layout = FIXED_NDIM.get(operator_name, (None, ""))
    if ndim is not None and data.ndim != ndim:
        raise InputError(f"{path}: dataset '{key}' has shape {data.shape}; expected {layout}.")
    if data.ndim < 2:
        raise InputError(f"{path}: dataset '{key}' has {data.ndim} dimension(s); expected (slices, ...).")
    if data.size == 0:
        raise InputError(f"{path}: dataset '{key}' is empty (shape {data.shape}).")
    wants_complex = COMPLEX_MEASUREMENT.get(operator_name)
    if wants_complex is True and data.dtype.kind != "c":
        raise InputError(f"{path}: dataset '{key}' holds real {data.dtype} values, but {operator_name} k-space must be complex.")
    if wants_complex is False and data.dtype.kind == "c":
        raise InputError(f"{path}: dataset '{key}' holds complex values, but a {operator_name} measurement is real.")
    if wants_complex is not None:
        data = data.astype(np.complex64 if wants_complex else np.float32, copy=False)
    return data


def check_finite(value: np.ndarray, key: str, path: Path) -> None:
    """InputError naming the file and dataset when ``value`` holds NaN or Inf."""
    finite = np.isfinite(value)
    if not finite.all():
        bad = int(value.size - np.count_nonzero(finite))
        raise InputError(f"{path}: dataset '{key}' holds {bad} NaN or Inf values.")


def _check_ground_truth(truth: np.ndarray, data: np.ndarray, path: Path) -> np.ndarray:
    """``(slices, H, W)`` float32 (complex64 for complex images), one image per slice of
    ``data``, finite: InputError naming the file otherwise."""
    truth = _numeric(truth, "ground_truth", path)
    if truth.ndim == 2:
        truth = truth[None]
    if truth.ndim != 3 or truth.shape[0] != data.shape[0]:
        raise InputError(
            f"{path}: dataset 'ground_truth' has shape {truth.shape}; expected ({data.shape[0]}, H, W), one image per slice."
        )
    check_finite(truth, "ground_truth", path)
    return truth.astype(np.complex64 if truth.dtype.kind == "c" else np.float32, copy=False)


class _DiskFile(io.RawIOBase):
    """The file h5py writes through (its file-object driver): a plain file that remembers the
    first OSError of a write (a full disk), lets it reach h5py, and from then on discards
    writes, so that h5py can still close the file. Written to by path, a failed write makes
    HDF5's close fail too, and the file id it leaves open crashes the interpreter at exit."""

    def __init__(self, path: Path):
        super().__init__()
        self._fh = open(path, "r+b")
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._fh.readinto(buffer)

    def write(self, data) -> int:
        if self.error is not None:
            return len(memoryview(data))
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is not None:
            return self._fh.tell() if size is None else size
        try:
            return self._fh.truncate(size)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        if self.error is None and not self._fh.closed:
            try:
                self._fh.flush()
            except OSError as exc:
                self.error = exc
                raise

    def close(self) -> None:
        if not self.closed:
            try:
                super().close()
            finally:
                self._fh.close()


@contextlib.contextmanager
def h5_writing(path: str | Path) -> Iterator[h5py.File]:
    """``with h5_writing(tmp) as f``: a new HDF5 file at ``path`` (a temporary of
    `atomic_path`), open for writing. An OSError while writing or closing it (a full disk,
    ENOSPC) is an InputError naming ``path`` (``atomic_paths`` rewords it to name the target),
    raised once the file is closed, so that no broken HDF5 file id outlives the failure."""
    from invdiff.io.atomic import write_problem

    path = Path(path)
    try:
        disk = _DiskFile(path)
    except OSError as exc:
        raise write_problem(path, exc) from None
    try:
        with disk:
            with h5py.File(disk, "w") as f:
                yield f
    except Exception as exc:  # h5py re-raises the write's OSError, or reports it its own way
        error = disk.error or (exc if isinstance(exc, OSError) else None)
        if error is None:
            raise
        raise write_problem(path, error) from None
    if disk.error is not None:
        raise write_problem(path, disk.error)


def write_measurement(path: str | Path, m: Measurement) -> None:
    """Write ``m`` atomically as an invdiff measurement file; InputError naming ``path`` when
    it cannot be written (a full disk: nothing is left behind)."""
    text, arrays = config_to_json(m.operator)
    names = {}
    for key in arrays:
        name = key[len("params/") :] if key.startswith("params/") else key
        names[key] = name.replace("/", "_")
    for key, name in names.items():
        text = text.replace(json.dumps({"$array": key}), json.dumps({"$array": name}))
    key = measurement_key(m.operator["name"])
    with atomic_path(path) as tmp:
        with h5_writing(tmp) as f:
            f.create_dataset(key, data=m.data)
            for k, name in names.items():
                f.create_dataset(name, data=arrays[k])
            if m.ground_truth is not None:
                f.create_dataset("ground_truth", data=m.ground_truth)
            f.attrs["invdiff_operator"] = text
            f.attrs["invdiff_format"] = FORMAT_VERSION
            for k, v in m.attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v


def read_measurement(path: str | Path) -> Measurement:
    """Read an invdiff measurement file, or a fastMRI file as it is.

    Foreign files without ``invdiff_operator`` (other than fastMRI) give an InputError telling
    the user to describe the geometry on the command line. A 2-D sinogram or blurred image is
    read as one slice ``(1, ...)``; an operator name that no operator is registered under is an
    InputError listing the known ones. The file's structure is checked
    here (JSON, datasets, dtypes, dimensions); whether the data fit the operator's geometry is
    checked where the operator is built (``slice_operators`` in invdiff/pipeline/reconstruct.py).
    """
    path = Path(path)
    with reading(path) as f:
        if "invdiff_operator" not in f.attrs:
            from invdiff.io import fastmri

            if fastmri.is_fastmri(f) or "kspace" in f:  # read_fastmri says what is wrong with a bad one
                f.close()
                return _measurement_from_fastmri(path)
            raise InputError(
                f"{path}: not an invdiff measurement file (no 'invdiff_operator' attribute and no fastMRI 'kspace')."
            )
        text = _read_attr(f, "invdiff_operator", path)
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        try:
            raw = json.loads(text)
        except ValueError:
            raise InputError(f"{path}: the 'invdiff_operator' attribute is not valid JSON.") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InputError(f"{path}: the 'invdiff_operator' attribute has no operator 'name'.")
        _check_operator_name(raw["name"], path)
        raw.setdefault("params", {})
        if not isinstance(raw["params"], dict):
            raise InputError(f"{path}: the 'params' of the 'invdiff_operator' attribute are not a JSON object.")
        text = json.dumps(raw)
        refs: list[str] = []

        def collect(v):
            if isinstance(v, dict):
                if set(v) == {"$array"}:
                    refs.append(v["$array"])
                else:
                    for x in v.values():
                        collect(x)
            elif isinstance(v, list):
                for x in v:
                    collect(x)

        collect(raw)
        arrays = {}
        for ref in refs:
            if not isinstance(ref, str) or ref not in f:
                raise InputError(f"{path}: dataset '{ref}' named by the operator description is missing.")
            arrays[ref] = _numeric(_read_dataset(f, ref, path), ref, path)
        operator = config_from_json(text, arrays)
        if operator["name"] == "radon":
            check_radon_geometry(path, operator["params"])
        key = measurement_key(operator["name"])
        if key not in f:
            raise InputError(f"{path}: no '{key}' dataset for the {operator['name']} operator.")
        data = _check_measurement_data(_read_dataset(f, key, path), operator["name"], key, path)
        truth = _read_dataset(f, "ground_truth", path) if "ground_truth" in f else None
        attrs = {k: _attr(_read_attr(f, k, path)) for k in f.attrs.keys() if k not in ("invdiff_operator", "invdiff_format")}
    if truth is not None:
        truth = _check_ground_truth(truth, data, path)
    return Measurement(data=data, operator=operator, ground_truth=truth, attrs=attrs, source=path)


def _measurement_from_fastmri(path: Path) -> Measurement:
    """A fastMRI file as it is: complex image model, coil maps estimated per slice; attribute
    ``fastmri_crop`` ``[h, w]`` when results are to be cropped to the targets' size."""
    from invdiff.io import fastmri

    raw = fastmri.read_fastmri(path)
    kspace = np.asarray(raw["kspace"])  # (slices, coils, H, W)
    _, coils, h, w = kspace.shape
    params = {"image_shape": [2, h, w], "mask": np.asarray(raw["mask"], dtype=np.float32)}
    params["coil_maps"] = "estimate" if coils > 1 else None
    attrs = {k: v for k, v in raw.get("attrs", {}).items() if isinstance(v, (str, int, float))}
    attrs["source_format"] = "fastmri"
    crop = fastmri.target_shape(raw)
    if crop is not None:
        attrs["fastmri_crop"] = list(crop)
    return Measurement(data=kspace, operator={"name": "mri", "params": params}, attrs=attrs, source=path)


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_result(
    path: str | Path,
    reconstruction: np.ndarray,
    *,
    std: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    provenance: dict[str, Any] | None = None,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a result file atomically. ``reconstruction`` ``(slices, H, W)`` real or complex.
    InputError naming ``path`` when it cannot be written (a full disk: nothing is left behind)."""
    with atomic_path(path) as tmp:
        with h5_writing(tmp) as f:
            if np.iscomplexobj(reconstruction):
                f.create_dataset("reconstruction", data=np.abs(reconstruction).astype(np.float32))
                f.create_dataset("reconstruction_complex", data=reconstruction.astype(np.complex64))
            else:
                f.create_dataset("reconstruction", data=reconstruction.astype(np.float32))
            if std is not None:
                f.create_dataset("std", data=std.astype(np.float32))
            if samples is not None:
                f.create_dataset("samples", data=samples.astype(np.complex64 if np.iscomplexobj(samples) else np.float32))
            for k, v in (extra or {}).items():
                f.create_dataset(k, data=v)
            f.attrs["invdiff_provenance"] = json.dumps(provenance or {}, default=str)
            f.attrs["invdiff_format"] = FORMAT_VERSION


def is_result_file(path: str | Path) -> bool:
    """Whether ``path`` opens as a finished invdiff result: an HDF5 file with a
    'reconstruction' dataset and provenance (what ``reconstruct --skip-existing`` may skip;
    an empty, truncated or foreign file is done again). Reads no pixels."""
    try:
        with h5py.File(path, "r") as f:
            return isinstance(f.get("reconstruction"), h5py.Dataset) and "invdiff_provenance" in f.attrs
    except Exception:  # h5py raises OSError and others for files that are not HDF5
        return False


def read_result(path: str | Path) -> dict[str, Any]:
    """Read a result file: dict with reconstruction, std, samples (or None) and provenance."""
    path = Path(path)
    with reading(path) as f:
        if "reconstruction" not in f:
            raise InputError(f"{path}: no 'reconstruction' dataset; is this an invdiff result file?")
        out: dict[str, Any] = {"reconstruction": _numeric(_read_dataset(f, "reconstruction", path), "reconstruction", path)}
        if "reconstruction_complex" in f:
            out["reconstruction_complex"] = _numeric(_read_dataset(f, "reconstruction_complex", path), "reconstruction_complex", path)
        for key in ("std", "samples"):
            out[key] = _numeric(_read_dataset(f, key, path), key, path) if key in f else None
        out["provenance"] = _attr(_read_attr(f, "invdiff_provenance", path)) if "invdiff_provenance" in f.attrs else {}
    rec = out["reconstruction"]
    if rec.ndim == 2:
        rec = out["reconstruction"] = rec[None]
    elif rec.ndim != 3:
        raise InputError(f"{path}: 'reconstruction' has shape {rec.shape}; expected (slices, H, W).")
    if np.iscomplexobj(rec):
        raise InputError(f"{path}: 'reconstruction' holds complex values; invdiff stores the magnitude there.")
    out["reconstruction"] = rec.astype(np.float32, copy=False)
    for key in ("reconstruction_complex", "std"):
        value = out.get(key)
        if value is None:
            continue
        if value.ndim == 2:
            value = out[key] = value[None]
        if value.shape != rec.shape:
            raise InputError(f"{path}: '{key}' has shape {value.shape} but 'reconstruction' has {rec.shape}.")
    for key in ("reconstruction", "reconstruction_complex", "std", "samples"):
        if out.get(key) is not None:
            _check_result_values(out[key], key, path)
    if not isinstance(out["provenance"], dict):
        out["provenance"] = {}
    return out


def _check_result_values(value: np.ndarray, key: str, path: Path) -> None:
    """InputError for a result dataset that is empty, holds NaN or Inf, or (``std``) is negative."""
    if value.size == 0:
        raise InputError(f"{path}: dataset '{key}' is empty (shape {value.shape}).")
    check_finite(value, key, path)
    if key == "std" and value.min() < 0:
        bad = int(np.count_nonzero(value < 0))
        raise InputError(f"{path}: dataset 'std' holds {bad} negative values; a standard deviation is never negative.")
