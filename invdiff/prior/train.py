"""The training loop: AdamW, gradient clipping, EMA, mixed precision on CUDA, checkpoints, resume.

As in EDM / k-diffusion: each step draws a global batch of crops, noise levels sigma ~ p(sigma)
and noise, each rank takes its shard, the loss (losses.py) is back-propagated, gradients
are averaged over ranks, clipped, and AdamW steps with a linear learning-rate warm-up; the EMA
(ema.py) follows the weights.

Every ``checkpoint_every`` steps rank 0 writes, atomically:
- the prior directory files (store.py), usable while training goes on;
- ``checkpoint.safetensors``: model, EMA, optimiser tensors and RNG states (torch CPU/CUDA,
  data order, noise, numpy), with the JSON state in its metadata; ``checkpoint.json``: the same
  JSON, readable;
- ``training_log.json`` and ``training_log.csv``: step, train loss, validation losses, lr, images/s.
``resume=True`` restores all of it, so a killed run continues exactly: on the CPU the weights
after N straight steps and after N/2 + resume + N/2 are bitwise equal.

A run that diverges stops with an InputError ("training diverged at step N ...") and writes
nothing more: the first non-finite training loss is tracked on the device (no sync per step)
and checked at every log row, and the weights are checked before every write, on all ranks
together (one all-reduce), so the prior and checkpoint on disk are those of the last good
checkpoint, which ``--resume`` continues from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from invdiff.errors import InputError
from invdiff.io.atomic import atomic_write_text
from invdiff.prior import distributed as ddp
from invdiff.prior.augment import Augmenter, AugmentConfig
from invdiff.prior.data import ImageSet, Normalisation
from invdiff.prior.ema import EMA
from invdiff.prior.losses import make_loss
from invdiff.prior.precond import Precond
from invdiff.prior.sde import NoiseDistribution
from invdiff.prior.store import load_weights, save_prior, save_weights
from invdiff.prior.unet import UNet, UNetConfig, count_parameters

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
LOG_JSON = "training_log.json"
LOG_CSV = "training_log.csv"
# settings that may change when resuming; every other one must match the checkpoint
RESUMABLE = {"steps", "checkpoint_every", "log_every", "val_every"}
#: layout version of checkpoint.safetensors (state key ``format_version``; absent = 1)
CHECKPOINT_FORMAT = 1


@dataclass
class TrainSettings:
    """Everything that determines a training run (stored in config.json and the checkpoint)."""

    image_size: int = 128
    channels: int = 1
    unet: UNetConfig = field(default_factory=UNetConfig)
    sde: str = "edm"
    loss: str = "dsm"
    energy: bool = False
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    p_mean: float = -1.2
    p_std: float = 1.2
    batch_size: int = 16
    steps: int = 10000
    lr: float = 2e-4
    lr_warmup: int = 200
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    ema_power: float = 2 / 3
    ema_max_decay: float = 0.9999
    label_dropout: float = 0.1
    augment: AugmentConfig | None = None
    amp: bool = True  # bfloat16 autocast on CUDA
    amp_cpu: bool = False  # ... and on the CPU too (2.4x faster where it has AMX or AVX512-BF16)
    checkpoint_every: int = 500
    log_every: int = 50
    val_every: int = 0  # 0: at every checkpoint
    seed: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unet"] = self.unet.to_dict()
        d["augment"] = self.augment.to_dict() if self.augment is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSettings":
        d = dict(d)
        d["unet"] = UNetConfig.from_dict(d["unet"])
        d["augment"] = AugmentConfig.from_dict(d["augment"]) if d.get("augment") else None
        return cls(**d)

    def noise(self) -> NoiseDistribution:
        return NoiseDistribution(self.sde, self.sigma_data, self.sigma_min, self.sigma_max, self.p_mean, self.p_std)


def build_model(s: TrainSettings) -> Precond:
    unet = UNetConfig(**{**s.unet.to_dict(), "channels": s.channels,
                         "channel_mults": s.unet.channel_mults, "attention_levels": s.unet.attention_levels})
    return Precond(UNet(unet), s.sde, s.sigma_data, s.sigma_min, s.sigma_max, s.energy)


def prior_config(s: TrainSettings, norm: Normalisation, data_summary: dict, extra: dict) -> dict:
    """The config.json of the prior this run produces (store.py reads it back)."""
    unet = s.unet.to_dict()
    unet["channels"] = s.channels
    return {
        "kind": "invdiff-prior",
        "network": {"type": "unet", "unet": unet},
        "precond": {"kind": s.sde, "sigma_data": s.sigma_data, "sigma_min": s.sigma_min,
                    "sigma_max": s.sigma_max, "energy": s.energy},
        "noise_distribution": s.noise().to_dict(),
        "loss": s.loss,
        "image_size": s.image_size,
        "channels": s.channels,
        "fully_convolutional": not s.unet.attention_levels,
        "normalisation": norm.to_dict(),
        "augmentation": s.augment.to_dict() if s.augment is not None else None,
        "data": data_summary,
        "training": s.to_dict(),
        **extra,
    }


@dataclass
class StepReport:
    step: int
    loss: float
    images_per_s: float
    lr: float


def _lr(s: TrainSettings, step: int) -> float:
    return s.lr * min(1.0, (step + 1) / max(1, s.lr_warmup))


@torch.no_grad()
def validation_loss(model: Precond, images: ImageSet, s: TrainSettings, device: torch.device,
                    n_sigmas: int = 8, max_images: int = 64) -> float:
    """Deterministic DSM loss: centre crops, fixed sigma quantiles, fixed-seed noise (EMA model)."""
    loss = make_loss("dsm", s.noise())
    gen = torch.Generator(device=device).manual_seed(12345)
    n = min(len(images), max_images)
    idx = torch.linspace(0, len(images) - 1, n).round().long()
    x0_all = images.batch(idx, s.image_size, None).to(device)
    total, count = 0.0, 0
    for sigma in s.noise().quantiles(n_sigmas).tolist():
        for start in range(0, n, s.batch_size):
            x0 = x0_all[start:start + s.batch_size]
            sig = torch.full((x0.shape[0],), sigma, device=device)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            with torch.enable_grad() if s.energy else torch.no_grad():
                value = loss.compute(model, x0, None, {"sigma": sig, "noise": noise})
            total += float(value) * x0.shape[0]
            count += x0.shape[0]
    return total / count


# --- checkpoint state --------------------------------------------------------------------

def _rng_tensors(data_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device) -> dict:
    t = {"rng.torch_cpu": torch.get_rng_state(), "rng.data": data_gen.get_state(), "rng.noise": noise_gen.get_state()}
    if device.type == "cuda":
        t["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    t["rng.numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    return t


def save_checkpoint(out_dir: Path, model: Precond, ema: EMA, optimizer: torch.optim.Optimizer, state: dict,
                    data_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.model.state_dict().items()})
    opt = optimizer.state_dict()
    for i, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors.update(_rng_tensors(data_gen, noise_gen, device))
    np_state = np.random.get_state()
    state = {**state, "format_version": CHECKPOINT_FORMAT, "optimizer_param_groups": opt["param_groups"],
             "numpy_rng": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python_rng": json.loads(json.dumps(random.getstate()))}
    text = json.dumps(state)
    save_weights(out_dir / CHECKPOINT, tensors, metadata={"invdiff_checkpoint": text})
    atomic_write_text(out_dir / CHECKPOINT_JSON, json.dumps(state, indent=1) + "\n")


def load_checkpoint(out_dir: Path, model: Precond, ema: EMA, optimizer: torch.optim.Optimizer,
                    data_gen: torch.Generator, noise_gen: torch.Generator, device: torch.device) -> dict:
    path = out_dir / CHECKPOINT
    tensors, state = read_checkpoint(path)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    except RuntimeError:
        raise InputError(f"{path}: checkpoint weights do not fit the network of this run.") from None
    opt_state: dict = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v
        if int(state["step"]) > 0 and not opt_state:
            raise ValueError("no optimiser state after training steps")
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer_param_groups"]})
        torch.set_rng_state(tensors["rng.torch_cpu"])
        data_gen.set_state(tensors["rng.data"])
        noise_gen.set_state(tensors["rng.noise"].to(noise_gen.get_state().device))
        if device.type == "cuda" and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)
        name, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, tensors["rng.numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        py = state["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        int(state["step"]), list(state["history"]), float(state["elapsed_s"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: checkpoint state is damaged ({type(exc).__name__}: {str(exc)[:120]}); "
                         "it cannot be resumed.") from None
    return state


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON state of a checkpoint file (safetensors only, never a pickle),
    checked for completeness and format version; InputError naming the file otherwise."""
    from invdiff.prior.store import weights_metadata

    tensors = load_weights(path)
    meta = weights_metadata(path)
    if "invdiff_checkpoint" not in meta:
        raise InputError(f"{path}: is not an invdiff training checkpoint.")
    try:
        state = json.loads(meta["invdiff_checkpoint"])
    except ValueError:
        raise InputError(f"{path}: the checkpoint's state (safetensors metadata) is not valid JSON.") from None
    if not isinstance(state, dict):
        raise InputError(f"{path}: the checkpoint's state is not a JSON object.")
    version = state.get("format_version", 1)  # checkpoints written before versions were recorded are version 1
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{path}: the checkpoint's format_version {version!r} is not an integer.")
    if version < 1:
        raise InputError(f"{path}: checkpoint format_version {version} is older than the oldest this invdiff "
                         "resumes (1); start a new run.")
    if version > CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format_version {version} is newer than this invdiff resumes "
                         f"({CHECKPOINT_FORMAT}); upgrade invdiff.")
    missing = [k for k in ("step", "history", "elapsed_s", "settings", "optimizer_param_groups", "numpy_rng", "python_rng")
               if k not in state]
    missing += [k for k in ("rng.torch_cpu", "rng.data", "rng.noise", "rng.numpy_keys") if k not in tensors]
    if missing:
        raise InputError(f"{path}: checkpoint is incomplete (no {', '.join(missing)}); it cannot be resumed.")
    return tensors, state


def _write_log(out_dir: Path, history: list[dict]) -> None:
    atomic_write_text(out_dir / LOG_JSON, json.dumps(history, indent=1) + "\n")
    keys = ["step", "train_loss", "val_loss", "val_data_loss", "lr", "images_per_s", "elapsed_s"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(out_dir / LOG_CSV, buf.getvalue())


# --- the loop ------------------------------------------------------------------------------

def train(s: TrainSettings, train_set: ImageSet, out_dir: Path, *, norm: Normalisation, data_summary: dict,
          val_set: ImageSet | None = None, val_data: ImageSet | None = None, device: torch.device | None = None,
          resume: bool = False, extra_config: dict | None = None, init_from: Path | None = None,
          on_step: Callable[[StepReport], None] | None = None) -> dict:
    """Train a prior into ``out_dir``; returns a summary dict (steps, losses, files).

    ``init_from``: a prior directory whose EMA weights start the run (fine-tuning a prior on new
    data; the architecture must match; the optimiser and EMA start fresh). Ignored on resume,
    where the checkpoint holds the weights. Under torchrun (WORLD_SIZE > 1) every rank calls
    this with the same arguments.
    """
    out_dir = Path(out_dir)
    device = device or torch.device("cpu")
    info, device = ddp.init_distributed(device)
    ddp.check_batch(s.batch_size, info)
    ckpt = out_dir / CHECKPOINT
    if resume and not ckpt.is_file():
        raise InputError(f"{ckpt}: no checkpoint to resume from.")
    if resume:
        _check_resume(out_dir, s)

    torch.manual_seed(s.seed)
    np.random.seed(s.seed % 2**32)
    random.seed(s.seed)
    use_amp = s.amp and (device.type == "cuda" or s.amp_cpu)
    model = build_model(s).to(device)
    if use_amp and device.type == "cpu":  # oneDNN's bfloat16 convolutions are fast channels-last only
        model.to(memory_format=torch.channels_last)
    if init_from is not None and not resume:
        init_weights(model, Path(init_from))
    ema = EMA(model, power=s.ema_power, max_decay=s.ema_max_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=s.weight_decay)
    data_gen = torch.Generator(device="cpu").manual_seed(s.seed)
    noise_gen = torch.Generator(device=device).manual_seed(s.seed + 1)
    loss_fn = make_loss(s.loss, s.noise())
    augmenter = Augmenter(s.augment) if s.augment is not None else None
    train_set = train_set.to(device)

    start, history, elapsed0 = 0, [], 0.0
    if resume:
        state = load_checkpoint(out_dir, model, ema, optimizer, data_gen, noise_gen, device)
        start, history, elapsed0 = int(state["step"]), list(state["history"]), float(state["elapsed_s"])
    explicit = s.energy
    net = ddp.wrap_model(model, info, device, explicit_allreduce=explicit)
    shard = info.shard(s.batch_size)
    extra = dict(extra_config or {})
    extra["parameters"] = count_parameters(model)

    def write_outputs(step: int, elapsed: float) -> None:
        config = prior_config(s, norm, data_summary, extra)
        config["training"]["steps_done"] = step
        save_prior(out_dir, config, model.state_dict(), ema.model.state_dict())
        save_checkpoint(out_dir, model, ema, optimizer,
                        {"step": step, "history": history, "elapsed_s": elapsed, "settings": s.to_dict(),
                         "train_slices": len(train_set)},
                        data_gen, noise_gen, device)
        _write_log(out_dir, history)

    divergence = _Divergence(device)
    t_start = time.perf_counter()
    t_window, loss_acc, n_acc = time.perf_counter(), torch.zeros((), device=device), 0
    val_every = s.val_every or s.checkpoint_every
    model.train()
    for step in range(start, s.steps):
        idx = torch.randint(len(train_set), (s.batch_size,), generator=data_gen)
        crop_u = torch.rand(s.batch_size, 2, generator=data_gen)
        x0 = train_set.batch(idx[shard], s.image_size, crop_u[shard])
        shape = (s.batch_size, *x0.shape[1:])
        if augmenter is not None:
            params = augmenter.draw(shape, noise_gen, device)
            x0 = augmenter.apply(x0, {k: v[shard] for k, v in params.items()})
        draws = {k: v[shard] for k, v in loss_fn.draw(shape, noise_gen, device).items()}
        labels = None
        for group in optimizer.param_groups:
            group["lr"] = _lr(s, step)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn.compute(net, x0, labels, draws)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if explicit:
            ddp.average_gradients(model, info)
        if s.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        ema.update(model, step)
        loss_acc += loss.detach().float()
        n_acc += 1
        done = step + 1
        divergence.track(loss, done)

        writing = done % s.checkpoint_every == 0 or done == s.steps
        if done % s.log_every == 0 or done % val_every == 0 or writing:
            divergence.check(done, info, [model, ema.model] if writing else [])
            now = time.perf_counter()
            ips = n_acc * s.batch_size / max(now - t_window, 1e-9)
            row = {"step": done, "train_loss": float(loss_acc) / max(n_acc, 1), "lr": _lr(s, step),
                   "images_per_s": round(ips, 2), "elapsed_s": round(elapsed0 + now - t_start, 2)}
            if info.is_main and (done % val_every == 0 or done == s.steps):
                ema.model.eval()
                if val_set is not None:
                    row["val_loss"] = validation_loss(ema.model, val_set, s, device)
                if val_data is not None:
                    row["val_data_loss"] = validation_loss(ema.model, val_data, s, device)
            history.append(row)
            if on_step is not None and info.is_main:
                on_step(StepReport(done, row["train_loss"], ips, row["lr"]))
            t_window, loss_acc, n_acc = time.perf_counter(), torch.zeros((), device=device), 0
        if info.is_main and writing:
            write_outputs(done, elapsed0 + time.perf_counter() - t_start)
        if done % s.checkpoint_every == 0:
            ddp.barrier(info)

    if start >= s.steps and info.is_main:
        write_outputs(start, elapsed0)
    summary = {"out": str(out_dir), "steps": s.steps, "resumed_from": start if resume else None,
               "parameters": count_parameters(model), "history_tail": history[-3:],
               "final_train_loss": history[-1]["train_loss"] if history else math.nan,
               "weights_digest": weights_digest(model),
               "wall_s": round(time.perf_counter() - t_start, 2)}
    ddp.cleanup(info)
    return summary


class _Divergence:
    """The first step whose training loss was not finite, kept on the device so that no step
    waits for the GPU; `check` reads it (with the weights' finiteness) on every rank at once
    and raises the same InputError on all of them."""

    NEVER = torch.iinfo(torch.int64).max

    def __init__(self, device: torch.device):
        self.first = torch.full((), self.NEVER, dtype=torch.int64, device=device)
        self.nan = torch.zeros((), dtype=torch.int64, device=device)

    def track(self, loss: torch.Tensor, step: int) -> None:
        """Note ``step`` (1-based) if it is the first whose ``loss`` is NaN or Inf."""
        value = loss.detach().float()
        new = (self.first == self.NEVER) & ~torch.isfinite(value)
        self.first = torch.where(new, step, self.first)
        self.nan = torch.where(new, torch.isnan(value).long(), self.nan)

    def check(self, step: int, info: ddp.DistInfo, modules: list[torch.nn.Module]) -> None:
        """InputError on every rank if any rank saw a non-finite loss, or if ``modules`` (the
        weights about to be written; none between checkpoints) hold NaN or Inf values."""
        tensors = [t for m in modules for t in m.state_dict().values() if t.is_floating_point()]
        bad_weights = (~torch.stack([torch.isfinite(t).all() for t in tensors]).all()).long() if tensors else 0
        status = torch.stack([self.first, -self.nan, -torch.as_tensor(bad_weights, device=self.first.device)])
        first, nan, weights = ddp.all_min(status, info).tolist()
        if first == self.NEVER and not weights:
            return
        ddp.cleanup(info)
        if first != self.NEVER:
            raise InputError(f"training diverged at step {first} (loss is {'NaN' if nan else 'Inf'}); "
                             "lower --lr or check the data.")
        raise InputError(f"training diverged at step {step} (the weights hold NaN or Inf values); "
                         "lower --lr or check the data.")


def init_weights(model: Precond, prior_dir: Path) -> None:
    """Load the EMA weights of the prior in ``prior_dir`` into ``model`` (InputError if they do
    not fit this run's network)."""
    from invdiff.prior.store import EMA_NAME, read_config

    read_config(prior_dir)
    path = prior_dir / EMA_NAME
    state = load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise InputError(f"{path}: --init weights do not fit the network of this run "
                         "(use the same --channels-base, --channel-mults, --res-blocks, --attention and --channels).") from None


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in order: equal digests = bitwise-equal replicas."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _check_resume(out_dir: Path, s: TrainSettings) -> None:
    """The settings of a resumed run must match the checkpoint's (except RESUMABLE ones)."""
    path = out_dir / CHECKPOINT_JSON
    try:
        saved = json.loads(path.read_text())["settings"]
    except (OSError, json.JSONDecodeError, KeyError):
        return  # the safetensors metadata is authoritative; load_checkpoint checks it
    now = json.loads(json.dumps(s.to_dict()))
    for key, value in saved.items():
        if key not in RESUMABLE and now.get(key) != value:
            if key == "sigma_data":  # measured from the images with --sigma-data auto, the default
                raise InputError(f"--resume: the checkpoint in {out_dir} was trained with sigma_data {value!r} but "
                                 f"this run's is {now.get(key)!r}, measured from other training images unless "
                                 f"--sigma-data was given; resume on the images the checkpoint was trained on.")
            raise InputError(f"--resume: setting '{key}' is {now.get(key)!r} but the checkpoint in {out_dir} "
                             f"was trained with {value!r}.")
