"""Point-spread functions for microscopy deconvolution.

Every PSF returned here is a float64 array ``(h, w)`` that sums to 1 and whose centre pixel
``(h // 2, w // 2)`` is the optical axis, the origin the blur operator uses (the convention of
``scipy.ndimage.convolve``), so a blur with it does not shift the image.

* :func:`gaussian_psf`: a sampled Gaussian of standard deviation ``sigma_px`` pixels.
* :func:`airy_psf`: the in-focus widefield PSF of a circular pupil (Airy 1835; Born & Wolf,
  *Principles of Optics*, 7th ed., section 8.5.2), ``I(r) = [2 J1(v) / v]^2`` with
  ``v = 2 pi NA r / lambda``, averaged over each pixel's area.
* :func:`read_psf`: a measured PSF (bead image) from a TIFF or NPY file.
* :func:`parse_psf_spec`: the ``--psf`` command-line value.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.special import j1

from invdiff.errors import InputError

#: Largest PSF side we build; finer sampling than this is a mistake in the units.
MAX_PSF_SIZE = 2049

#: The Airy pattern's first dark ring, ``v = 3.8317`` -> ``r = 0.6098 lambda / NA``.
AIRY_FIRST_ZERO = 3.8317059702075125 / (2 * math.pi)

SPEC_HELP = "gaussian:SIGMA_PX, airy:WAVELENGTH_NM,NA,PIXEL_NM, or a .tif/.tiff/.npy file"


def _positive(value: float, what: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{what} must be a finite number > 0, got {value!r}.")
    return value


def _check_size(size: int | None, default: int, what: str) -> int:
    if size is None:
        size = default
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise InputError(f"{what} PSF size must be a positive integer, got {size!r}.")
    if size > MAX_PSF_SIZE:
        raise InputError(
            f"{what} PSF would be {size} pixels wide (limit {MAX_PSF_SIZE}); "
            "check that the pixel size is in the right units."
        )
    return int(size)


def _centred_coordinates(size: int) -> np.ndarray:
    """Pixel-centre offsets from the centre pixel ``size // 2``, in pixels: ``(size,)``."""
    return np.arange(size, dtype=np.float64) - size // 2


def gaussian_psf(sigma_px: float, size: int | None = None) -> np.ndarray:
    """A point-sampled isotropic Gaussian ``exp(-r^2 / (2 sigma^2))``, normalised to sum 1.

    ``sigma_px``: standard deviation in pixels (> 0). ``size``: side length in pixels
    (default ``2 * ceil(4 sigma) + 1``, which holds all but ~1e-4 of the mass). Returns
    ``(size, size)`` float64. For ``sigma_px >= 0.7`` the discrete standard deviation equals
    ``sigma_px`` to better than 1e-3 relative (Poisson summation).
    """
    sigma = _positive(sigma_px, "Gaussian PSF sigma (pixels)")
    size = _check_size(size, 2 * math.ceil(4 * sigma) + 1, "Gaussian")
    r = _centred_coordinates(size)
    profile = np.exp(-0.5 * (r / sigma) ** 2)
    psf = np.outer(profile, profile)
    return psf / psf.sum()


def airy_intensity(v: np.ndarray) -> np.ndarray:
    """``[2 J1(v) / v]^2`` with its limit 1 at ``v = 0`` (any shape, float64)."""
    v = np.asarray(v, dtype=np.float64)
    safe = np.where(v == 0, 1.0, v)
    return np.where(v == 0, 1.0, (2 * j1(safe) / safe) ** 2)


def _pixel_quadrature(pixel_size_nm: float, airy_unit_nm: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes (offsets from the pixel centre, in pixels) and weights (sum 1)
    for one pixel side, about one node per lambda / (10 NA) and at least 4."""
    n = min(max(4, math.ceil(10 * pixel_size_nm / airy_unit_nm)), 64)
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return nodes / 2, weights / 2


def airy_psf(wavelength_nm: float, na: float, pixel_size_nm: float, size: int | None = None) -> np.ndarray:
    """The widefield in-focus PSF (Airy pattern), integrated over each pixel, sum 1.

    ``I(r) = [2 J1(v) / v]^2``, ``v = 2 pi NA r / lambda`` (Born & Wolf, section 8.5.2): the
    first dark ring lies at ``r = 0.61 lambda / NA`` and the FWHM is ``0.51 lambda / NA``.
    Each pixel holds the mean of ``I`` over its square (``n x n`` Gauss-Legendre quadrature,
    about one node per ``lambda / (10 NA)``), so coarse pixels get the right blur too.

    ``wavelength_nm``: emission wavelength (nm); ``na``: numerical aperture; ``pixel_size_nm``:
    pixel pitch in the sample plane (nm). ``size``: side in pixels (default: out to
    ``3 lambda / NA``, about five dark rings, and at least 3). Returns ``(size, size)`` float64.
    """
    wavelength = _positive(wavelength_nm, "Airy PSF wavelength (nm)")
    na = _positive(na, "Airy PSF numerical aperture")
    pixel = _positive(pixel_size_nm, "Airy PSF pixel size (nm)")
    airy_unit = wavelength / na  # lambda / NA, nm
    half = math.ceil(3 * airy_unit / pixel) if 3 * airy_unit / pixel < MAX_PSF_SIZE else MAX_PSF_SIZE
    size = _check_size(size, max(2 * half + 1, 3), "Airy")
    nodes, weights = _pixel_quadrature(pixel, airy_unit)
    n = nodes.size
    coords = (_centred_coordinates(size)[:, None] + nodes[None, :]).reshape(-1) * pixel  # nm, (size * n,)
    scale = 2 * math.pi * na / wavelength
    psf = np.empty((size, size), dtype=np.float64)
    # Row by row, to keep memory at (n, size * n) even for big PSFs.
    for i in range(size):
        y = coords[i * n : (i + 1) * n, None]
        v = scale * np.sqrt(y**2 + coords[None, :] ** 2)
        psf[i] = np.einsum("a,abc,c->b", weights, airy_intensity(v).reshape(n, size, n), weights)
    return psf / psf.sum()


# --- measured PSFs ------------------------------------------------------------------------
def _load_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            from invdiff.io.images import quiet_tifffile

            with quiet_tifffile():
                return np.asarray(tifffile.imread(path))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
    except Exception as exc:  # corrupt or unreadable file: the user's problem, one sentence
        raise InputError(f"{path}: cannot read the PSF file ({type(exc).__name__}: {exc}).") from None
    raise InputError(f"{path}: a PSF file must be .tif, .tiff or .npy, not '{suffix or 'no extension'}'.")


def _background(plane: np.ndarray) -> float:
    """Median of the outermost ring of pixels: the camera offset plus stray light."""
    if min(plane.shape) < 3:
        return 0.0
    border = np.concatenate([plane[0], plane[-1], plane[1:-1, 0], plane[1:-1, -1]])
    return float(np.median(border))


def _centre_on_centroid(psf: np.ndarray) -> np.ndarray:
    """Zero-pad so the intensity centroid (rounded) is the centre pixel, odd sides."""
    pads = []
    for axis in range(2):
        profile = psf.sum(axis=1 - axis)
        n = profile.size
        centroid = int(round(float((np.arange(n) * profile).sum() / profile.sum())))
        before, after = centroid, n - 1 - centroid  # pixels on each side of the centroid
        half = max(before, after)
        pads.append((half - before, half - after))
    return np.pad(psf, pads)


def read_psf(path: str | Path) -> np.ndarray:
    """A measured PSF from a TIFF or NPY file, ready for :class:`BlurOperator`.

    Accepts a 2-D image ``(h, w)`` or a 3-D stack ``(z, h, w)`` (singleton axes are dropped),
    of which the in-focus plane is the one with the largest sum. The background (median of
    the plane's border pixels) is subtracted, negative values are set to 0, the array is
    zero-padded so its intensity centroid is the centre pixel, and it is normalised to sum 1.
    Returns ``(h', w')`` float64 with odd sides. InputError for a missing or unreadable file,
    wrong dimensions, NaN/Inf values or a PSF that is empty after background subtraction.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: PSF file not found.")
    data = np.squeeze(_load_array(path))
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(
            f"{path}: a PSF must be a real 2-D image or 3-D stack, got shape {data.shape} of {data.dtype}."
        )
    data = data.astype(np.float64)
    if not np.isfinite(data).all():
        raise InputError(f"{path}: the PSF contains NaN or Inf values.")
    if data.ndim == 3:
        data = data[int(np.argmax(data.sum(axis=(1, 2))))]
    psf = np.clip(data - _background(data), 0, None)
    if not psf.sum() > 0:
        raise InputError(f"{path}: the PSF is empty after background subtraction.")
    psf = _centre_on_centroid(psf)
    return psf / psf.sum()


def parse_psf_spec(spec: str) -> np.ndarray:
    """The PSF for a ``--psf`` value: ``gaussian:SIGMA_PX``, ``airy:WAVELENGTH_NM,NA,PIXEL_NM``
    or a path to a .tif/.tiff/.npy file. Returns a normalised ``(h, w)`` float64 PSF;
    InputError with one sentence for anything else."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"--psf needs a value: {SPEC_HELP}.")
    spec = spec.strip()
    kind, sep, args = spec.partition(":")
    kind = kind.strip().lower()
    if sep and kind == "gaussian":
        values = [a.strip() for a in args.split(",")]
        if len(values) != 1 or not values[0]:
            raise InputError(f"--psf '{spec}': expected gaussian:SIGMA_PX with one number, e.g. gaussian:2.0.")
        return gaussian_psf(_number(values[0], spec))
    if sep and kind == "airy":
        values = [a.strip() for a in args.split(",")]
        if len(values) != 3 or not all(values):
            raise InputError(
                f"--psf '{spec}': expected airy:WAVELENGTH_NM,NA,PIXEL_NM with three numbers, e.g. airy:520,1.4,65."
            )
        wavelength, na, pixel = (_number(v, spec) for v in values)
        return airy_psf(wavelength, na, pixel)
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--psf '{spec}' is not an existing file nor one of {SPEC_HELP}.")
    return read_psf(path)


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--psf '{spec}': '{text}' is not a number.") from None
