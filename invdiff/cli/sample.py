"""invdiff sample: unconditional (or class-guided) samples from a prior, written to HDF5."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from invdiff.cli.app import app
from invdiff.cli.common import (Bf16Opt, DeviceOpt, JsonOpt, QuietOpt, SeedOpt, check_outputs, check_suffix, emit_json,
                                make_generator, progress_bar, refuse_clobbering, resolve_device, show_progress,
                                warn_slow_bf16)
from invdiff.errors import InputError

EXAMPLES = """
Examples:

  invdiff sample -n 16 --out samples.h5 --png grid.png                 # default prior, default sampler

  invdiff sample --prior priors/brain128 --sampler heun --steps 32 --out s.h5

  invdiff sample --prior priors/digits --class-label 3 --guidance 2.0 --out threes.h5
"""

DEFAULT_STEPS = {"em": 200, "pc": 200, "heun": 32, "ode": 2, "ddim": 50}
"""Steps per sampler when --steps is not given (ode: adaptive, steps unused)."""


def _schedule(sampler: str, steps: int, sigma_min: float, sigma_max: float):
    """Geometric sigmas for the SDE samplers of Song et al. 2021 (em, pc); EDM's schedule otherwise."""
    from invdiff.sampling.schedules import geometric_sigmas, karras_sigmas

    if sampler in ("em", "pc"):
        return geometric_sigmas(steps, sigma_min, sigma_max)
    return karras_sigmas(steps, sigma_min, sigma_max)


def _sample_scale(prior) -> float:
    """Image units per normalised unit for new samples: hi - lo for a window normalisation;
    1 for per-slice percentile normalisation (samples come out in units of that percentile)."""
    norm = prior.normalisation
    return float(norm.window[1] - norm.window[0]) if norm.kind == "window" else 1.0


def _check_fits(n: int, batch_size: int, channels: int, size: int, out: Path, device) -> None:
    """InputError for a run that cannot fit, before anything is allocated: one batch must fit in
    the memory it runs in (IMAGE_COPIES float32 copies of each image, as reconstruct's pre-check
    assumes), the n samples in this machine's memory (they are gathered before writing) and the
    HDF5 file in the free space of --out's folder."""
    import shutil

    import torch

    from invdiff.memory import physical_memory
    from invdiff.pipeline.reconstruct import IMAGE_COPIES

    gib = 2**30
    memory = physical_memory()
    image = channels * size * size * 4  # float32 bytes of one sample, as the sampler holds it
    b = min(batch_size, n)
    here, working = f"this machine's {memory / gib:.0f} GiB" if memory else "", memory
    if device.type == "cuda":
        working = torch.cuda.get_device_properties(device).total_memory
        here = f"this GPU's {working / gib:.0f} GiB"
    if working and image * IMAGE_COPIES > working:
        raise InputError(f"--image-size {size}: a {size}x{size} sample is too large for {here} of memory.")
    if working and b * image * IMAGE_COPIES > working:
        raise InputError(f"--batch-size {b}: a batch of {b} samples of {size}x{size} is too large for {here} of "
                         "memory; lower --batch-size.")
    total = n * image
    if memory and total > memory:
        raise InputError(f"-n {n}: {n} samples of {size}x{size} take {total / gib:.0f} GiB, more than this "
                         f"machine's {memory / gib:.0f} GiB of memory; draw fewer per run (each with its own --seed).")
    folder = Path(out).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if total > free:
        raise InputError(f"{out}: {n} samples of {size}x{size} take {total / gib:.1f} GiB, more than the "
                         f"{free / gib:.1f} GiB free in {folder}.")


def write_samples(path: Path, samples, provenance: dict) -> None:
    """HDF5 with dataset ``samples`` (n, H, W) (float32; complex64 for 2-channel priors) and the
    root attribute ``invdiff_provenance`` (JSON), written atomically."""
    from invdiff.io.atomic import atomic_path
    from invdiff.io.hdf5 import h5_writing

    with atomic_path(path) as tmp:
        with h5_writing(tmp) as f:  # a full disk: one sentence, and no h5py file id left broken
            f.create_dataset("samples", data=samples)
            f.attrs["invdiff_provenance"] = json.dumps(provenance, default=str)


def _write(out: Path, png: Optional[Path], data, provenance: dict) -> None:
    """The samples and their PNG grid, all or none: both go to temporary files that are renamed
    into place only when both are written (the HDF5 file last)."""
    from invdiff.io.atomic import atomic_paths

    with atomic_paths([*([png] if png is not None else []), out]) as temps:
        if png is not None:
            from invdiff.io.png import save_grid

            save_grid(temps[0], abs(data))
        write_samples(temps[-1], data, provenance)


@app.command(epilog=EXAMPLES)
def sample(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output HDF5 file (dataset 'samples', (n, H, W)).")],
    prior_dir: Annotated[Optional[Path], typer.Option("--prior", help="Prior directory (default: the shipped prior).")] = None,
    n: Annotated[int, typer.Option("-n", "--num-samples", help="Number of samples.")] = 16,
    sampler: Annotated[str, typer.Option("--sampler", help="pc, em, heun, ode or ddim.")] = "heun",
    steps: Annotated[Optional[int], typer.Option("--steps", help="Noise levels (default per sampler: "
                                                 "em 200, pc 200, heun 32, ddim 50; ode is adaptive).")] = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Side in pixels (default: the prior's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per denoiser call.")] = 16,
    png: Annotated[Optional[Path], typer.Option("--png", help="Also write a PNG grid of the samples.")] = None,
    class_label: Annotated[Optional[int], typer.Option("--class-label", help="Class for a class-conditional prior.")] = None,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance weight w (0: none).")] = 0.0,
    bf16: Bf16Opt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw samples from a prior with a reverse-SDE or probability-flow sampler."""
    import torch

    from invdiff.prior.store import default_prior_path, load_prior
    from invdiff.sampling.samplers import SAMPLERS, initial_noise

    if sampler not in SAMPLERS:
        raise InputError(f"--sampler '{sampler}' is not one of {', '.join(SAMPLERS)}.")
    if n < 1 or batch_size < 1:
        raise InputError("-n and --batch-size must be at least 1.")
    if sampler == "ode" and steps is not None:
        raise InputError("--steps sets the noise levels of the em, pc, heun and ddim samplers; --sampler ode "
                         "chooses its own steps (adaptive RK45), so leave --steps out.")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}.")
    if class_label is None and guidance != 0.0:
        raise InputError("--guidance needs --class-label.")
    prior_path = default_prior_path() if prior_dir is None else prior_dir
    outputs = [out, *([png] if png is not None else [])]
    refuse_clobbering([], outputs, read_dirs=[prior_path])
    check_suffix(out, "--out", "hdf5")
    if png is not None:
        check_suffix(png, "--png", "png")
    check_outputs(outputs)
    dev = resolve_device(device)
    prior = load_prior(prior_path, dev)
    prior.bf16 = bf16
    if bf16:
        warn_slow_bf16(dev, quiet)
    size = prior.image_size if image_size is None else image_size
    if size < 8:
        raise InputError(f"--image-size must be at least 8 pixels, got {size}.")
    if prior.image_shape[1] is not None and size != prior.image_size:
        raise InputError(f"--image-size {size}: this prior uses attention and only samples {prior.image_size} pixels.")
    _check_fits(n, batch_size, prior.channels, size, out, dev)
    denoiser = prior if class_label is None else prior.guided(guidance, class_label)
    sigmas = _schedule(sampler, steps, prior.sigma_min, prior.sigma_max)
    generator = make_generator(seed)

    start = time.perf_counter()
    chunks, nfe = [], 0
    with progress_bar(show_progress(quiet, json_out), f"sampling ({sampler})",
                      None if sampler == "ode" else n * (len(sigmas) - 1)) as advance:
        for first in range(0, n, batch_size):
            b = min(batch_size, n - first)
            x = initial_noise((b, prior.channels, size, size), prior.sigma_max, generator=generator, device=dev)
            infos: list[int] = []

            def callback(info: dict, b: int = b) -> None:
                infos.append(info["nfe"])
                advance(b)

            with torch.no_grad():
                x = SAMPLERS[sampler](denoiser, x, sigmas, generator=generator, callback=callback)
            if not torch.isfinite(x).all():
                raise InputError(f"{prior_path}: the sampler produced NaN/Inf (try more --steps or another --sampler).")
            nfe += infos[-1] if infos else 0
            chunks.append(prior.denormalise(x, x.new_full((b,), _sample_scale(prior))).cpu())
    wall = time.perf_counter() - start
    images = torch.cat(chunks)
    data = torch.complex(images[:, 0], images[:, 1]).numpy() if prior.channels == 2 else images[:, 0].numpy()

    import invdiff

    provenance = {
        "version": invdiff.__version__, "command": shlex.join(["invdiff", *sys.argv[1:]]), "sampler": sampler,
        "steps": steps, "sigmas": [float(s) for s in sigmas], "nfe_per_sample": nfe // max(1, -(-n // batch_size)),
        "seed": seed, "prior": str(prior_path), "prior_checksum": prior.checksum, "class_label": class_label,
        "guidance": guidance, "wall_time_s": round(wall, 3), "device": str(dev), "network_dtype": prior.network_dtype,
    }
    _write(out, png, data, provenance)
    result = {"out": str(out), "png": str(png) if png else None, "n": n, "shape": list(data.shape),
              "sampler": sampler, "steps": steps, "nfe_per_sample": provenance["nfe_per_sample"],
              "wall_time_s": provenance["wall_time_s"], "device": str(dev), "seed": seed}
    if json_out:
        emit_json(result)
    elif not quiet:
        typer.echo(f"wrote {n} samples {tuple(data.shape[1:])} to {out} ({sampler}, {steps} steps, "
                   f"{provenance['nfe_per_sample']} evaluations per sample, {wall:.1f} s on {dev})")
