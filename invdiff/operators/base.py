"""The forward-operator contract every operator and every solver relies on.

Conventions (all operators):

* Images are REAL tensors ``(B, C, H, W)``. ``C = 1`` is a real image; ``C = 2`` is a complex
  image stored as (real, imaginary) channels (see :func:`to_complex` / :func:`to_channels`).
* Measurements are tensors ``(B, *measurement_shape)``, real or complex
  (``measurement_is_complex``): CT sinogram ``(B, views, detectors)``, MRI k-space
  ``(B, coils, H, W)`` complex, microscopy image ``(B, H, W)``.
* Inner products are real: ``<a, b> = sum(Re(conj(a) * b))``, so the adjoint satisfies
  ``<A x, y> = <x, A^H y>`` for real x and real-or-complex y (the dot-product test).
* ``forward`` is linear. Noise lives in ``operator.noise`` (see noise.py), never in forward.
* Operators are immutable; ``to(device, dtype)`` returns a rebuilt copy.

An operator is registered by name through the ``invdiff.operators`` entry-point group; its
class is what the entry point names. ``to_config()`` gives ``{"name", "params"}`` where params
are JSON scalars/lists or numpy arrays (mask, coil maps, PSF); :func:`config_to_json` splits
out the arrays so that HDF5 can store them as datasets.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any, ClassVar

import numpy as np
import torch

from invdiff.errors import InputError
from invdiff.registry import Registry

OPERATORS = Registry("invdiff.operators", "operator")


def get_operator_class(name: str) -> type["Operator"]:
    """The operator class registered as ``name`` (InputError if unknown)."""
    return OPERATORS.get(name)


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Real inner product ``sum(Re(conj(a) * b))`` over all elements (a scalar tensor)."""
    if a.is_complex() or b.is_complex():
        return (torch.conj(a) * b).real.sum() if a.is_complex() else (a * b.real).sum()
    return (a * b).sum()


def to_complex(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` real -> ``(B, 1, H, W)`` complex. C=1: imaginary part 0; C=2: re, im."""
    if x.is_complex():
        return x
    if x.shape[1] == 1:
        return torch.complex(x, torch.zeros_like(x))
    if x.shape[1] == 2:
        return torch.complex(x[:, :1], x[:, 1:2])
    raise ValueError(f"expected 1 or 2 channels, got {x.shape[1]}")


def to_channels(z: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of :func:`to_complex` for the adjoint: ``(B, 1, H, W)`` complex -> real
    ``(B, channels, H, W)``. For ``channels == 1`` the real part is kept, which is the exact
    adjoint of the embedding of real images into complex ones."""
    if channels == 1:
        return z.real.contiguous()
    return torch.cat([z.real, z.imag], dim=1)


class Operator(ABC):
    """A linear forward operator ``y = A x`` with its noise model.

    Subclasses set ``name`` and implement ``forward``, ``adjoint``, ``direct``, ``params`` and
    ``from_config``. They must hold: ``image_shape`` ``(C, H, W)``, ``measurement_shape``
    (without batch), ``measurement_is_complex``, ``noise`` (a NoiseModel), ``device``,
    ``dtype`` (the REAL dtype, float32 or float64).
    """

    name: ClassVar[str]
    image_shape: tuple[int, int, int]
    measurement_shape: tuple[int, ...]
    measurement_is_complex: bool = False

    # --- the linear map -------------------------------------------------------------
    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` real image -> ``(B, *measurement_shape)`` noiseless measurement."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint ``A^H``: ``(B, *measurement_shape)`` -> ``(B, C, H, W)`` real."""

    @abstractmethod
    def direct(self, y: torch.Tensor) -> torch.Tensor:
        """Classical direct reconstruction (FBP, zero-filled, Wiener...) ``-> (B, C, H, W)``."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` (override when a cheaper form exists, e.g. MRI with a mask)."""
        return self.adjoint(self.forward(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    # --- configuration -----------------------------------------------------------------
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Everything needed to rebuild the operator, including ``noise``: JSON values or
        numpy arrays. ``from_config(op.params())`` must give an identical operator."""

    @classmethod
    @abstractmethod
    def from_config(
        cls, params: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "Operator":
        """Rebuild from ``params``; raise InputError for impossible geometry or values."""

    @classmethod
    def example(cls, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> "Operator":
        """A small, typical instance (about 16x16 to 32x32 images) on which the one contract
        test of tests/test_operator_contract.py runs: every registered operator provides it."""
        raise NotImplementedError(f"operator {cls.__name__} provides no example() for the contract tests")

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}`` (params may hold numpy arrays)."""
        return {"name": self.name, "params": self.params()}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Operator":
        """A copy on another device and/or real dtype."""
        return type(self).from_config(
            self.params(), device=device if device is not None else self.device, dtype=dtype or self.dtype
        )

    # --- helpers shared by all operators ------------------------------------------------
    def random_image(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((batch, *self.image_shape), generator=generator, dtype=self.dtype).to(self.device)

    def random_measurement(self, batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (batch, *self.measurement_shape)
        if self.measurement_is_complex:
            re = torch.randn(shape, generator=generator, dtype=self.dtype)
            im = torch.randn(shape, generator=generator, dtype=self.dtype)
            return torch.complex(re, im).to(self.device)
        return torch.randn(shape, generator=generator, dtype=self.dtype).to(self.device)

    def norm(self, iterations: int = 30, generator: torch.Generator | None = None) -> float:
        """Spectral norm ``||A||_2`` by power iteration on ``A^H A`` (for step sizes)."""
        x = self.random_image(1, generator)
        x = x / x.norm()
        value = torch.tensor(0.0)
        for _ in range(iterations):
            z = self.normal(x)
            value = z.norm()
            if value == 0:
                return 0.0
            x = z / value
        return float(value.sqrt())

    def sampled(self) -> torch.Tensor | None:
        """0/1 weights broadcastable to ``(B, *measurement_shape)`` that mark the entries the
        operator measures (MRI: the k-space mask), or None when it measures every entry.

        Entries outside carry no data (scanner files and `invdiff simulate` hold zeros there):
        the likelihood weights, the discrepancy principle and the data residual leave them out.
        """
        return None

    def check_measurement(self, y: torch.Tensor, source: str = "measurement") -> None:
        """InputError unless ``y`` has shape ``(B, *measurement_shape)`` and finite values."""
        if tuple(y.shape[1:]) != tuple(self.measurement_shape):
            raise InputError(
                f"{source}: data of shape {tuple(y.shape[1:])} does not match the {self.name} "
                f"geometry, which expects {tuple(self.measurement_shape)}."
            )
        if not torch.isfinite(y).all():
            raise InputError(f"{source}: the data contain NaN or Inf values.")

    def scaled(self, scale: float) -> "ScaledOperator":
        """``x -> A (scale * x)``: lets a solver work in a prior's normalised units."""
        return ScaledOperator(self, scale)


class ScaledOperator(Operator):
    """``A_s x = A (s x)`` for a positive scale s; noise model and direct recon follow.

    Used by the reconstruction pipeline: the prior works on ``x_n = x / s`` (its normalised
    intensities) and the physical image is ``s * x_n``.
    """

    name = "scaled"

    def __init__(self, base: Operator, scale: float):
        if not scale > 0:
            raise InputError(f"image scale must be positive, got {scale}.")
        self.base = base
        self.scale = float(scale)
        self.image_shape = base.image_shape
        self.measurement_shape = base.measurement_shape
        self.measurement_is_complex = base.measurement_is_complex
        self.noise = base.noise
        self.device = base.device
        self.dtype = base.dtype

    def forward(self, x):
        return self.base.forward(x) * self.scale

    def adjoint(self, y):
        return self.base.adjoint(y) * self.scale

    def normal(self, x):
        return self.base.normal(x) * self.scale**2

    def direct(self, y):
        return self.base.direct(y) / self.scale

    def sampled(self):
        return self.base.sampled()

    def params(self):
        return {"base": self.base.to_config(), "scale": self.scale}

    def to_config(self):
        return self.base.to_config()

    @classmethod
    def from_config(cls, params, *, device="cpu", dtype=torch.float32):
        base_cfg = params["base"]
        base = get_operator_class(base_cfg["name"]).from_config(base_cfg["params"], device=device, dtype=dtype)
        return cls(base, params["scale"])

    def to(self, device=None, dtype=None):
        return ScaledOperator(self.base.to(device, dtype), self.scale)


def check_params(operator: str, params: Any, allowed: Collection[str], required: Collection[str]) -> None:
    """Raise InputError unless ``params`` is a dict with every ``required`` key and no key
    outside ``allowed`` (the check each operator's ``from_config`` starts with)."""
    if not isinstance(params, dict):
        raise InputError(f"{operator} operator parameters must be a JSON object.")
    unknown = set(params) - set(allowed)
    if unknown:
        raise InputError(f"unknown {operator} operator parameter(s): {', '.join(sorted(unknown))}.")
    missing = [key for key in required if key not in params]
    if missing:
        raise InputError(f"the {operator} operator description lacks {', '.join(missing)}.")


def build_operator(
    config: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Operator:
    """Operator from ``{"name", "params"}`` via the registry."""
    if not isinstance(config, dict) or "name" not in config:
        raise InputError("operator description must be a JSON object with a 'name'.")
    cls = get_operator_class(config["name"])
    return cls.from_config(dict(config.get("params", {})), device=device, dtype=dtype)


# --- JSON with arrays ---------------------------------------------------------------------
_ARRAY_KEY = "$array"


def config_to_json(config: dict[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """Split a config into a JSON string and named numpy arrays.

    Every numpy array (or tensor) anywhere in the config is replaced by
    ``{"$array": "<path>"}`` and returned in the dict under that path (e.g. ``params/mask``),
    so the JSON stays small and HDF5 stores the arrays as datasets.
    """
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            arrays[path] = value
            return {_ARRAY_KEY: path}
        if isinstance(value, dict):
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            return value.item()
        return value

    return json.dumps(walk(config, "")), arrays


def config_from_json(text: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`config_to_json`; InputError for bad JSON or a missing array."""
    try:
        config = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InputError(f"operator description is not valid JSON ({exc}).") from None

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {_ARRAY_KEY}:
                path = value[_ARRAY_KEY]
                if path not in arrays:
                    raise InputError(f"operator description refers to a missing array '{path}'.")
                return np.asarray(arrays[path])
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(config)
