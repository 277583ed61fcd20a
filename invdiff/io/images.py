"""Read images for training and simulation: PNG/JPEG, TIFF, NPY/NPZ, HDF5, DICOM, NIfTI.

Every reader returns an `ImageStack` whose ``data`` is ``(slices, H, W)`` float32 (complex64
for complex input) in the file's own units (no normalisation: that is recorded in the prior),
and every failure is an `InputError` naming the file. Loading never executes code from the
file (``np.load(allow_pickle=False)``, no pickles anywhere).

Conventions (the choices a reader has to make):
- Channels: an image must be single-channel. RGB whose three channels are identical, and an
  alpha channel that is fully opaque, are accepted as grey. Other colour images are an
  InputError ("expected a single-channel image; got 3 channels") unless ``allow_rgb=True``,
  which converts to grey with the ITU-R BT.601 luma weights ``0.299 R + 0.587 G + 0.114 B``
  (dropping any alpha), or ``channel=N``, which reads that one channel (of a colour PNG/JPEG,
  or of a TIFF's samples or fluorescence channels). Colour DICOM is always an error.
- Values: NaN or Inf anywhere is an InputError. A file whose every value is zero is an
  InputError too (nothing to learn from or reconstruct; it is almost always a failed export),
  while single all-zero slices inside a stack are kept (the ends of a CT volume often are).
- NIfTI volumes are reoriented to the closest canonical orientation (RAS+, then flipped to
  DICOM's LPS+) and sliced along ``axis`` (0: sagittal, 1: coronal, 2: axial) in the DICOM
  display convention, so that a NIfTI volume and the DICOM series of the same scan give the
  same arrays: axial slices have rows anterior->posterior and columns right->left, coronal
  rows superior->inferior and columns right->left, sagittal rows superior->inferior and
  columns anterior->posterior; slices go along the slice normal as a DICOM series is sorted
  (axial: inferior->superior, coronal: anterior->posterior, sagittal: left->right).
- ``spacing`` is ``(slice, row, column)`` in mm when the format records it (DICOM, NIfTI),
  else None; the slice spacing may be None for a single DICOM slice.
- HDF5 without ``key``: the only image dataset in the file, (H, W) or (slices, H, W) once
  singleton leading axes are dropped, as for NPY. NPZ without ``key``: the only array.
- Nothing is read in part: a TIFF written page by page (one tifffile series per page) is
  stacked, or refused when its pages differ; a 16-bit PNG with colour or alpha, which Pillow
  would cut to 8 bits, is refused.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np

from invdiff.errors import InputError
from invdiff.io import dicom

Kind = Literal["png", "jpeg", "tiff", "npy", "npz", "hdf5", "dicom", "nifti"]

_SUFFIX_KIND: dict[str, Kind] = {
    ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff",
    ".npy": "npy", ".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", ".nii": "nifti", ".nii.gz": "nifti",
}
_MAGIC: list[tuple[int, bytes, Kind]] = [
    (0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"), (0, b"II*\x00", "tiff"),
    (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"), (0, b"MM\x00+", "tiff"),
    (0, b"\x93NUMPY", "npy"), (0, b"PK\x03\x04", "npz"), (0, b"\x89HDF\r\n\x1a\n", "hdf5"),
    (128, b"DICM", "dicom"), (344, b"n+1\x00", "nifti"),
]
_LUMA = np.array([0.299, 0.587, 0.114])
#: the formats whose channels ``channel=N`` picks from (colour PNG/JPEG, multi-channel TIFF)
_CHANNEL_KINDS = ("png", "jpeg", "tiff")


@dataclass
class ImageStack:
    """Images read from one file or DICOM series.

    data: ``(slices, H, W)`` float32, or complex64 for complex input, in the file's units
        (HU for a CT DICOM).
    source: the file or DICOM series folder read.
    kind: the format read.
    hounsfield: True for CT DICOM in Hounsfield units.
    dicom_meta: the first slice's pydicom Dataset (no pixel data) or None.
    spacing: ``(slice, row, column)`` mm when known, else None.
    """

    data: np.ndarray
    source: Path
    kind: Kind
    hounsfield: bool = False
    dicom_meta: Any = None
    spacing: tuple[float | None, float, float] | None = None


def read_images(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    axis: int = 2,
    allow_rgb: bool = False,
    volume: int | None = None,
    series: str | None = None,
    channel: int | None = None,
) -> ImageStack:
    """Read one image file, image stack or DICOM series folder into an `ImageStack`.

    path: PNG/JPEG, TIFF (2D or a stack), NPY/NPZ ((H, W) or (slices, H, W)), HDF5, DICOM
        file, DICOM series folder, or NIfTI (.nii/.nii.gz); the format comes from the suffix,
        or from the file's first bytes when the suffix is unknown.
    key: the NPZ array or HDF5 dataset to read (default: the only one).
    axis: NIfTI axis to slice along, after reorientation to LPS+ (0: sagittal, 1: coronal,
        2: axial); slices come out in the DICOM display convention (module docstring).
    allow_rgb: convert colour images to grey instead of raising (see module docstring).
    volume: the volume of a 4-D NIfTI (fMRI time points, diffusion directions) to read, from 0;
        required for one, refused for every other input.
    series: the DICOM series to read from a folder that holds several, by SeriesNumber or
        SeriesInstanceUID (`dicom.select_series`); refused for every other input.
    channel: the channel of a colour PNG/JPEG or of a multi-channel TIFF (samples or
        fluorescence channels) to read, from 0 (1: green of RGB); refused for other formats.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist.")
    if series is not None and not path.is_dir():
        raise _series_of_a_file(path)
    if path.is_dir():
        if volume is not None:
            raise InputError(f"{path}: --volume picks one volume of a 4-D NIfTI file, not of a DICOM folder.")
        return _read_dicom_folder(path, series)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty.")
    kind = _kind_of(path)
    if kind is None:
        raise InputError(
            f"{path}: unknown image format (expected PNG, JPEG, TIFF, NPY, NPZ, HDF5, DICOM or NIfTI)."
        )
    if key is not None and kind not in ("npz", "hdf5"):
        raise InputError(f"{path}: --key only applies to NPZ and HDF5 files, not {kind.upper()}.")
    if volume is not None and kind != "nifti":
        raise InputError(f"{path}: --volume picks one volume of a 4-D NIfTI file, not of a {kind.upper()} file.")
    if channel is not None and kind not in _CHANNEL_KINDS:
        raise InputError(f"{path}: --channel picks one channel of a colour PNG/JPEG or multi-channel TIFF, not of a "
                         f"{kind.upper()} file.")
    if channel is not None and allow_rgb:
        raise InputError(f"{path}: give --channel or --grey, not both.")
    if kind == "dicom":
        one = dicom.read_dicom_series([path])
        stack = ImageStack(one.data, path, "dicom", one.hounsfield, one.meta, one.spacing)
    elif kind == "nifti":
        data, spacing = _read_nifti(path, axis, volume)
        stack = ImageStack(data, path, "nifti", spacing=spacing)
    elif kind in _CHANNEL_KINDS:
        reader = _read_tiff if kind == "tiff" else _read_pillow
        stack = ImageStack(reader(path, key, allow_rgb, channel), path, kind)
    else:
        stack = ImageStack(_READERS[kind](path, key, allow_rgb), path, kind)
    stack.data = _checked(stack.data, path)
    return stack


def read_image_paths(
    paths: Sequence[str | os.PathLike],
    *,
    failures: list[tuple[Path, str]] | None = None,
    **selection: Any,
) -> list[ImageStack]:
    """Read many files and folders. Folders are searched recursively for image files (hidden
    files and unknown suffixes are skipped); the DICOM files of one folder become one stack per
    series. An explicitly named file is always read (and may fail).

    selection: `read_images`' keywords (key, axis, allow_rgb, volume, series, channel), each
        passed to the files it applies to: ``volume`` to NIfTI files, ``channel`` to PNG, JPEG
        and TIFF files (a folder's other files are read without them). ``series`` keeps, in
        every folder, only the DICOM series of that number or UID (`dicom.select_series`;
        folders without it are passed over, and other files are not read); InputError when no
        folder has it.

    failures: None (default) raises the first InputError. A list makes the read lenient, for
    batch runs: each file (or DICOM series) that cannot be read is appended as ``(path,
    message)`` and skipped, and the others are returned.
    """
    stacks: list[ImageStack] = []

    def attempt(source: Path, read: Callable[[], Any]) -> Any:
        if failures is None:
            return read()
        try:
            return read()
        except InputError as exc:
            failures.append((Path(source), str(exc)))
            return None

    unknown = set(selection) - set(inspect.signature(read_images).parameters) - {"path"}
    if unknown:
        raise TypeError(f"read_image_paths() got unexpected keyword arguments {sorted(unknown)}")
    series = selection.pop("series", None)
    for entry in map(Path, paths):
        if series is not None and not entry.is_dir():
            raise _series_of_a_file(entry)
        if entry.is_dir():
            before = len(failures) if failures is not None else 0
            found = _read_folder(entry, selection, series, attempt)
            if not found and (failures is None or len(failures) == before):
                message = (f"{entry}: folder contains no image files." if series is None else
                           f"{entry}: no folder in it holds a DICOM series with number or UID {series.strip()!r}.")
                if failures is None:
                    raise InputError(message)
                failures.append((entry, message))
            stacks.extend(found)
        else:
            stack = attempt(entry, lambda: read_images(entry, **_selection_for(entry, selection)))
            if stack is not None:
                stacks.append(stack)
    return stacks


# ---------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------


def _suffix_kind(path: Path) -> Kind | None:
    if path.name.lower().endswith(".nii.gz"):
        return "nifti"
    return _SUFFIX_KIND.get(path.suffix.lower())


def image_kind(path: str | os.PathLike) -> Kind | None:
    """The format `read_images` would read ``path`` as, without reading its pixels: "dicom"
    for a folder (a DICOM series), None for an unknown format or a file that does not exist
    (`read_images` then says which)."""
    path = Path(path)
    if path.is_dir():
        return "dicom"
    if not path.is_file() or path.stat().st_size == 0:
        return None
    return _kind_of(path)


def _kind_of(path: Path) -> Kind | None:
    """The format from the suffix, else from the file's first bytes."""
    kind = _suffix_kind(path)
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as fh:
            head = fh.read(348)
    except OSError as exc:
        raise InputError(f"{path}: cannot be opened ({dicom._reason(exc)}).") from None
    for offset, magic, magic_kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return magic_kind
    return None


#: PNG colour types (IHDR byte 25) that Pillow reads at 8 bits when the bit depth is 16
_PNG_COLOUR_16 = {2: "RGB", 4: "grey-with-alpha", 6: "RGBA"}


def _check_png_depth(path: Path) -> None:
    """InputError for a 16-bit PNG with colour or alpha: Pillow keeps only the high byte of
    each sample, which would divide the values by 256 without a word. The bit depth and colour
    type are bytes 24 and 25 of the file (the IHDR chunk that follows the signature)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except OSError:
        return  # Pillow reports the file as unreadable
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return  # not a PNG (Pillow reads it by its content), or too short: Pillow reports it
    depth, colour = head[24], head[25]
    if depth == 16 and colour in _PNG_COLOUR_16:
        raise InputError(
            f"{path}: 16-bit {_PNG_COLOUR_16[colour]} PNG cannot be read without losing its low 8 bits; "
            "save it as a 16-bit greyscale PNG or as a TIFF."
        )


def _read_pillow(path: Path, key: str | None, allow_rgb: bool, channel: int | None = None) -> np.ndarray:
    from PIL import Image, ImageOps

    _check_png_depth(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)  # camera JPEGs: apply the EXIF orientation
            if img.mode in ("P", "PA"):
                img = img.convert("RGBA")
            elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            pixels = np.asarray(img)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise InputError(f"{path}: not a readable image, or truncated ({dicom._reason(exc)}).") from None
    if channel is not None:
        return _pick_channel(pixels, pixels.ndim - 1 if pixels.ndim == 3 else None, channel, path)[None]
    if pixels.ndim == 2:
        return pixels[None].astype(np.float32)
    return _single_channel(pixels, path, allow_rgb)[None]


def _pick_channel(pixels: np.ndarray, axis: int | None, channel: int, path: Path) -> np.ndarray:
    """``pixels`` without its channel ``axis``, at index ``channel`` (float32); InputError when
    there is no such axis or index."""
    if axis is None or pixels.shape[axis] < 2:
        raise InputError(f"{path}: --channel picks one channel of a colour or multi-channel image; this one has one channel.")
    count = pixels.shape[axis]
    if not 0 <= channel < count:
        raise InputError(f"{path}: --channel must lie between 0 and {count - 1} (the image has {count} channels); got {channel}.")
    return np.take(pixels, channel, axis=axis).astype(np.float32)


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's logged warnings (about a damaged file's tags) while reading: a bad
    file is reported once, as one sentence, by the caller."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tiff_pixels(path: Path) -> tuple[np.ndarray, str]:
    """The pixels of a TIFF file and their axes (tifffile's letters), read quietly.

    One image series is returned as stored. A file written page by page holds one series per
    page: when every series is one plane (``YX``, or ``YX`` with samples ``S``) of the same
    shape, dtype and axes, they are stacked along a new leading axis ``I`` (slices), so no
    page is left out. Reduced-resolution series (thumbnails, NewSubfileType bit 0) are skipped.
    Series that cannot be stacked are an InputError naming their count and shapes.
    """
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            series = [s for s in tif.series if not s.keyframe.is_reduced] or list(tif.series[:1])
            if len(series) == 1:
                return series[0].asarray(), series[0].axes
            _check_stackable_series(series, path)
            return np.stack([s.asarray() for s in series]), "I" + series[0].axes
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable TIFF file, or truncated ({dicom._reason(exc)}).") from None


def _check_stackable_series(series: Sequence[Any], path: Path) -> None:
    """InputError unless the tifffile series are single planes of one shape, dtype and axes."""
    first = series[0]
    planes = all(len(s.axes.replace("S", "")) == 2 for s in series)
    same = all((s.shape, s.dtype, s.axes) == (first.shape, first.dtype, first.axes) for s in series)
    if planes and same:
        return
    shapes = [f"{'x'.join(map(str, s.shape))} {s.dtype}" for s in series[:6]] + (["..."] if len(series) > 6 else [])
    raise InputError(
        f"{path}: TIFF holds {len(series)} image series that are not one stack of equal 2D images "
        f"({', '.join(shapes)}); save them as separate files or as one (slices, H, W) stack."
    )


def _read_tiff(path: Path, key: str | None, allow_rgb: bool, channel: int | None = None) -> np.ndarray:
    pixels, axes = _tiff_pixels(path)
    if channel is not None:  # samples (RGB) or channels (fluorescence): the one asked for
        channel_axes = [a for a in "SC" if a in axes and pixels.shape[axes.index(a)] > 1]
        if len(channel_axes) == 2:
            raise InputError(
                f"{path}: this TIFF has both {pixels.shape[axes.index('S')]} samples per pixel (RGB) and "
                f"{pixels.shape[axes.index('C')]} channels, and --channel picks along one axis only; save one "
                "channel per file (or one grey image per channel) and read that."
            )
        which = channel_axes[0] if channel_axes else None
        pixels = _pick_channel(pixels, axes.index(which) if which else None, channel, path)
        axes = axes.replace(which, "")
    if "S" in axes:  # samples per pixel (RGB): move them last and reduce to one channel
        pixels = _single_channel(np.moveaxis(pixels, axes.index("S"), -1), path, allow_rgb)
        axes = axes.replace("S", "")
    if "C" in axes and pixels.shape[axes.index("C")] > 1:
        raise InputError(
            f"{path}: expected a single-channel image; got {pixels.shape[axes.index('C')]} channels (give --channel N "
            "to read one of them)."
        )
    return _as_stack(pixels, path)


def _read_npy(path: Path, key: str | None, allow_rgb: bool) -> np.ndarray:
    return _as_stack(read_npy(path), path)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The array of an NPY file as stored, after `check_npy_header` (so never an object array,
    a string array or a truncated file); InputError naming the file for anything else."""
    path = Path(path)
    with open(path, "rb") as fh:
        check_npy_header(fh, path.stat().st_size, path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{path}: not a readable NPY array ({dicom._reason(exc)}).") from None


def read_array(path: str | os.PathLike) -> np.ndarray:
    """The numeric array of an NPY file or the pixels of a TIFF file (`_tiff_pixels`: pages
    written one by one are stacked), as stored (no conversion): what a foreign measurement (a
    sinogram, a blurred image) is read with. The checks of the image readers apply (header,
    truncation, object and string dtypes, tifffile's log silenced); a colour TIFF is refused.
    InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file does not exist." if not path.exists() else f"{path}: is a folder, not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty.")
    if _kind_of(path) == "npy":
        return read_npy(path)
    pixels, axes = _tiff_pixels(path)
    for axis in "SC":
        if axis in axes and pixels.shape[axes.index(axis)] > 1:
            raise InputError(f"{path}: expected single-channel data; got {pixels.shape[axes.index(axis)]} channels.")
    problem = _dtype_problem(pixels.dtype)
    if problem:
        raise InputError(f"{path}: {problem}.")
    return pixels


def _read_npz(path: Path, key: str | None, allow_rgb: bool) -> np.ndarray:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
            if not names:
                raise InputError(f"{path}: NPZ archive holds no arrays.")
            if key is None and len(names) > 1:
                raise InputError(f"{path}: NPZ holds several arrays ({', '.join(names)}); choose one with --key.")
            name = key if key is not None else names[0]
            if name not in names:
                raise InputError(f"{path}: NPZ has no array '{name}' (it has {', '.join(names)}).")
            info = archive.getinfo(name + ".npy")
            with archive.open(info) as member:
                check_npy_header(member, info.file_size, path)
            with archive.open(info) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable NPZ archive, or truncated ({dicom._reason(exc)}).") from None
    return _as_stack(array, path)


#: NPY format versions: (major, minor) -> (bytes of the header length, header text encoding)
_NPY_VERSIONS = {(1, 0): (2, "latin1"), (2, 0): (4, "latin1"), (3, 0): (4, "utf-8")}
#: the longest header np.load reads without being told otherwise (numpy's own limit)
_NPY_MAX_HEADER = 10000


def check_npy_header(fh: Any, size: int, path: Path) -> None:
    """Read and check an NPY header (versions 1.0, 2.0 and 3.0) from ``fh`` against the
    ``size`` bytes of the file: InputError for anything but a numeric array whose data are all
    present, so that a corrupt header can neither allocate a huge array nor hide a truncated
    file, and an object array (a pickle, which can run code) is never loaded.

    The header is parsed here, not by numpy's private helpers: a Python dict literal, read
    with ``ast.literal_eval`` (literals only, no code), the dtype from its ``descr`` with
    numpy's public ``descr_to_dtype``.
    """
    shape, dtype, header_end = _npy_header(fh, path)
    problem = _dtype_problem(dtype)
    if problem:
        raise InputError(f"{path}: {problem}.")
    needed = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if header_end + needed > size:
        raise InputError(f"{path}: NPY array is truncated ({max(size - header_end, 0)} of {needed} data bytes present).")


def _npy_header(fh: Any, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, header_end)`` of the NPY header at the start of ``fh``."""
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise InputError(f"{path}: not a valid NPY file (it does not start with the NPY magic string).")
    version = (magic[6], magic[7])
    if version not in _NPY_VERSIONS:
        if max(version) < 10:  # a version number numpy may write one day; larger bytes are junk
            raise InputError(f"{path}: unsupported NPY format version {version[0]}.{version[1]} (invdiff reads 1.0, 2.0 and 3.0).")
        raise InputError(f"{path}: not a valid NPY header (no format version after the magic string).")
    length_bytes, encoding = _NPY_VERSIONS[version]
    raw = fh.read(length_bytes)
    length = int.from_bytes(raw, "little")
    if len(raw) < length_bytes or length > _NPY_MAX_HEADER:
        raise InputError(f"{path}: not a valid NPY header (its length field is missing or implausible).")
    text = fh.read(length)
    if len(text) < length:
        raise InputError(f"{path}: not a valid NPY header (the file ends inside it).")
    header = _npy_header_dict(text, encoding)
    if header is None:
        raise InputError(f"{path}: not a valid NPY header (expected a dict with 'descr', 'fortran_order' and 'shape').")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception:  # numpy raises TypeError, ValueError, ... for a description it cannot use
        raise InputError(f"{path}: not a valid NPY header (unknown data type {header['descr']!r}).") from None
    return header["shape"], dtype, 8 + length_bytes + length


def _npy_header_dict(text: bytes, encoding: str) -> dict[str, Any] | None:
    """The header dict if ``text`` holds a well-formed one, else None."""
    try:
        header = ast.literal_eval(text.decode(encoding))
    except Exception:  # SyntaxError, ValueError, UnicodeDecodeError, MemoryError, RecursionError ...
        return None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        return None
    shape = header["shape"]
    if not isinstance(header["fortran_order"], bool) or not isinstance(shape, tuple):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        return None
    return header


def _dtype_problem(dtype: np.dtype) -> str | None:
    """What is wrong with an array of ``dtype`` for invdiff (it needs numbers), or None."""
    if dtype.hasobject:
        return "array holds Python objects, which are never loaded (pickles can run code)"
    if dtype.kind in "biufc":
        return None
    what = {"U": "strings", "S": "strings", "T": "strings", "M": "dates", "m": "time spans", "V": "records"}.get(dtype.kind, "values")
    return f"array holds {what}, not numbers (non-numeric dtype {dtype})"


def _read_hdf5(path: Path, key: str | None, allow_rgb: bool) -> np.ndarray:
    import h5py

    from invdiff.io.hdf5 import read_whole

    try:
        with h5py.File(path, "r") as fh:
            name = key if key is not None else _only_image_dataset(fh, path)
            if name not in fh or not isinstance(fh[name], h5py.Dataset):
                raise InputError(f"{path}: HDF5 has no dataset '{name}'.")
            dataset = fh[name]
            if dataset.dtype.kind not in "biufc":
                raise InputError(f"{path}: HDF5 dataset '{name}' is not numeric (dtype {dataset.dtype}).")
            array = read_whole(dataset, path, name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable HDF5 file, or truncated ({dicom._reason(exc)}).") from None
    return _as_stack(np.asarray(array), path)


def _only_image_dataset(fh: Any, path: Path) -> str:
    """The name of the file's only image dataset: one whose shape is ``(H, W)`` or
    ``(slices, H, W)`` with H, W >= 2 once singleton leading axes are dropped (the rule of
    `_as_stack`, so ``(N, 1, H, W)`` qualifies as in NPY). InputError when there is none (naming
    every dataset and its shape) or several."""
    import h5py

    shapes: dict[str, tuple[int, ...]] = {}
    fh.visititems(lambda name, obj: shapes.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None)
    found = [name for name, shape in shapes.items() if _is_image_shape(shape)]
    if len(found) == 1:
        return found[0]
    if found:
        raise InputError(f"{path}: HDF5 holds several image datasets ({', '.join(found)}); choose one with --key.")
    if not shapes:
        raise InputError(f"{path}: HDF5 holds no datasets.")
    listed = [f"{name} {shape}" for name, shape in list(shapes.items())[:8]] + (["..."] if len(shapes) > 8 else [])
    raise InputError(
        f"{path}: HDF5 holds no image dataset of shape (H, W) or (slices, H, W); its datasets are "
        f"{', '.join(listed)}."
    )


def _is_image_shape(shape: tuple[int, ...] | None) -> bool:
    """Whether an array of ``shape`` is an image or a stack for `_as_stack`: 2 or 3 axes after
    dropping singleton leading axes, and at least 2 x 2 pixels."""
    if shape is None or len(shape) < 2 or min(shape[-2:]) < 2:
        return False
    return len([n for n in shape[:-2] if n != 1]) <= 1


def _read_nifti(path: Path, axis: int, volume: int | None = None) -> tuple[np.ndarray, tuple[float | None, float, float]]:
    """A NIfTI volume as ``(slices, H, W)`` in the DICOM display convention (`_display_slices`),
    and its spacing ``(slice, row, column)`` in mm; ``volume`` picks one of a 4-D file's."""
    import nibabel

    if axis not in (0, 1, 2):
        raise InputError(f"{path}: --axis must be 0, 1 or 2 for a NIfTI volume; got {axis}.")
    try:
        image = nibabel.load(path)
        if not path.name.lower().endswith(".gz"):
            _check_nifti_size(image.header, path)
        dtype = image.get_data_dtype()
        if dtype.names is not None:  # RGB24 / RGBA32: a record of channels per voxel
            colour = "RGBA" if "A" in dtype.names else "RGB"
            raise InputError(f"{path}: expected a single-channel image; got an {colour} NIfTI volume.")
        image = nibabel.as_closest_canonical(image)
        data = np.asarray(_nifti_volume(image, path, volume), dtype=np.complex64 if dtype.kind == "c" else np.float32)
        zooms = [float(z) for z in image.header.get_zooms()[:3]]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable NIfTI file, or truncated ({dicom._reason(exc)}).") from None
    data = data.reshape(data.shape[:3] + (1,) * (3 - data.ndim))
    zooms = (zooms + [1.0, 1.0, 1.0])[:3]
    return _display_slices(data[::-1, ::-1, :], tuple(zooms), axis)


def nifti_volumes(path: str | os.PathLike) -> int:
    """How many 3-D volumes a NIfTI file holds (its 4th and later dimensions), from its header
    alone; 1 for a 3-D file and for anything that is not a readable NIfTI file."""
    path = Path(path)
    if not path.is_file() or _suffix_kind(path) != "nifti" and _kind_of(path) != "nifti":
        return 1
    import nibabel

    try:
        shape = tuple(nibabel.load(path).shape)
    except Exception:  # read_images says what is wrong with it
        return 1
    return int(np.prod(shape[3:])) if len(shape) > 3 else 1


def _nifti_volume(image: Any, path: Path, volume: int | None) -> Any:
    """The 3-D part of ``image`` to read: all of a 3-D file (``volume`` None), the ``volume``-th
    of a 4-D one (fMRI time points, diffusion directions)."""
    shape = tuple(image.shape)
    extra = shape[3:]
    count = int(np.prod(extra)) if extra else 1
    if volume is None:
        if count > 1:
            picks = f"give --volume N (0 to {count - 1}) to read one of them" if len(extra) == 1 else "split it into 3D volumes"
            raise InputError(f"{path}: NIfTI holds {count} volumes {shape}; expected a 3D volume: {picks}.")
        return image.dataobj
    if len(extra) != 1 or count < 2:
        what = "3D" if count == 1 else f"{len(shape)}-D {shape}"
        raise InputError(f"{path}: --volume picks one volume of a 4-D NIfTI; this one is {what}.")
    if not 0 <= volume < count:
        raise InputError(f"{path}: --volume must lie between 0 and {count - 1} (the file holds {count} volumes); got {volume}.")
    return image.dataobj[..., volume]


def _display_slices(
    lps: np.ndarray, zooms: tuple[float, ...], axis: int
) -> tuple[np.ndarray, tuple[float | None, float, float]]:
    """Slices of an LPS+ volume in the DICOM display convention, so that a NIfTI volume and the
    DICOM series of the same scan give the same arrays.

    lps: ``(X, Y, Z)``, index increasing towards patient Left, Posterior, Superior.
    zooms: voxel size ``(dx, dy, dz)`` mm.
    axis: 2 (axial): rows anterior->posterior, columns right->left (what DICOM
        ImageOrientationPatient ``[1,0,0,0,1,0]`` displays); 1 (coronal): rows superior->inferior,
        columns right->left; 0 (sagittal): rows superior->inferior, columns anterior->posterior.
        Slices go along the normal of that DICOM orientation, as a DICOM series is sorted
        (axial: inferior->superior; coronal: anterior->posterior; sagittal, whose
        ImageOrientationPatient ``[0,1,0,0,0,-1]`` has its normal towards patient right:
        left->right).
    Returns ``(slices, H, W)`` and its spacing ``(slice, row, column)`` in mm.
    """
    dx, dy, dz = zooms
    if axis == 2:
        return np.transpose(lps, (2, 1, 0)), (dz, dy, dx)
    if axis == 1:
        return np.transpose(lps, (1, 2, 0))[:, ::-1, :], (dy, dz, dx)
    return np.transpose(lps, (0, 2, 1))[::-1, ::-1, :], (dx, dz, dy)


def _check_nifti_size(header: Any, path: Path) -> None:
    """A corrupt header must neither allocate a huge volume nor hide a truncated file."""
    shape = header.get_data_shape()
    needed = int(header.get_data_offset()) + int(np.prod(shape, dtype=np.float64)) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    if needed > size:
        raise InputError(f"{path}: NIfTI volume is truncated ({size} of {needed} bytes present).")


_READERS: dict[str, Callable[[Path, str | None, bool], np.ndarray]] = {
    "png": _read_pillow, "jpeg": _read_pillow, "tiff": _read_tiff,
    "npy": _read_npy, "npz": _read_npz, "hdf5": _read_hdf5,
}


# ---------------------------------------------------------------------------------------
# folders and DICOM series
# ---------------------------------------------------------------------------------------


def _series_of_a_file(path: Path) -> InputError:
    return InputError(f"{path}: --series picks one series of a DICOM folder; give the folder, not a file.")


def _selection_for(path: Path, selection: dict[str, Any]) -> dict[str, Any]:
    """`read_images`' keywords for ``path`` in a batch read: ``volume`` only for a NIfTI file,
    ``channel`` only for a PNG, JPEG or TIFF file (a mixed folder's other files are read whole)."""
    kind = _suffix_kind(path)
    drop = {"volume"} if kind != "nifti" else set()
    drop |= {"channel"} if kind not in _CHANNEL_KINDS else set()
    return {k: v for k, v in selection.items() if k not in drop}


def _read_dicom_folder(folder: Path, series: str | None = None) -> ImageStack:
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: is a folder without DICOM files; give an image file, or a folder that holds one DICOM series.")
    groups = dicom.group_dicom_series(files)
    if series is not None:
        groups = [dicom.select_series(groups, series, folder)]
    if len(groups) > 1:
        raise InputError(
            f"{folder}: folder holds {len(groups)} DICOM series ({dicom.describe_series(groups)}); "
            "give --series with the number of the one to read, or a folder that holds one series."
        )
    return _series_stack(folder, groups[0])


def _series_stack(folder: Path, files: list[Path]) -> ImageStack:
    volume = dicom.read_dicom_series(files)
    data = _checked(volume.data, folder)
    return ImageStack(data, folder, "dicom", volume.hounsfield, volume.meta, volume.spacing)


def is_dicom_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds DICOM files directly (what `read_images` reads as a series)."""
    folder = Path(folder)
    return folder.is_dir() and bool(dicom_files(folder))


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``: by suffix, or by the 'DICM' marker when suffix-less."""
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        kind = _suffix_kind(path)
        if kind == "dicom" or (kind is None and dicom.is_dicom_file(path)):  # also UID-named files "1.2.3.4"
            files.append(path)
    return files


def _read_folder(folder: Path, selection: dict[str, Any], series: str | None,
                 attempt: Callable[[Path, Callable[[], Any]], Any]) -> list[ImageStack]:
    stacks: list[ImageStack] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        here_dicom = dicom_files(here)
        # headers first, one by one, so that one unreadable file does not hide the whole series
        readable = [f for f in here_dicom if attempt(f, lambda f=f: dicom.read_dicom_header(f, pixels=False)) is not None]
        groups = attempt(here, lambda: dicom.group_dicom_series(readable)) if readable else None
        if groups and series is not None:
            groups = attempt(here, lambda groups=groups: dicom.matching_series(groups, series, here))
        for group in groups or []:
            stack = attempt(group[0].parent, lambda group=group: _series_stack(here, group))
            if stack is not None:
                stacks.append(stack)
        for name in sorted(names) if series is None else ():
            path = here / name
            if name.startswith(".") or path in here_dicom:
                continue
            kind = _suffix_kind(path)
            if kind is not None and kind != "dicom":
                stack = attempt(path, lambda path=path: read_images(path, **_selection_for(path, selection)))
                if stack is not None:
                    stacks.append(stack)
    return stacks


# ---------------------------------------------------------------------------------------
# checks shared by every format
# ---------------------------------------------------------------------------------------


def _single_channel(pixels: np.ndarray, path: Path, allow_rgb: bool) -> np.ndarray:
    """``(..., C)`` -> ``(...)``: drop an opaque alpha; accept grey-as-RGB; luma only with allow_rgb."""
    channels = pixels.shape[-1]
    if channels in (2, 4):
        alpha = pixels[..., -1]
        opaque = np.all(alpha == np.iinfo(alpha.dtype).max) if alpha.dtype.kind in "ui" else np.all(alpha == 1)
        if opaque or allow_rgb:
            pixels, channels = pixels[..., :-1], channels - 1
    if channels == 1:
        return pixels[..., 0].astype(np.float32)
    if channels == 3:
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
            return pixels[..., 0].astype(np.float32)
        if allow_rgb:
            return (pixels.astype(np.float64) @ _LUMA).astype(np.float32)
    raise InputError(f"{path}: expected a single-channel image; got {pixels.shape[-1]} channels (give --grey to "
                     "convert colour to grey by its luma, or --channel N to read one channel).")


def _as_stack(array: np.ndarray, path: Path) -> np.ndarray:
    """Any numeric array (H, W) or (..., H, W) with singleton extra axes -> (slices, H, W)."""
    problem = _dtype_problem(array.dtype)
    if problem:
        raise InputError(f"{path}: {problem}.")
    squeezed = array.reshape([n for n in array.shape[:-2] if n != 1] + list(array.shape[-2:])) if array.ndim >= 2 else array
    if squeezed.ndim == 2:
        squeezed = squeezed[None]
    if squeezed.ndim != 3:
        raise InputError(f"{path}: expected an image (H, W) or a stack (slices, H, W); got shape {array.shape}.")
    return squeezed


def _checked(data: np.ndarray, path: Path) -> np.ndarray:
    """float32/complex64 ``(slices, H, W)``, finite, non-empty and not all zero."""
    data = np.ascontiguousarray(data, dtype=np.complex64 if np.iscomplexobj(data) else np.float32)
    if data.size == 0:
        raise InputError(f"{path}: image has no pixels (shape {data.shape}).")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise InputError(f"{path}: image contains {bad} NaN or Inf values.")
    if min(data.shape[1:]) < 2:
        raise InputError(f"{path}: images of {data.shape[1]}x{data.shape[2]} pixels are too small (shape {data.shape}).")
    if not np.any(data):
        raise InputError(f"{path}: image is all zeros (an empty or failed export?).")
    return data
