"""invdiff train: learn a score-based prior D(x, sigma) from the user's images."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (DeviceOpt, ChannelOpt, GreyOpt, JsonOpt, QuietOpt, SeedOpt, SeriesOpt, VolumeOpt, check_output_folder, emit_json,
                                refuse_clobbering, resolve_device, show_progress, warn_slow_bf16)
from invdiff.errors import InputError
from invdiff.notices import warn

EXAMPLES = """
Examples:

  invdiff train brain_slices/ --out priors/brain128 --image-size 128 --steps 20000

  invdiff train t1.nii.gz --axis 2 --out priors/t1 --image-size 64 --val-data other_subject.nii.gz

  invdiff train ct/*.dcm --normalise window --window -1000,1000 --out priors/ct --augment --augment-option p_invert=0

  invdiff train kspace_images.npy --channels 2 --out priors/mri_complex        # complex MRI as real/imag

  invdiff train data.npy --out priors/p --steps 40000 --resume                 # continue a killed run

  invdiff train my_scanner/ --out priors/mine --init data/priors/brain128 --steps 2000   # fine-tune a prior

  torchrun --nproc_per_node 4 -m invdiff train data/ --out priors/p --batch-size 64
"""


def _ints(text: str, option: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{option} '{text}' is not a comma-separated list of integers.") from None


def _window(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--window '{text}' is not LO,HI (e.g. -1000,1000).") from None
    return lo, hi


def _positive(value: float, option: str) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"{option} must be positive and finite, got {value}.")


def _warn_complex_magnitude(stacks: list, channels: int) -> None:
    """One stderr line when complex images are trained as one channel: on their magnitude."""
    complex_stack = next((st for st in stacks if st.data.dtype.kind == "c"), None)
    if channels == 1 and complex_stack is not None:
        warn(f"{complex_stack.source}: the images are complex and --channels 1 trains on their magnitude |x| "
             "(a magnitude prior); give --channels 2 for a complex prior (real and imaginary parts).")


def _check_out_folder(out: Path) -> None:
    """InputError if ``out`` holds files of the names a prior is written to (config.json, the
    weights, the logs) that are not an invdiff prior's or training run's: they would be overwritten."""
    from invdiff.prior.store import CONFIG_NAME, EMA_NAME, RAW_NAME, read_config
    from invdiff.prior.train import CHECKPOINT, CHECKPOINT_JSON, LOG_CSV, LOG_JSON

    if not out.is_dir() or (out / CHECKPOINT).exists():
        return
    clash = [n for n in (CONFIG_NAME, RAW_NAME, EMA_NAME, LOG_JSON, LOG_CSV, CHECKPOINT_JSON) if (out / n).exists()]
    if not clash:
        return
    try:
        read_config(out)  # a prior's own folder: retraining into it is what the user asked for
    except InputError:
        raise InputError(f"{out}: holds {clash[0]}, which is not from an invdiff prior and training would overwrite it; "
                         f"choose a new or empty folder for --out.") from None


@app.command(epilog=EXAMPLES)
def train(
    ctx: typer.Context,
    data: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG/TIFF/NPY/NPZ/HDF5/DICOM/NIfTI).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Prior directory to write (config.json + safetensors weights).")],
    image_size: Annotated[int, typer.Option("--image-size", help="Training crop size S (S x S pixels).")] = 128,
    channels: Annotated[int, typer.Option("--channels", help="1: real images; complex images are trained on their "
                                          "magnitude |x| (a magnitude prior, with a warning). 2: complex MRI as "
                                          "real/imag (a prior for complex reconstructions).")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Global batch size (split over torchrun processes).")] = 16,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps in total (also when resuming).")] = 10000,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate (linear warm-up over --lr-warmup steps).")] = 2e-4,
    lr_warmup: Annotated[int, typer.Option("--lr-warmup", help="Warm-up steps of the learning rate.")] = 200,
    ema: Annotated[float, typer.Option("--ema", help="Largest EMA decay (warm-up schedule of k-diffusion).")] = 0.9999,
    channels_base: Annotated[int, typer.Option("--channels-base", help="U-Net channels at full resolution.")] = 32,
    channel_mults: Annotated[str, typer.Option("--channel-mults", help="Channel multiplier per level, comma-separated.")] = "1,2,2,2",
    res_blocks: Annotated[int, typer.Option("--res-blocks", help="Residual blocks per level.")] = 1,
    attention: Annotated[str, typer.Option("--attention", help="Levels with self-attention (0 = full resolution), comma-separated; empty = fully convolutional.")] = "",
    dropout: Annotated[float, typer.Option("--dropout", help="Dropout in residual blocks.")] = 0.0,
    sde: Annotated[str, typer.Option("--sde", help="Noise levels and preconditioning: edm, ve or vp.")] = "edm",
    loss: Annotated[str, typer.Option("--loss", help="dsm (denoising) or ssm (sliced score matching).")] = "dsm",
    energy: Annotated[bool, typer.Option("--energy/--no-energy", help="Energy parametrisation: score = -grad E (conservative).")] = False,
    sigma_data: Annotated[str, typer.Option("--sigma-data", help="Std of the normalised data, or 'auto' to measure it.")] = "auto",
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random flips, rotations, elastic, intensity curves, blur, noise.")] = False,
    augment_option: Annotated[Optional[list[str]], typer.Option(
        "--augment-option", help="KEY=VALUE override of one augmentation setting (implies --augment; repeatable), "
        "e.g. p_invert=0.2 or p_elastic=0; the keys are those of config.json's 'augmentation'.")] = None,
    fit: Annotated[str, typer.Option("--fit", help="crop (random crops), resize (shorter side to S, then crop) or exact.")] = "crop",
    normalise: Annotated[str, typer.Option("--normalise", help="percentile (per slice, 99.5th of |x| -> 1) or window (fixed, e.g. CT HU).")] = "percentile",
    window: Annotated[Optional[str], typer.Option("--window", help="LO,HI for --normalise window, e.g. -1000,1000 "
                                                  "(only with --normalise window).")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Fraction of slices (last of each stack) held out for validation.")] = 0.1,
    val_data: Annotated[Optional[list[Path]], typer.Option("--val-data", help="Separate validation images (e.g. other subjects); repeatable.")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="HDF5 dataset key of the images.")] = None,
    axis: Annotated[Optional[int], typer.Option("--axis", help="Slice axis of volumes (NIfTI/HDF5).")] = None,
    volume: VolumeOpt = None,
    series: SeriesOpt = None,
    grey: GreyOpt = False,
    channel: ChannelOpt = None,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints (and prior files).")] = 500,
    log_every: Annotated[int, typer.Option("--log-every", help="Steps between log rows.")] = 50,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.safetensors exactly.")] = False,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from this prior's weights (fine-tune it on DATA; same architecture).")] = None,
    bf16: Annotated[Optional[bool], typer.Option(
        "--bf16/--no-bf16", help="bfloat16 autocast for the network's forward and backward passes (weights, optimiser "
        "and loss stay float32). Default: on for CUDA, off on the CPU; --bf16 on a CPU with AMX or AVX512-BF16 trains "
        "about 2.4x faster (BENCHMARKS.md).")] = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved settings and the data summary; train nothing.")] = False,
) -> None:
    """Train a diffusion prior (U-Net + EDM preconditioning + score matching) on your images."""
    from invdiff.prior.augment import AugmentConfig
    from invdiff.prior.data import Normalisation, build_sets, data_sigma, read_stacks, units_from_data
    from invdiff.prior.sde import default_sigma_range
    from invdiff.prior.train import CHECKPOINT, TrainSettings, train as run_training
    from invdiff.prior.unet import UNetConfig

    for value, option in [(image_size, "--image-size"), (batch_size, "--batch-size"), (steps, "--steps"), (lr, "--lr"),
                          (channels_base, "--channels-base"), (res_blocks, "--res-blocks"),
                          (checkpoint_every, "--checkpoint-every"), (log_every, "--log-every")]:
        _positive(value, option)
    if channels not in (1, 2):
        raise InputError(f"--channels must be 1 or 2, got {channels}.")
    if not 0 <= ema < 1:
        raise InputError(f"--ema must lie in [0, 1), got {ema}.")
    if not 0 <= dropout < 1:
        raise InputError(f"--dropout must lie in [0, 1), got {dropout}.")
    mults = _ints(channel_mults, "--channel-mults")
    if not mults or min(mults) < 1:
        raise InputError(f"--channel-mults '{channel_mults}' needs at least one positive integer.")
    if image_size % 2 ** (len(mults) - 1):
        raise InputError(f"--image-size {image_size} must be divisible by {2 ** (len(mults) - 1)} "
                         f"for {len(mults)} U-Net levels.")
    attn = _ints(attention, "--attention")
    if any(a < 0 or a >= len(mults) for a in attn):
        raise InputError(f"--attention levels must lie in 0..{len(mults) - 1}.")
    if sde not in ("edm", "ve", "vp"):
        raise InputError(f"--sde '{sde}' is not one of edm, ve, vp.")
    if window is not None and normalise != "window":
        raise InputError(f"--window needs --normalise window (--normalise {normalise} scales each slice itself).")
    augment_config = AugmentConfig.from_overrides(augment_option or []) if augment or augment_option else None
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out must be a directory, but a file is there.")
    if init is not None:
        refuse_clobbering([], [out], read_dirs=[init])
    check_output_folder(out)  # before training, not when the prior is saved at its end
    _check_out_folder(out)
    if out.is_dir() and (out / CHECKPOINT).exists() and not resume and not dry_run:
        raise InputError(f"{out}: holds a training checkpoint; add --resume to continue it or choose another --out.")
    if init is not None and not (init / "config.json").is_file():
        raise InputError(f"{init}: --init needs a prior directory with a config.json.")
    if init is not None:
        from invdiff.prior.store import load_prior

        load_prior(init)  # config, weights and checksum must all be sound (InputError naming the file)
    for p in data:
        if not p.exists():
            raise InputError(f"{p}: training data path does not exist.")
        if p.is_dir() and not any(p.iterdir()):
            raise InputError(f"{p}: training data folder is empty.")

    norm = Normalisation(kind=normalise, window=_window(window))
    torch_device = resolve_device(device)
    if bf16:
        warn_slow_bf16(torch_device, quiet or dry_run)
    stacks = read_stacks(list(data), key=key, axis=axis, volume=volume, series=series, allow_rgb=grey, channel=channel)
    norm = units_from_data(stacks, norm)
    train_set, val_set = build_sets(stacks, image_size, channels, fit, norm, val_fraction)
    val_stacks = read_stacks(list(val_data), key=key, axis=axis, volume=volume, series=series, allow_rgb=grey, channel=channel) if val_data else []
    _warn_complex_magnitude(stacks + val_stacks, channels)
    extra_val = None
    if val_data:
        if units_from_data(val_stacks, norm).units != norm.units:
            raise InputError(f"{val_stacks[0].source}: --val-data must be in the same units as the training data "
                             f"({norm.units}) for --normalise window.")
        extra_val, _ = build_sets(val_stacks, image_size, channels, fit, norm, 0.0)
    if sigma_data == "auto":
        sd = data_sigma(train_set, image_size)
    else:
        try:
            sd = float(sigma_data)
        except ValueError:
            raise InputError(f"--sigma-data '{sigma_data}' is not a number or 'auto'.") from None
        _positive(sd, "--sigma-data")
    sigma_min, sigma_max = default_sigma_range(sde)
    settings = TrainSettings(
        image_size=image_size, channels=channels,
        unet=UNetConfig(channels=channels, base_channels=channels_base, channel_mults=mults, num_res_blocks=res_blocks,
                        attention_levels=attn, dropout=dropout),
        sde=sde, loss=loss, energy=energy, sigma_data=sd, sigma_min=sigma_min, sigma_max=sigma_max,
        batch_size=batch_size, steps=steps, lr=lr, lr_warmup=lr_warmup, ema_max_decay=ema,
        augment=augment_config, checkpoint_every=checkpoint_every, log_every=log_every, seed=seed,
        amp=bf16 is not False, amp_cpu=bf16 is True,
    )
    if loss not in ("dsm", "ssm"):
        raise InputError(f"--loss '{loss}' is not one of dsm, ssm.")
    summary = {"data": train_set.summary(), "validation_slices": len(val_set) if val_set is not None else 0,
               "val_data": extra_val.summary() if extra_val is not None else None}
    summary["data"]["fit"] = fit
    summary["data"]["validation_slices"] = summary["validation_slices"]
    if dry_run:
        resolved = {"out": str(out), "device": str(torch_device), "settings": settings.to_dict(),
                    "normalisation": norm.to_dict(), **summary}
        if json_out:
            emit_json(resolved)
        else:
            print(json.dumps(resolved, indent=2))
        return

    extra = {"command": _command_line(ctx), "val_data": summary["val_data"]}
    if init is not None:
        from invdiff.prior.store import EMA_NAME, sha256_file

        extra["initialised_from"] = {"prior": str(init), "weights_ema_sha256": sha256_file(init / EMA_NAME)}
    progress = show_progress(quiet, json_out)
    with _Reporter(progress, steps) as report:
        result = run_training(settings, train_set, out, norm=norm, data_summary=summary["data"], val_set=val_set,
                              val_data=extra_val, device=torch_device, resume=resume, extra_config=extra,
                              init_from=init, on_step=report)
    if json_out:
        emit_json(result)
    elif not quiet:
        print(f"trained {result['steps']} steps -> {out} (final train loss {result['final_train_loss']:.4f}, "
              f"{result['wall_s']:.0f} s)")


def _command_line(ctx: typer.Context) -> str:
    """The command as the user gave it (options given on the command line only, resolved names)."""
    words = ["invdiff", "train"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            words += [str(v) for v in value]
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                words += [param.opts[0], str(v)]
    return shlex.join(words)


class _Reporter:
    """A rich progress bar with loss and images/s (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.enabled = enabled
        self.total = total
        self.progress = None
        self.last = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, loss=float("nan"), ips=0.0)
        return self

    def __call__(self, report) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=report.step, loss=report.loss, ips=report.images_per_s)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False
