"""A prior on disk: a directory with ``config.json`` + ``weights_ema.safetensors`` + ``weights.safetensors``.

config.json holds everything needed to rebuild the denoiser (network architecture,
preconditioning and SDE, sigma range, image size, channels, intensity normalisation,
augmentation, training data summary and command, invdiff version, ``format_version``) and the
sha256 of the EMA weights. Loading reads JSON and safetensors only: no pickle is ever opened,
so a prior file cannot execute code. Any problem (missing or edited config, weights that do not
fit the architecture, an older or newer format, non-finite weights) is an InputError naming the
file; the architecture is checked against the weights' shapes on the ``meta`` device before
anything is allocated, so an edited config cannot make invdiff allocate a huge network.

Crash safety. Each file is written atomically, but a directory of three files cannot be
replaced in one step: a run killed after the new EMA weights are in place and before the new
config.json is leaves the old config.json beside the new weights. So the EMA weights file
carries its own copy of the config and a digest of its tensors in the safetensors metadata
(``invdiff_prior_config``, ``invdiff_tensors_sha256``); when config.json's checksum does not
match, `load_prior` uses that embedded config if the tensors match their digest and the network
it describes is the one in config.json (the file was caught between two saves of the same
training run). A prior is therefore always either the complete old or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import invdiff
from invdiff.errors import InputError
from invdiff.io.atomic import atomic_path, atomic_write_text, folder_problem
from invdiff.prior.data import Normalisation
from invdiff.prior.denoiser import as_sigma
from invdiff.prior.precond import Precond
from invdiff.prior.unet import UNet, UNetConfig

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
EMA_NAME = "weights_ema.safetensors"
RAW_NAME = "weights.safetensors"
EMBEDDED_CONFIG = "invdiff_prior_config"
EMBEDDED_DIGEST = "invdiff_tensors_sha256"
#: noise levels (and sigma_data) in normalised units above this are an edited file, not a prior
#: (sigma^2 must stay far from float overflow in the preconditioning)
SIGMA_LIMIT = 1e6
#: config entries that define the denoiser; the rest (steps done, command, ...) may differ
#: between two saves of one training run.
DENOISER_KEYS = ("network", "precond", "channels", "image_size", "normalisation")


def default_prior_path() -> Path:
    """The small pretrained brain prior shipped with invdiff: ``<repo>/data/priors/brain128``."""
    return Path(invdiff.__file__).parent.parent / "data" / "priors" / "brain128"


def build_precond(config: dict) -> Precond:
    """Rebuild the (untrained) preconditioned network a config describes."""
    net = UNet(UNetConfig.from_dict(config["network"]["unet"]))
    p = config["precond"]
    return Precond(net, kind=p["kind"], sigma_data=float(p["sigma_data"]), sigma_min=float(p["sigma_min"]),
                   sigma_max=float(p["sigma_max"]), energy=bool(p.get("energy", False)))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a state dict to safetensors atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(_contiguous(state), str(tmp), metadata=metadata)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (never a pickle); InputError naming the file if it is not one,
    or if a floating-point tensor holds NaN or Inf."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: weights file is a folder, not a safetensors file.")
    if not path.is_file():
        raise InputError(f"{path}: weights file is missing.")
    try:
        state = load_file(str(path))
    except Exception as exc:  # SafetensorError, header parse errors, truncated files
        raise InputError(f"{path}: is not a valid safetensors weights file ({type(exc).__name__}).") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{path}: tensor '{name}' holds NaN or Inf values (a diverged or damaged training run).")
    return state


def weights_metadata(path: Path) -> dict[str, str]:
    """The safetensors header metadata of ``path`` ({} when there is none or it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:
        return {}


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``state`` in sorted key order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_prior(out_dir: Path, config: dict, raw_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor]) -> Path:
    """Write the prior directory: weights first, then config.json with the EMA checksum."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out_dir}: cannot create the prior directory ({folder_problem(out_dir, exc)}).") from None
    config = dict(config)
    config.pop("weights_ema_sha256", None)
    config["format_version"] = FORMAT_VERSION
    config["invdiff_version"] = invdiff.__version__
    ema = _contiguous(ema_state)
    embedded = {EMBEDDED_CONFIG: json.dumps(config, sort_keys=True), EMBEDDED_DIGEST: tensors_digest(ema)}
    save_weights(out_dir / RAW_NAME, raw_state)
    save_weights(out_dir / EMA_NAME, ema, metadata=embedded)
    config["weights_ema_sha256"] = sha256_file(out_dir / EMA_NAME)
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_config(prior_dir: Path) -> dict:
    """Parse and check config.json; InputError naming the file on any problem."""
    path = Path(prior_dir) / CONFIG_NAME
    if Path(prior_dir).exists() and not Path(prior_dir).is_dir():
        raise InputError(f"{prior_dir}: is a file, not a prior directory (a prior is the folder that holds "
                         f"config.json and the weights).")
    if not Path(prior_dir).is_dir():
        raise InputError(f"{prior_dir}: prior directory does not exist.")
    if not path.is_file():
        raise InputError(f"{path}: prior config is missing (is {prior_dir} a prior directory?).")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: prior config is not valid JSON ({exc.__class__.__name__}).") from None
    return check_config(config, path)


def check_config(config: Any, path: Path) -> dict:
    """``config`` if it is a complete prior config this invdiff reads; else InputError naming ``path``."""
    if not isinstance(config, dict):
        raise InputError(f"{path}: prior config is not a JSON object.")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: prior config has no integer format_version.")
    if version > FORMAT_VERSION:
        raise InputError(f"{path}: prior format_version {version} is newer than this invdiff reads "
                         f"({FORMAT_VERSION}); upgrade invdiff.")
    if version < 1:
        raise InputError(f"{path}: prior format_version {version} is older than the oldest this invdiff reads "
                         "(1); retrain the prior.")
    for section in ("network", "precond", "normalisation"):
        if not isinstance(config.get(section), dict):
            raise InputError(f"{path}: prior config is incomplete or edited ('{section}' is not a JSON object).")
    if not isinstance(config["network"].get("unet"), dict):
        raise InputError(f"{path}: prior config is incomplete or edited ('network.unet' is not a JSON object).")
    try:
        unet = UNetConfig.from_dict(config["network"]["unet"])
        p = config["precond"]
        sigma_data, sigma_min, sigma_max = float(p["sigma_data"]), float(p["sigma_min"]), float(p["sigma_max"])
        str(p["kind"])
        channels, image_size = config["channels"], config["image_size"]
        Normalisation.from_dict(config["normalisation"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"{path}: prior config is incomplete or edited (bad or missing entry {exc}).") from None
    except InputError as exc:  # a bad value, named by its config field (normalisation.kind, ...)
        raise InputError(f"{path}: prior config: {str(exc).rstrip('.')}.") from None
    problem = None
    if not all(math.isfinite(v) and v <= SIGMA_LIMIT for v in (sigma_data, sigma_min, sigma_max)) \
            or not 0 < sigma_min < sigma_max or sigma_data <= 0:
        problem = (f"needs 0 < sigma_min < sigma_max <= {SIGMA_LIMIT:g} and 0 < sigma_data <= {SIGMA_LIMIT:g}, "
                   f"got {sigma_min}, {sigma_max}, {sigma_data}")
    elif channels not in (1, 2) or isinstance(channels, bool):
        problem = f"channels must be 1 or 2, got {channels!r}"
    elif unet.channels != channels:
        problem = f"the network has {unet.channels!r} channel(s) but the prior {channels!r}"
    elif not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        problem = f"image_size must be a positive integer, got {image_size!r}"
    elif not isinstance(unet.base_channels, int) or unet.base_channels < 1 or not unet.channel_mults \
            or min(unet.channel_mults) < 1 or not isinstance(unet.num_res_blocks, int) or unet.num_res_blocks < 0:
        problem = "the network needs base_channels >= 1, channel_mults >= 1 and num_res_blocks >= 0"
    elif any(a < 0 or a >= len(unet.channel_mults) for a in unet.attention_levels):
        problem = f"attention levels {list(unet.attention_levels)} lie outside 0..{len(unet.channel_mults) - 1}"
    elif not isinstance(unet.num_classes, int) or unet.num_classes < 0:
        problem = f"num_classes must be an integer >= 0, got {unet.num_classes!r}"
    elif not (isinstance(unet.dropout, (int, float)) and 0 <= unet.dropout < 1):
        problem = f"dropout must lie in [0, 1), got {unet.dropout!r}"
    elif image_size % 2 ** (len(unet.channel_mults) - 1):
        problem = f"image_size {image_size} is not divisible by {2 ** (len(unet.channel_mults) - 1)} ({len(unet.channel_mults)} levels)"
    if problem:
        raise InputError(f"{path}: prior config is edited or damaged: {problem}.")
    return config


class Prior(nn.Module):
    """A trained prior as a Denoiser: ``prior(x, sigma, class_labels=None) -> D(x, sigma)``.

    x ``(B, C, H, W)`` in the prior's normalised units, sigma ``(B,)`` or a float. Gradients flow
    through it with respect to x (parameters are frozen). ``normalise``/``denormalise`` map
    images between their own units and the prior's.

    ``bf16 = True`` runs the network under bfloat16 autocast (its convolutions and matrix
    products in bfloat16, 8-bit mantissa) with its tensors in channels-last layout (which
    oneDNN's bfloat16 convolutions need to be fast); the preconditioning, and so the skip path
    ``c_skip x`` that carries nearly all of D at small sigma, stays float32, and so does the
    output. Two to three times as fast on CPUs with AMX or AVX512-BF16 (BENCHMARKS.md,
    "Network in bfloat16"); off by default.
    """

    _bf16: bool = False

    @property
    def bf16(self) -> bool:
        return self._bf16

    @bf16.setter
    def bf16(self, on: bool) -> None:
        self._bf16 = bool(on)
        self.precond.to(memory_format=torch.channels_last if self._bf16 else torch.contiguous_format)

    def __init__(self, precond: Precond, config: dict, checksum: str = "", path: Path | None = None):
        super().__init__()
        self.precond = precond.eval().requires_grad_(False)
        self.config = config
        self.checksum = checksum
        self.path = path  # the directory it was loaded from (provenance; shipped calibrations)
        self.sigma_min = float(precond.sigma_min)
        self.sigma_max = float(precond.sigma_max)
        self.sigma_data = float(precond.sigma_data)
        self.channels = int(config["channels"])
        self.image_size = int(config["image_size"])
        self.num_classes = int(config["network"]["unet"].get("num_classes", 0))
        self.normalisation = Normalisation.from_dict(config["normalisation"])
        fully_conv = not config["network"]["unet"].get("attention_levels")
        self.image_shape = (self.channels, None, None) if fully_conv else (self.channels, self.image_size, self.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.precond.parameters()).device

    @property
    def network_dtype(self) -> str:
        """``bfloat16`` or ``float32``: what the network computes in (provenance)."""
        return "bfloat16" if self.bf16 else "float32"

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.bf16:
            return self.precond(x, as_sigma(sigma, x), class_labels)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            out = self.precond(x.contiguous(memory_format=torch.channels_last), as_sigma(sigma, x), class_labels)
        return out.to(x.dtype).contiguous()

    def guided(self, w: float, class_label: int) -> "GuidedDenoiser":
        """Classifier-free guidance (Ho & Salimans 2021): D_w = (1 + w) D(x | c) - w D(x | null)."""
        if self.num_classes <= 0:
            raise InputError("this prior is unconditional; classifier-free guidance needs a class-conditional prior.")
        if not 0 <= int(class_label) < self.num_classes:
            raise InputError(f"class label {class_label} is outside 0..{self.num_classes - 1}.")
        return GuidedDenoiser(self, float(w), int(class_label))

    def normalise(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, H, W)`` (real, or complex for C = 2) or ``(N, C, H, W)`` in their own units ->
        (x ``(N, C, H, W)`` float32 in the prior's units on its device, scale ``(N,)``)."""
        t = torch.as_tensor(images) if not torch.is_tensor(images) else images
        t = t.to(self.device)
        if t.ndim == 3:
            if self.channels == 2:
                if not t.is_complex():
                    raise InputError("this prior expects complex images (2 channels), but the images are real.")
                t4 = torch.stack([t.real, t.imag], 1)
            else:
                t4 = (t.abs() if t.is_complex() else t)[:, None]
            ref = t
        elif t.ndim == 4:
            if t.shape[1] != self.channels:
                raise InputError(f"images have {t.shape[1]} channels but the prior has {self.channels}.")
            t4 = t
            ref = torch.complex(t[:, 0], t[:, 1]) if self.channels == 2 else t[:, 0]
        else:
            raise InputError(f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(t.shape)}.")
        scale = self.normalisation.scales(ref).to(self.device)
        x = (t4.to(torch.float32) - self.normalisation.offset) / scale[:, None, None, None]
        return x, scale

    def denormalise(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalise``: x ``(N, C, H, W)`` -> ``(N, C, H, W)`` in image units."""
        return x * scale.reshape(-1, 1, 1, 1).to(x) + self.normalisation.offset


class GuidedDenoiser:
    """D_w(x, sigma) = (1 + w) D(x, sigma | c) - w D(x, sigma | null) for one class c."""

    def __init__(self, prior: Prior, w: float, class_label: int):
        self.prior = prior
        self.w = w
        self.class_label = class_label
        self.sigma_min, self.sigma_max, self.sigma_data = prior.sigma_min, prior.sigma_max, prior.sigma_data
        self.image_shape = prior.image_shape

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        b = x.shape[0]
        cond = torch.full((b,), self.class_label, dtype=torch.long, device=x.device)
        null = torch.full((b,), self.prior.num_classes, dtype=torch.long, device=x.device)
        return (1 + self.w) * self.prior(x, sigma, cond) - self.w * self.prior(x, sigma, null)


def load_prior(path: str | Path, device: str | torch.device = "cpu", weights: str = "ema") -> Prior:
    """Load a prior directory (JSON + safetensors only). ``weights``: ``ema`` (default) or ``raw``."""
    prior_dir = Path(path)
    config = read_config(prior_dir)
    config_path = prior_dir / CONFIG_NAME
    wfile = prior_dir / (EMA_NAME if weights == "ema" else RAW_NAME)
    state = load_weights(wfile)
    if weights == "ema":
        checksum = sha256_file(wfile)
        expected = config.get("weights_ema_sha256")
        if not isinstance(expected, str):
            raise InputError(f"{config_path}: records no weights_ema_sha256 checksum of {EMA_NAME} (edited?).")
        if expected != checksum:
            config = _config_of_newer_weights(config, state, wfile)
            config["weights_ema_sha256"] = checksum
    else:
        ema = prior_dir / EMA_NAME
        checksum = sha256_file(ema) if ema.is_file() else ""
    _check_shapes(config, state, config_path, wfile)
    try:
        precond = build_precond(config)
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{config_path}: cannot build the network it describes ({exc}).") from None
    try:
        precond.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise InputError(f"{wfile}: weights do not fit the architecture in {CONFIG_NAME} ({detail[:200]}).") from None
    return Prior(precond, config, checksum, prior_dir).to(device)


def _config_of_newer_weights(config: dict, state: dict[str, torch.Tensor], wfile: Path) -> dict:
    """The config embedded in the EMA weights, when config.json is the previous save of the same
    network (a run killed between writing the weights and config.json); else InputError."""
    mismatch = InputError(f"{wfile}: weights do not match the checksum recorded in {CONFIG_NAME} "
                          "(edited, or written while training was saving; retry).")
    meta = weights_metadata(wfile)
    try:
        embedded = check_config(json.loads(meta[EMBEDDED_CONFIG]), wfile)
    except (KeyError, ValueError, InputError):
        raise mismatch from None
    same_network = all(embedded.get(k) == config.get(k) for k in DENOISER_KEYS)
    if not same_network or meta.get(EMBEDDED_DIGEST) != tensors_digest(state):
        raise mismatch
    return embedded


def _check_shapes(config: dict, state: dict[str, torch.Tensor], config_path: Path, wfile: Path) -> None:
    """Build the network on the meta device (no memory) and compare its tensors with the file's."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build_precond(config).state_dict().items()}
    except Exception as exc:  # any failure to build what the config describes is the config's fault
        raise InputError(f"{config_path}: cannot build the network it describes ({type(exc).__name__}: {exc}).") from None
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected == found:
        return
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if wrong:
        k = wrong[0]
        detail = f"'{k}' has shape {list(found[k])} but {CONFIG_NAME} describes {list(expected[k])}"
    elif missing:
        detail = f"{len(missing)} tensor(s) missing, e.g. '{missing[0]}'"
    else:
        detail = f"{len(extra)} unexpected tensor(s), e.g. '{extra[0]}'"
    raise InputError(f"{wfile}: weights do not fit the architecture in {CONFIG_NAME} ({detail}).")


def describe(config: dict) -> dict[str, Any]:
    """A short summary of a prior config (for ``invdiff info``)."""
    u = config["network"]["unet"]
    return {"channels": config["channels"], "image_size": config["image_size"], "sde": config["precond"]["kind"],
            "energy": config["precond"].get("energy", False), "sigma_min": config["precond"]["sigma_min"],
            "sigma_max": config["precond"]["sigma_max"], "sigma_data": config["precond"]["sigma_data"],
            "base_channels": u["base_channels"], "channel_mults": u["channel_mults"],
            "steps": config.get("training", {}).get("steps_done"), "format_version": config.get("format_version")}
