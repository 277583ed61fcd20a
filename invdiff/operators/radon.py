"""2-D parallel-beam CT: the Radon transform as a sparse matrix, its exact adjoint, and FBP.

Geometry (the conventions of ``skimage.transform.radon(image, theta, circle=False)``, so a
user comparing the two gets the same sinogram shape, centre and orientation):

* image ``(1, H, W)``, pixel ``(r, c)`` at ``x = c - W // 2``, ``y = r - H // 2`` (pixels,
  rows down); values are linear attenuation ``mu`` in 1/mm;
* view ``v`` at angle ``theta_v`` (degrees, any set: full, sparse-view, limited-angle);
  detector bin ``j`` at ``t_j = (j - D // 2) * spacing`` (pixels) measures the line
  ``x cos(theta) - y sin(theta) = t_j``;
* ``D = ceil(sqrt(2) * max(H, W))`` bins by default (skimage's ``circle=False`` size);
* sinogram ``(views, detectors)`` = line integral of ``mu`` in physical units:
  ``pixel_size * integral of mu along the ray in pixels`` (dimensionless, ``mu * mm``).

Projector: Joseph's method (P. M. Joseph, "An improved algorithm for reprojecting rays
through pixel images", IEEE TMI 1982). A ray whose direction is closer to the image's
columns (``|cos| >= |sin|``) crosses every row once; at each crossing the image is linearly
interpolated between the two nearest pixels of the row, and the samples are summed with the
ray length per row, ``1 / |cos(theta)|`` (likewise over columns with ``1 / |sin(theta)|``).
Outside the image the values are zero. The weights form a sparse matrix ``A``
``(views * detectors, H * W)``, built once per operator (vectorised, float64 positions), stored
in CSR with its explicit transpose, so ``forward`` and ``adjoint`` are one sparse-dense product
each on any device and ``adjoint`` is the exact transpose (same numbers). Memory: about
``16 bytes * nnz`` in float32 (both matrices), ``nnz ~ 2 * views * H * W * 1.15``: 340 MB
for 256x256 with 180 views.

Direct reconstruction: filtered back-projection (Kak & Slaney 1988, ch. 3):

    mu(x) = pi / (V * spacing * pixel_size) * sum_v q_v(x cos(theta_v) - y sin(theta_v)),

``q_v`` the projection convolved with the windowed ramp of :mod:`fbp_filters` and
interpolated linearly at the pixel (pixel-driven back-projection, as ``skimage``'s
``iradon``). The ``pi / V`` weight assumes views spread evenly over 180 degrees.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse
import torch

from invdiff.errors import InputError
from invdiff.memory import physical_memory
from invdiff.operators.base import Operator, check_params
from invdiff.operators.fbp_filters import FILTERS, fourier_filter, padded_length
from invdiff.operators.fbp_filters import filter_sinogram as _filter_sinogram
from invdiff.operators.noise import NoiseModel

PARAMS = ("image_shape", "angles_deg", "detectors", "spacing", "pixel_size", "filter", "noise")

#: Views per vectorised block when building the matrix / back-projecting (bounds temporaries).
_BUILD_CHUNK = 8
_BACKPROJECT_ELEMENTS = 1 << 22


def projector_bytes(height: int, width: int, views: int, detectors: int, itemsize: int = 4) -> int:
    """An upper bound of the memory the projector and its transpose take: each ray crosses at
    most max(H, W) lines with two interpolation taps; each entry stores a value and an index."""
    entries = views * detectors * 2 * max(height, width)
    return 2 * entries * (itemsize + 4)


def _check_projector_fits(image_shape: tuple[int, int, int], views: int, detectors: int, itemsize: int) -> None:
    """InputError for a geometry whose projector cannot fit in this machine's memory (an edited
    file can claim a 20000x20000 image; better one sentence than an out-of-memory kill)."""
    _, height, width = image_shape
    need, have = projector_bytes(height, width, views, detectors, itemsize), physical_memory()
    if have is not None and need > have:
        raise InputError(
            f"the radon geometry ({height}x{width} image, {views} views, {detectors} detectors) needs up to "
            f"{need / 2**30:.0f} GiB for its projector, more than this machine's {have / 2**30:.0f} GiB of memory."
        )


def default_detectors(height: int, width: int) -> int:
    """``ceil(sqrt(2) * max(H, W))``: the sinogram height of skimage's ``radon(circle=False)``."""
    return int(math.ceil(math.sqrt(2) * max(height, width)))


class _SparseProduct(torch.autograd.Function):
    """``matrix @ columns`` whose gradient is ``transpose @ grad`` with the stored transpose
    (torch's own backward would transpose the CSR matrix on every call)."""

    @staticmethod
    def forward(ctx, columns: torch.Tensor, matrix: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
        ctx.matrices = (matrix, transpose)
        if columns.shape[1] == 1:  # sparse matrix-vector product: about 2x faster than mm
            return torch.mv(matrix, columns[:, 0]).unsqueeze(1)
        return torch.sparse.mm(matrix, columns)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        matrix, transpose = ctx.matrices
        return _SparseProduct.apply(grad, transpose, matrix), None, None


def joseph_matrix(
    image_hw: tuple[int, int],
    angles_deg: Sequence[float],
    detectors: int,
    spacing: float,
    pixel_size: float,
    dtype: type = np.float64,
) -> scipy.sparse.csr_matrix:
    """Joseph's projector as a CSR matrix ``(views * detectors, H * W)`` on the CPU, values of
    numpy ``dtype`` (positions and weights are computed in float64, then rounded).

    Row ``v * detectors + j`` holds the weights of ray ``(theta_v, t_j)``; column
    ``r * W + c`` is pixel ``(r, c)``. See the module docstring for the geometry and units.
    """
    height, width = image_hw
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    views = len(theta)
    along_rows = np.abs(cos) >= np.abs(sin)  # the ray crosses every image row once
    t = (torch.arange(detectors, dtype=torch.float64) - detectors // 2) * spacing
    counts = np.zeros(views * detectors, dtype=np.int64)  # entries per ray
    cols, vals = [], []
    for v0, v1 in _runs(along_rows, _BUILD_CHUNK):
        if along_rows[v0]:  # loop over rows u = r - H//2, interpolate the column coordinate
            n_loop, n_interp, c_loop, c_interp = height, width, height // 2, width // 2
            beta, alpha = cos[v0:v1], -sin[v0:v1]
        else:  # loop over columns u = c - W//2, interpolate the row coordinate
            n_loop, n_interp, c_loop, c_interp = width, height, width // 2, height // 2
            beta, alpha = -sin[v0:v1], cos[v0:v1]
        n = v1 - v0
        b = torch.from_numpy(np.ascontiguousarray(beta)).view(n, 1, 1)
        a = torch.from_numpy(np.ascontiguousarray(alpha)).view(n, 1, 1)
        u = (torch.arange(n_loop, dtype=torch.float64) - c_loop).view(1, 1, n_loop)
        # Interpolation coordinate where ray (v, j) crosses line u: t = beta (w - c) + alpha u.
        w = (t.view(1, -1, 1) / b + c_interp) - (a / b) * u  # (n, D, n_loop)
        w_floor = torch.floor(w)
        frac = (w - w_floor).view(-1)
        left = w_floor.to(torch.int64).view(-1)
        inside = torch.stack([(left >= 0) & (left < n_interp), (left >= -1) & (left < n_interp - 1) & (frac > 0)], -1)
        index = inside.view(-1).nonzero().squeeze(1)  # (v, j, u, tap) order: rows stay sorted
        cell, tap = index >> 1, index & 1
        pixel = left.index_select(0, cell) + tap
        loop = cell % n_loop
        ray = cell // n_loop  # ray index within the block, v * D + j
        col = loop * width + pixel if along_rows[v0] else pixel * width + loop
        f = frac.index_select(0, cell)
        weight = torch.where(tap.bool(), f, 1 - f)
        length = torch.from_numpy(pixel_size / np.abs(beta))  # ray length per crossed line, mm
        vals.append((weight * length.index_select(0, ray // detectors)).numpy().astype(dtype))
        cols.append(col.to(torch.int32).numpy())
        counts[v0 * detectors : v1 * detectors] = torch.bincount(ray, minlength=n * detectors).numpy()
    nnz = int(counts.sum())
    index_dtype = np.int32 if nnz < 2**31 else np.int64
    indptr = np.zeros(views * detectors + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    data, indices = np.concatenate(vals), np.concatenate(cols).astype(index_dtype, copy=False)
    del vals, cols
    return scipy.sparse.csr_matrix((data, indices, indptr), shape=(views * detectors, height * width), copy=False)


def _runs(flags: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` blocks of at most ``chunk`` views with equal ``flags``."""
    runs, start = [], 0
    for v in range(1, len(flags) + 1):
        if v == len(flags) or flags[v] != flags[start] or v - start == chunk:
            runs.append((start, v))
            start = v
    return runs


def _to_torch_csr(matrix: scipy.sparse.csr_matrix, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The scipy CSR ``matrix`` as a torch CSR tensor (shares memory on the CPU when the dtypes
    agree). Torch's notices that sparse CSR is "beta" are silenced: the two kernels used here,
    ``sparse.mm`` on CPU (MKL) and CUDA (cuSPARSE), are stable."""
    index_dtype = torch.int32 if matrix.nnz < 2**31 else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr).to(device=device, dtype=index_dtype),
            torch.from_numpy(matrix.indices).to(device=device, dtype=index_dtype),
            torch.from_numpy(matrix.data).to(device=device, dtype=dtype),
            size=matrix.shape,
        )


class RadonOperator(Operator):
    """2-D parallel-beam Radon transform ``(B, 1, H, W) -> (B, views, detectors)``.

    ``image_shape``: ``(1, H, W)``. ``angles_deg``: projection angles in degrees (any set).
    ``detectors``: bins per view (default :func:`default_detectors`). ``spacing``: detector
    spacing in pixels. ``pixel_size``: pixel size in mm, so the sinogram is the line integral
    of ``mu`` [1/mm]. ``filter``: FBP window (one of ``FILTERS``). ``noise``: the
    measurement's :class:`NoiseModel`. See the module docstring for geometry and equations.
    """

    name = "radon"

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 64, 64),
        angles_deg: Sequence[float] | np.ndarray = tuple(float(a) for a in range(180)),
        detectors: int | None = None,
        spacing: float = 1.0,
        pixel_size: float = 1.0,
        filter: str = "hann",
        noise: NoiseModel | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.image_shape = _check_image_shape(image_shape)
        _, height, width = self.image_shape
        self.angles_deg = _check_angles(angles_deg)
        self.detectors = default_detectors(height, width) if detectors is None else _check_detectors(detectors)
        self.spacing = _check_positive(spacing, "detector spacing")
        self.pixel_size = _check_positive(pixel_size, "pixel size")
        if filter not in FILTERS:
            raise InputError(f"unknown FBP filter '{filter}'; choose one of {', '.join(FILTERS)}.")
        self.filter = filter
        self.noise = NoiseModel() if noise is None else noise
        if not isinstance(self.noise, NoiseModel):
            raise InputError("the radon operator's noise must be a NoiseModel.")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"the radon operator works in float32 or float64, not {dtype}.")
        self.device = torch.device(device)
        self.dtype = dtype
        self.measurement_shape = (len(self.angles_deg), self.detectors)
        self.measurement_is_complex = False

        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        _check_projector_fits(self.image_shape, len(self.angles_deg), self.detectors, np.dtype(np_dtype).itemsize)
        matrix = joseph_matrix((height, width), self.angles_deg, self.detectors, self.spacing, self.pixel_size, np_dtype)
        self._matrix = _to_torch_csr(matrix, self.device, dtype)
        self._transpose = _to_torch_csr(matrix.T.tocsr(), self.device, dtype)
        self._set_fbp_tables()

    def _set_fbp_tables(self) -> None:
        """Ramp-filter response and the view angles on the operator's device and dtype."""
        response = fourier_filter(padded_length(self.detectors), self.filter)
        half = torch.from_numpy(response[: len(response) // 2 + 1].copy())
        self._fbp_response = half.to(device=self.device, dtype=self.dtype)
        theta = torch.deg2rad(torch.tensor(self.angles_deg, dtype=torch.float64))
        self._cos = torch.cos(theta).to(device=self.device, dtype=self.dtype)
        self._sin = torch.sin(theta).to(device=self.device, dtype=self.dtype)

    # --- the linear map -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W) -> (B, views, detectors)``: Joseph line integrals (``mu * mm``)."""
        self._check_image(x)
        columns = x.to(self.dtype).reshape(x.shape[0], -1).t()
        sinogram = _SparseProduct.apply(columns, self._matrix, self._transpose)
        return sinogram.t().reshape(x.shape[0], *self.measurement_shape)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, views, detectors) -> (B, 1, H, W)``: the exact transpose of :meth:`forward`."""
        self._check_sinogram(y)
        columns = y.to(self.dtype).reshape(y.shape[0], -1).t()
        image = _SparseProduct.apply(columns, self._transpose, self._matrix)
        return image.t().reshape(y.shape[0], *self.image_shape)

    def direct(self, y: torch.Tensor) -> torch.Tensor:
        """Filtered back-projection ``(B, views, detectors) -> (B, 1, H, W)`` in 1/mm (the
        equation in the module docstring; filter ``self.filter``)."""
        self._check_sinogram(y)
        filtered = _filter_sinogram(y.to(self.dtype), self._fbp_response)
        scale = math.pi / (len(self.angles_deg) * self.spacing * self.pixel_size)
        return self.backproject(filtered) * scale

    def backproject(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Pixel-driven back-projection ``(B, views, detectors) -> (B, 1, H, W)``:
        ``b(x) = sum_v s_v(t)``, ``t = x cos(theta_v) - y sin(theta_v)``, linear interpolation
        between bins, zero outside the detector. Not the adjoint (see :meth:`adjoint`); FBP's."""
        batch = sinogram.shape[0]
        _, height, width = self.image_shape
        views, detectors = self.measurement_shape
        kw = {"device": self.device, "dtype": self.dtype}
        x = (torch.arange(width, **kw) - width // 2).view(1, 1, width)
        y = (torch.arange(height, **kw) - height // 2).view(1, height, 1)
        padded = torch.nn.functional.pad(sinogram.to(self.dtype), (1, 1))  # zero bins -1 and D
        image = torch.zeros((batch, height * width), **kw)
        chunk = max(1, _BACKPROJECT_ELEMENTS // (batch * height * width))
        for v0 in range(0, views, chunk):
            v1 = min(views, v0 + chunk)
            t = x * self._cos[v0:v1].view(-1, 1, 1) - y * self._sin[v0:v1].view(-1, 1, 1)
            position = (t / self.spacing + detectors // 2).reshape(v1 - v0, -1)  # (n, H*W) in bins
            left = torch.floor(position)
            frac = position - left
            left = left.to(torch.int64).clamp(-1, detectors) + 1  # index into the padded bins
            right = (left + 1).clamp(max=detectors + 1)
            block = padded[:, v0:v1]
            lo = torch.gather(block, 2, left.expand(batch, -1, -1))
            hi = torch.gather(block, 2, right.expand(batch, -1, -1))
            image += (lo + frac * (hi - lo)).sum(dim=1)
        return image.reshape(batch, *self.image_shape)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "RadonOperator":
        """A copy on another device and/or dtype (moves the matrices; no rebuild)."""
        clone = object.__new__(RadonOperator)
        clone.__dict__.update(self.__dict__)
        clone.device = torch.device(device) if device is not None else self.device
        clone.dtype = dtype or self.dtype
        if clone.dtype not in (torch.float32, torch.float64):
            raise InputError(f"the radon operator works in float32 or float64, not {clone.dtype}.")
        clone._matrix = self._matrix.to(device=clone.device, dtype=clone.dtype)
        clone._transpose = self._transpose.to(device=clone.device, dtype=clone.dtype)
        clone._set_fbp_tables()
        return clone

    # --- configuration -----------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "angles_deg": list(self.angles_deg),
            "detectors": self.detectors,
            "spacing": self.spacing,
            "pixel_size": self.pixel_size,
            "filter": self.filter,
            "noise": self.noise.params(),
        }

    @classmethod
    def from_config(
        cls, params: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "RadonOperator":
        check_params("radon", params, PARAMS, ("image_shape", "angles_deg"))  # the constructor checks the values
        return cls(
            image_shape=params["image_shape"],
            angles_deg=params["angles_deg"],
            detectors=params.get("detectors"),
            spacing=params.get("spacing", 1.0),
            pixel_size=params.get("pixel_size", 1.0),
            filter=params.get("filter", "hann"),
            noise=NoiseModel.from_params(params.get("noise")),
            device=device,
            dtype=dtype,
        )

    @classmethod
    def example(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "RadonOperator":
        """A 20x24 image, 13 irregular views over 0-170 degrees (both Joseph cases, the
        diagonals included), 0.8-pixel detector spacing, 0.5 mm pixels, Gaussian noise."""
        angles = [0.0, 7.5, 20.0, 33.0, 45.0, 58.0, 72.5, 90.0, 101.0, 118.0, 135.0, 150.0, 170.0]
        return cls(
            (1, 20, 24), angles, 40, 0.8, 0.5, "hann", NoiseModel("gaussian", std=0.01), device=device, dtype=dtype
        )

    # --- helpers -------------------------------------------------------------------------
    def _check_image(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"radon: expected images (B, {expected}), got {tuple(x.shape)}")

    def _check_sinogram(self, y: torch.Tensor) -> None:
        if y.dim() != 3 or tuple(y.shape[1:]) != self.measurement_shape:
            views, detectors = self.measurement_shape
            raise ValueError(f"radon: expected sinograms (B, {views}, {detectors}), got {tuple(y.shape)}")


def check_geometry(params: dict[str, Any]) -> None:
    """The checks of :meth:`RadonOperator.from_config` and the constructor that need no
    projector: the keys, the image shape, the angles, the detector count and spacing and the pixel size, each bad value
    one sentence. Cheap, so a reader can call it before comparing a file's data or the command
    line with the geometry (an empty angle list or image is then named as such, not as a shape
    mismatch)."""
    check_params("radon", params, PARAMS, ("image_shape", "angles_deg"))
    _check_image_shape(params["image_shape"])
    _check_angles(params["angles_deg"])
    if params.get("detectors") is not None:
        _check_detectors(params["detectors"])
    _check_positive(params.get("spacing", 1.0), "detector spacing")
    _check_positive(params.get("pixel_size", 1.0), "pixel size")


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
    try:
        shape = tuple(int(n) for n in image_shape)
        valid = len(shape) == 3 and all(float(a) == b for a, b in zip(image_shape, shape))
    except (TypeError, ValueError):
        valid = False
    if valid and min(shape[1:]) == 0:
        raise InputError(f"the radon geometry describes an empty image (image shape {list(shape)}); H and W must be at least 1.")
    if not valid or min(shape) < 1:
        raise InputError(f"the radon operator needs an image shape (1, H, W) with H, W >= 1, got {image_shape!r}.")
    if shape[0] != 1:
        raise InputError(f"the radon operator works on real single-channel images (C = 1), got C = {shape[0]}.")
    return shape


def _check_angles(angles_deg: Any) -> list[float]:
    try:
        angles = np.asarray(angles_deg, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("the radon angles must be a list of numbers in degrees.") from None
    if angles.size == 0:
        raise InputError("the radon geometry has no angles: it needs at least one view angle (angles_deg is empty).")
    if angles.ndim != 1:
        raise InputError("the radon angles must be a flat list of numbers in degrees.")
    if not np.isfinite(angles).all():
        raise InputError("the radon angles contain NaN or Inf values.")
    return [float(a) for a in angles]


def _check_detectors(detectors: Any) -> int:
    whole = isinstance(detectors, (int, np.integer)) or (isinstance(detectors, float) and detectors.is_integer())
    if isinstance(detectors, bool) or not whole:
        raise InputError(f"the number of detectors must be a whole number, got {detectors!r}.")
    if detectors < 1:
        raise InputError(f"the number of detectors must be positive, got {detectors}.")
    return int(detectors)


def _check_positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"the {what} must be a number, got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"the {what} must be a positive finite number, got {value}.")
    return float(value)
