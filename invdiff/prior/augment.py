"""Optional data augmentation spanning the variety of images users bring.

Each transform is applied to a sample with its own probability; every parameter is recorded
in the prior's config.json. Order: geometry (flips, 90-degree rotations, small rotation and
scaling, elastic deformation as in Simard et al. 2003, one bilinear ``grid_sample``, reflection
padding) -> intensity curves (gamma, random window = contrast/brightness, contrast inversion
towards T2/PD-like looks, ``invert``; magnitude images only, C = 1) -> Gaussian blur ->
down/up-sampling -> additive Gaussian noise.

Random parameters are drawn for the whole global batch (``draw``) and applied to a rank's shard
(``apply``), so data-parallel runs see the same images as one process. All on x's device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from invdiff.errors import InputError


@dataclass
class AugmentConfig:
    p_flip: float = 0.5
    p_rot90: float = 0.5
    p_affine: float = 0.3
    max_rotation_deg: float = 15.0
    max_scale: float = 0.15  # scale factor in [1 - max_scale, 1 + max_scale]
    p_elastic: float = 0.2
    elastic_alpha: float = 0.02  # displacement std as a fraction of the half image size
    elastic_grid: int = 4  # control points per side
    p_gamma: float = 0.3
    max_log_gamma: float = 0.4  # gamma = exp(U(-m, m))
    p_window: float = 0.3
    window_range: float = 0.2  # contrast in [1 - r, 1 + r], brightness in [-r/2, r/2]
    p_invert: float = 0.05
    invert_mode: str = "object"  # "object": T2/PD-like, background stays dark (``invert``); "full": max - x
    invert_floor: float = 0.15  # "object": intensities below this fraction of the max count as background
    max_invert_offset: float = 0.4  # "object": offset drawn in [0, this] x max; how grey white matter turns
    invert_close: int = 8  # "object": pixels over which the object mask is closed (fills ventricles, sulci)
    p_blur: float = 0.1
    max_blur_sigma: float = 1.0  # pixels
    p_resample: float = 0.1
    max_resample_factor: float = 2.0
    p_noise: float = 0.1
    max_noise_std: float = 0.03  # in normalised units

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name == "invert_mode":
                if value not in ("object", "full"):
                    raise InputError(f"augmentation invert_mode must be 'object' or 'full', got '{value}'.")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"augmentation setting {name} must be a finite number, got {value!r}.")
            elif name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise InputError(f"augmentation probability {name} must lie in [0, 1], got {value}.")
            elif value < 0:
                raise InputError(f"augmentation setting {name} must not be negative, got {value}.")
        if not 0.0 < self.invert_floor < 1.0:
            raise InputError(f"augmentation invert_floor must lie in (0, 1), got {self.invert_floor}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        """From ``to_dict``'s output. Configs written before ``invert_mode`` existed inverted the whole image."""
        return cls(**{"invert_mode": "full", **d})

    @classmethod
    def from_overrides(cls, items: list[str]) -> "AugmentConfig":
        """Defaults overridden by ``KEY=VALUE`` strings (``invdiff train --augment-option``)."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in fields:
                raise InputError(f"--augment-option '{item}' must be KEY=VALUE with KEY one of {', '.join(fields)}.")
            if key == "invert_mode":
                values[key] = text.strip()
                continue
            try:
                values[key] = int(text) if key in ("elastic_grid", "invert_close") else float(text)
            except ValueError:
                raise InputError(f"--augment-option {key}: '{text}' is not a number.") from None
        return cls(**values)


class Augmenter:
    """``draw(shape, generator, device) -> params``; ``apply(x_shard, params_shard) -> x``."""

    def __init__(self, config: AugmentConfig):
        self.c = config

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        b = shape[0]
        c = self.c
        u = lambda *s: torch.rand(b, *s, generator=generator, device=device)  # noqa: E731
        g = c.elastic_grid
        return {
            "coin": u(10),  # one coin per transform
            "flip": u(2), "rot90": u(1), "angle": u(1), "scale": u(1),
            "elastic": torch.randn(b, 2, g, g, generator=generator, device=device),
            "gamma": u(1), "contrast": u(1), "brightness": u(1),
            "blur": u(1), "resample": u(1), "noise_std": u(1),
            "noise": torch.randn(shape, generator=generator, device=device),
            "invert_offset": u(1),
        }

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        c = self.c
        coin = p["coin"]
        on = lambda i, prob: (coin[:, i] < prob)  # noqa: E731
        x = self._geometry(x, p, on)
        if x.shape[1] == 1:
            v = x.float()
            gamma = torch.exp((2 * p["gamma"][:, 0] - 1) * c.max_log_gamma)
            gamma = torch.where(on(4, c.p_gamma), gamma, torch.ones_like(gamma)).view(-1, 1, 1, 1)
            v = torch.sign(v) * v.abs().pow(gamma)
            contrast = 1 + (2 * p["contrast"][:, 0] - 1) * c.window_range
            bright = (p["brightness"][:, 0] - 0.5) * c.window_range
            w = on(5, c.p_window)
            v = torch.where(w.view(-1, 1, 1, 1), v * contrast.view(-1, 1, 1, 1) + bright.view(-1, 1, 1, 1), v)
            inv = on(6, c.p_invert).view(-1, 1, 1, 1)
            if c.invert_mode == "full":
                inverted = v.flatten(1).amax(1).view(-1, 1, 1, 1) - v
            else:
                inverted = invert(v, c.invert_floor, c.max_invert_offset * p["invert_offset"][:, 0], c.invert_close)
            x = torch.where(inv, inverted, v).to(x.dtype)
        x = self._blur(x, torch.where(on(7, c.p_blur), p["blur"][:, 0] * c.max_blur_sigma, torch.zeros_like(p["blur"][:, 0])))
        x = self._resample(x, on(8, c.p_resample), 1 + p["resample"][:, 0] * (c.max_resample_factor - 1))
        std = torch.where(on(9, c.p_noise), p["noise_std"][:, 0] * c.max_noise_std, torch.zeros_like(p["noise_std"][:, 0]))
        return x + std.view(-1, 1, 1, 1) * p["noise"]

    def _geometry(self, x: torch.Tensor, p: dict, on) -> torch.Tensor:
        c = self.c
        b, _, h, w = x.shape
        fx = torch.where(on(0, c.p_flip) & (p["flip"][:, 0] < 0.5), -1.0, 1.0)
        fy = torch.where(on(0, c.p_flip) & (p["flip"][:, 0] >= 0.5), -1.0, 1.0)
        k = torch.where(on(1, c.p_rot90), torch.floor(p["rot90"][:, 0] * 4), torch.zeros_like(fx))
        angle = k * (math.pi / 2)
        aff = on(2, c.p_affine)
        angle = angle + torch.where(aff, (2 * p["angle"][:, 0] - 1) * math.radians(c.max_rotation_deg), torch.zeros_like(fx))
        scale = torch.where(aff, 1 + (2 * p["scale"][:, 0] - 1) * c.max_scale, torch.ones_like(fx))
        elastic = on(3, c.p_elastic)
        if not (fx.ne(1).any() or fy.ne(1).any() or angle.ne(0).any() or scale.ne(1).any() or elastic.any()):
            return x
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
        theta[:, 0, 0], theta[:, 0, 1] = cos * fx / scale, -sin * fy / scale
        theta[:, 1, 0], theta[:, 1, 1] = sin * fx / scale, cos * fy / scale
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        disp = p["elastic"] * c.elastic_alpha * elastic.view(-1, 1, 1, 1)
        disp = F.interpolate(disp, size=(h, w), mode="bicubic", align_corners=True)
        grid = grid + disp.permute(0, 2, 3, 1)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with a per-sample sigma ``(B,)`` (0 = untouched)."""
        if not bool(sigma.gt(0).any()):
            return x
        b, ch, h, w = x.shape
        r = max(1, math.ceil(3 * self.c.max_blur_sigma))
        t = torch.arange(-r, r + 1, device=x.device, dtype=torch.float32)
        s = sigma.clamp_min(1e-3).view(-1, 1)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = torch.where(sigma.view(-1, 1) > 0, k / k.sum(1, keepdim=True), (t == 0).float().expand_as(k))
        k = k.repeat_interleave(ch, 0)  # (B*C, 2r+1)
        y = F.pad(x.float().reshape(1, b * ch, h, w), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k.view(b * ch, 1, 1, -1), groups=b * ch)
        y = F.conv2d(y, k.view(b * ch, 1, -1, 1), groups=b * ch)
        return y.reshape(b, ch, h, w).to(x.dtype)

    @staticmethod
    def _resample(x: torch.Tensor, mask: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Down-sample by ``factor`` (area) and back up (bilinear) where ``mask``: a loss of resolution."""
        if not bool(mask.any()):
            return x
        h, w = x.shape[-2:]
        out = x.clone()
        for i in torch.nonzero(mask).flatten().tolist():
            f = float(factor[i])
            small = F.interpolate(x[i:i + 1].float(), size=(max(1, round(h / f)), max(1, round(w / f))), mode="area")
            out[i:i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).to(x.dtype)
        return out


def invert(v: torch.Tensor, floor: float, offset: torch.Tensor, close: int) -> torch.Tensor:
    """T2/PD-like contrast inversion of a T1-like magnitude image ``(B, 1, H, W)``, background kept dark.

    With m the image maximum, t = floor m, o = offset m (``offset`` ``(B,)``, a fraction of m) and
    w the object mask (v > t, closed morphologically over ``close`` pixels so that ventricles and
    sulci, dark in T1, count as inside, the space beyond the image border as outside; edges
    softened over 3 pixels):

        f(v) = w (m + o - v) m / (m + o)

    Background stays 0, the darkest tissue inside the object (CSF in T1) becomes the brightest (m),
    the brightest (white matter) becomes o m / (m + o): dark for o = 0, grey for o ~ 0.4. A
    photographic negative (``invert_mode="full"``) would instead make the background bright,
    which no MR sequence does.
    """
    top = v.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    o = offset.view(-1, 1, 1, 1) * top
    inside = (v > floor * top).float()
    if close > 0:
        k = 2 * close + 1
        grown = F.max_pool2d(inside, k, stride=1, padding=close)
        inside = -F.max_pool2d(-F.pad(grown, (close,) * 4), k, stride=1)  # outside the image is background
    w = torch.maximum((v / (floor * top)).clamp(0.0, 1.0), F.avg_pool2d(inside, 3, stride=1, padding=1, count_include_pad=False))
    return w * (top + o - v).clamp_min(0.0) * top / (top + o)
