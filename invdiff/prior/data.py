"""Training images: reading, intensity normalisation, validation split and batch drawing.

Images are read by ``invdiff.io.images.read_image_paths`` (PNG/TIFF/NPY/NPZ/HDF5/DICOM/NIfTI);
while that module is missing, ``.npy``/``.npz`` files and folders of them are read here.

Normalisation (recorded in the prior's config.json; ``Prior.normalise`` applies the same):
- ``percentile`` (default): per slice, x_norm = x / q, q the 99.5th percentile of |x| in that
  slice (complex data: of the magnitude), so tissue lies in [0, ~1] whatever the scanner units.
- ``window``: a fixed window for CT, x_norm = (x - lo) / (hi - lo), e.g. lo=-1000, hi=1000 HU.
  ``units`` records what lo and hi are in: ``HU`` when every training image was a CT DICOM in
  Hounsfield units, else ``image`` (the files' own units), so that ``invdiff reconstruct`` can
  map a CT measurement in linear attenuation onto the window (invdiff/pipeline/units.py).
In both cases x_img = x_norm * scale + offset (offset = 0 for ``percentile``, lo for ``window``).

Each slice is stored as ``(C, H, W)`` float32 (C = 2 holds a complex image as real/imag).
Fitting to the training size S: ``crop`` takes a random S x S crop of each slice (slices may
differ in size but must be at least S); ``resize`` scales the shorter side to S (bilinear,
antialiased) and crops the longer side at random; ``exact`` requires every slice to be S x S.
Validation: the last ``val_fraction`` of the slices of every stack (whole blocks of adjacent
slices, so neighbours of a training slice do not leak into validation), plus optional separate
validation files (other subjects) reported on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from invdiff.errors import InputError

FITS = ("crop", "resize", "exact")


def _bad_field(kind: str, percentile: float, window: tuple | None, units: str) -> str | None:
    """The first field of a normalisation that is not valid ("kind", "units", "window" or
    "percentile"), or None."""
    if kind not in ("percentile", "window"):
        return "kind"
    if units not in ("HU", "image"):
        return "units"
    if kind == "window" and (window is None or len(window) != 2 or not window[1] > window[0]):
        return "window"
    if not 0 < percentile <= 100:
        return "percentile"
    return None


#: a bad field named by the train options that set it ...
_OPTION_WORDS = {
    "kind": "--normalise '{kind}' is not one of percentile, window.",
    "units": "normalisation units '{units}' are not one of HU, image.",
    "window": "--window must give LO,HI with HI > LO for --normalise window.",
    "percentile": "--percentile must lie in (0, 100].",
}
#: ... or by its entry in a prior's config.json
_CONFIG_WORDS = {
    "kind": "normalisation.kind {kind!r} is not one of percentile, window.",
    "units": "normalisation.units {units!r} is not one of HU, image.",
    "window": "normalisation.window must be [LO, HI] with HI > LO for kind 'window', got {window!r}.",
    "percentile": "normalisation.percentile must lie in (0, 100], got {percentile:g}.",
}


@dataclass
class Normalisation:
    """x_norm = (x - offset) / scale, per slice scale for ``percentile``, fixed for ``window``."""

    kind: str = "percentile"
    percentile: float = 99.5
    window: tuple[float, float] | None = None  # (lo, hi) for kind == "window"
    units: str = "image"  # what the window is in: "HU" or "image" (the files' own units)

    def __post_init__(self):
        field = _bad_field(self.kind, self.percentile, self.window, self.units)
        if field is not None:
            raise InputError(_OPTION_WORDS[field].format(kind=self.kind, units=self.units))

    @property
    def offset(self) -> float:
        return float(self.window[0]) if self.kind == "window" else 0.0

    def scales(self, slices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Per-slice scale ``(N,)`` for slices ``(N, ...)`` (real or complex)."""
        t = torch.as_tensor(np.asarray(slices)) if not torch.is_tensor(slices) else slices
        n = t.shape[0]
        if self.kind == "window":
            return torch.full((n,), float(self.window[1] - self.window[0]), dtype=torch.float32, device=t.device)
        mag = t.abs().reshape(n, -1).to(torch.float32)
        q = torch.quantile(mag, self.percentile / 100.0, dim=1) if mag.shape[1] <= 16_000_000 else mag.amax(1)
        return torch.where(q > 0, q, torch.ones_like(q))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "percentile": self.percentile,
                "window": list(self.window) if self.window is not None else None, "offset": self.offset,
                "units": self.units,
                "equation": "x_norm = (x - offset) / scale; scale = per-slice percentile of |x| (percentile) "
                            "or hi - lo (window)"}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        """From a prior config's ``normalisation`` object; InputError naming the config field
        (``normalisation.kind``, not the train option that set it) for a bad value."""
        kind, units = d["kind"], str(d.get("units", "image"))
        window = d.get("window")
        window = tuple(float(v) for v in window) if window is not None else None
        percentile = float(d.get("percentile", 99.5))
        field = _bad_field(kind, percentile, window, units)
        if field is not None:
            raise InputError(_CONFIG_WORDS[field].format(kind=kind, units=units, window=d.get("window"),
                                                         percentile=percentile))
        return cls(kind=kind, percentile=percentile, window=window, units=units)


@dataclass
class SliceStack:
    """Slices of one file as an array ``(N, H, W)`` (real or complex) and where they came from."""

    data: np.ndarray
    source: str
    hounsfield: bool = False  # CT DICOM in Hounsfield units


def _read_npy_fallback(paths: list[Path]) -> list[SliceStack]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in (".npy", ".npz"))
            if not found:
                raise InputError(f"{p}: folder holds no readable images (.npy/.npz).")
            files += found
        else:
            files.append(p)
    stacks = []
    for f in files:
        if not f.exists():
            raise InputError(f"{f}: training data file does not exist.")
        try:
            arr = np.load(f, allow_pickle=False)
            if isinstance(arr, np.lib.npyio.NpzFile):
                arr = arr[arr.files[0]]
        except Exception as exc:  # corrupt or not numpy
            raise InputError(f"{f}: cannot be read as an image array ({type(exc).__name__}).") from None
        stacks.append(SliceStack(np.asarray(arr), str(f)))
    return stacks


def read_stacks(paths: list[Path], key: str | None = None, axis: int | None = None, *,
                volume: int | None = None, series: str | None = None, allow_rgb: bool = False,
                channel: int | None = None) -> list[SliceStack]:
    """Read every path into stacks of slices ``(N, H, W)``; InputError naming a bad file.
    ``volume`` picks one volume of every 4-D NIfTI, ``series`` one DICOM series (by number or
    UID) of every folder that has it; ``allow_rgb`` reads colour images as grey, ``channel``
    one channel of every colour or multi-channel image."""
    if not paths:
        raise InputError("no training data given.")
    try:
        from invdiff.io.images import read_image_paths  # written by the io engineer
    except ImportError:
        read_image_paths = None
    if read_image_paths is not None:
        kwargs = {}
        if key is not None:
            kwargs["key"] = key
        if axis is not None:
            kwargs["axis"] = axis
        read = read_image_paths([str(p) for p in paths], volume=volume, series=series, allow_rgb=allow_rgb,
                                channel=channel, **kwargs)
        if volume is not None and read and not any(s.kind == "nifti" for s in read):
            raise InputError(f"--volume picks one volume of a 4-D NIfTI, but none of the training data is NIfTI "
                             f"({read[0].source} is {read[0].kind.upper()}).")
        if axis is not None and read and not any(s.kind == "nifti" for s in read):
            raise InputError(f"--axis slices NIfTI volumes, but none of the training data is NIfTI ({read[0].source} "
                             f"is {read[0].kind.upper()}); other stacks are read as (slices, H, W).")
        stacks = [SliceStack(np.asarray(s.data), str(s.source), bool(getattr(s, "hounsfield", False))) for s in read]
    else:
        stacks = _read_npy_fallback([Path(p) for p in paths])
    out = []
    for s in stacks:
        a = s.data
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] == 0:
            raise InputError(f"{s.source}: expected an image (H, W) or a stack (slices, H, W), got shape {tuple(s.data.shape)}.")
        if not (np.iscomplexobj(a) or np.issubdtype(a.dtype, np.number)):
            raise InputError(f"{s.source}: holds {a.dtype} values, not image intensities.")
        if not np.all(np.isfinite(a)):
            raise InputError(f"{s.source}: contains NaN or Inf values.")
        out.append(SliceStack(a, s.source, s.hounsfield))
    if not out:
        raise InputError(f"{paths[0]}: no images found.")
    return out


def units_from_data(stacks: list[SliceStack], norm: Normalisation) -> Normalisation:
    """``norm`` with ``units`` set from the data: ``HU`` when every stack is a CT DICOM in
    Hounsfield units, ``image`` when none is. A window over a mix of the two means nothing, so
    that is an InputError naming the first file of the other kind."""
    if norm.kind != "window":
        return norm
    hu = [s for s in stacks if s.hounsfield]
    if hu and len(hu) != len(stacks):
        other = next(s for s in stacks if not s.hounsfield)
        raise InputError(f"{other.source}: is not a CT DICOM in Hounsfield units like {hu[0].source}; a --window "
                         "needs all training images in the same units.")
    return replace(norm, units="HU" if hu else "image")


def _to_channels(a: np.ndarray, channels: int, source: str) -> torch.Tensor:
    """``(N, H, W)`` real/complex -> ``(N, C, H, W)`` float32."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if channels == 1:
        t = t.abs() if t.is_complex() else t
        return t.to(torch.float32)[:, None]
    if channels == 2:
        if not t.is_complex():
            raise InputError(f"{source}: --channels 2 needs complex images (MRI), but the data are real.")
        return torch.stack([t.real, t.imag], dim=1).to(torch.float32)
    raise InputError(f"--channels must be 1 or 2, got {channels}.")


def _resize_shorter(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    r = size / min(h, w)
    new = (max(size, round(h * r)), max(size, round(w * r)))
    if new == (h, w):
        return x
    return F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)


@dataclass
class ImageSet:
    """Normalised slices grouped by size: ``groups[g]`` is ``(N_g, C, H_g, W_g)`` float32."""

    groups: list[torch.Tensor]
    sources: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.counts = [g.shape[0] for g in self.groups]
        self.offsets = np.cumsum([0] + self.counts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def to(self, device: torch.device) -> "ImageSet":
        return ImageSet([g.to(device) for g in self.groups], self.sources)

    def locate(self, index: int) -> tuple[int, int]:
        g = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return g, int(index - self.offsets[g])

    def batch(self, indices: torch.Tensor, size: int, crop_u: torch.Tensor | None) -> torch.Tensor:
        """Crops ``(B, C, size, size)`` of the slices ``indices`` at relative offsets ``crop_u``
        ``(B, 2)`` in [0, 1) (None: centre crops)."""
        out = []
        for b, i in enumerate(indices.tolist()):
            g, j = self.locate(i)
            img = self.groups[g][j]
            h, w = img.shape[-2:]
            if crop_u is None:
                y0, x0 = (h - size) // 2, (w - size) // 2
            else:
                y0 = int(float(crop_u[b, 0]) * (h - size + 1))
                x0 = int(float(crop_u[b, 1]) * (w - size + 1))
            out.append(img[:, y0:y0 + size, x0:x0 + size])
        return torch.stack(out)

    def summary(self) -> dict:
        shapes = sorted({tuple(g.shape[-2:]) for g in self.groups})
        return {"slices": len(self), "files": len(set(self.sources)), "sources": sorted(set(self.sources))[:50],
                "slice_shapes": [list(s) for s in shapes]}


def build_sets(stacks: list[SliceStack], image_size: int, channels: int, fit: str, norm: Normalisation,
               val_fraction: float) -> tuple[ImageSet, ImageSet | None]:
    """Normalise, fit to the training size, split -> (train, held-out validation or None)."""
    if fit not in FITS:
        raise InputError(f"--fit '{fit}' is not one of {', '.join(FITS)}.")
    if not 0 <= val_fraction < 1:
        raise InputError(f"--val-fraction must lie in [0, 1), got {val_fraction}.")
    train, val, train_src, val_src = [], [], [], []
    for s in stacks:
        a = s.data
        h, w = a.shape[-2:]
        if fit == "exact" and (h, w) != (image_size, image_size):
            raise InputError(f"{s.source}: slices are {h}x{w} but --image-size is {image_size} and --fit exact "
                             "needs every image at that size (use --fit crop or --fit resize).")
        if fit == "crop" and min(h, w) < image_size:
            raise InputError(f"{s.source}: slices are {h}x{w}, smaller than --image-size {image_size} "
                             "(use --fit resize or a smaller --image-size).")
        x = _to_channels(a, channels, s.source)
        scale = norm.scales(torch.from_numpy(np.ascontiguousarray(a)))
        x = (x - norm.offset) / scale[:, None, None, None]
        if fit == "resize":
            x = _resize_shorter(x, image_size)
        n_val = int(math.floor(val_fraction * x.shape[0] + 0.5)) if x.shape[0] > 1 else 0
        n_train = x.shape[0] - n_val
        if n_train > 0:
            train.append(x[:n_train])
            train_src += [s.source] * n_train
        if n_val > 0:
            val.append(x[n_train:])
            val_src += [s.source] * n_val
    if not train:
        raise InputError("no training slices are left after the validation split (lower --val-fraction).")
    return _group(train, train_src), (_group(val, val_src) if val else None)


def _group(chunks: list[torch.Tensor], sources: list[str]) -> ImageSet:
    """Concatenate chunks of equal slice size (keeps the order of first appearance)."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    src_by_shape: dict[tuple, list[str]] = {}
    pos = 0
    for c in chunks:
        key = tuple(c.shape[1:])
        by_shape.setdefault(key, []).append(c)
        src_by_shape.setdefault(key, []).extend(sources[pos:pos + c.shape[0]])
        pos += c.shape[0]
    groups = [torch.cat(v) for v in by_shape.values()]
    srcs = [s for k in by_shape for s in src_by_shape[k]]
    return ImageSet(groups, srcs)


def data_sigma(images: ImageSet, image_size: int, max_slices: int = 512) -> float:
    """Standard deviation of the normalised training crops (EDM's sigma_data), rounded to 3 decimals."""
    n = len(images)
    idx = torch.linspace(0, n - 1, min(n, max_slices)).round().long()
    x = images.batch(idx, image_size, None)
    return round(float(x.std()), 3) or 0.5
