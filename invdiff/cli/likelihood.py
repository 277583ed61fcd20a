"""invdiff likelihood: bits/dim of images under a prior, by the probability-flow ODE."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from invdiff.cli.app import app
from invdiff.cli.common import (DeviceOpt, ChannelOpt, GreyOpt, JsonOpt, QuietOpt, SeedOpt, VolumeOpt, emit_json, make_generator, progress_bar,
                                resolve_device, show_progress)
from invdiff.errors import InputError, naming

EXAMPLES = """
Examples:

  invdiff likelihood slices/*.png                                  # default prior

  invdiff likelihood --prior priors/brain128 test/ --hutchinson 4 --json
"""


def quantisation(pixels: np.ndarray, normalised):
    """The 8-bit grid an image is scored on and its map to the prior's units, z = a y + b with
    y = (k + u) / 256 the dequantised pixel in [0, 1) (see invdiff/sampling/likelihood.py).

    - 8-bit images (integer values 0..255, e.g. PNG): k = the pixel value, and
      z = (256 y - offset) / scale (the prior's normalisation z = (v - offset) / scale).
    - anything else: k = round(255 z) clipped to 0..255 over the prior's normalised [0, 1], and
      z = 256 y / 255; the result is the bits/dim of that 8-bit quantisation.
    Returns (k / 255 ``(N, 1, H, W)``, a ``(N,)``, b ``(N,)``) as torch tensors.
    """
    import torch

    x, scale, offset = normalised
    raw = np.asarray(pixels)
    if not np.iscomplexobj(raw) and raw.min() >= 0 and raw.max() <= 255 and np.all(raw == np.round(raw)):
        k = torch.as_tensor(raw, dtype=torch.float32, device=x.device)[:, None]
        return k / 255, 256 / scale, -offset / scale
    k = torch.clamp(torch.round(255 * x), 0, 255)
    ones = torch.ones_like(scale)
    return k / 255, ones * (256 / 255), 0 * ones


@app.command(epilog=EXAMPLES)
def likelihood(
    files: Annotated[list[Path], typer.Argument(help="Image files or folders (PNG, TIFF, NPY, HDF5, DICOM, NIfTI).")],
    prior_dir: Annotated[Optional[Path], typer.Option("--prior", help="Prior directory (default: the shipped prior).")] = None,
    hutchinson: Annotated[int, typer.Option("--hutchinson", help="Probes per image for the trace estimator "
                                            "(>= 2 gives a per-image standard error).")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Slices per ODE solve.")] = 8,
    rtol: Annotated[float, typer.Option("--rtol", help="ODE relative tolerance.")] = 1e-5,
    atol: Annotated[float, typer.Option("--atol", help="ODE absolute tolerance.")] = 1e-5,
    key: Annotated[Optional[str], typer.Option("--key", help="Dataset/array name inside HDF5/NPZ inputs.")] = None,
    volume: VolumeOpt = None,
    grey: GreyOpt = False,
    channel: ChannelOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Bits per dimension of 8-bit images (uniform dequantisation) under a prior: per image, and the
    mean with its standard error across images."""
    import torch

    from invdiff.io.images import read_image_paths
    from invdiff.prior.store import default_prior_path, load_prior
    from invdiff.sampling.likelihood import bits_per_dim

    if hutchinson < 1:
        raise InputError(f"--hutchinson must be at least 1, got {hutchinson}.")
    if batch_size < 1:
        raise InputError("--batch-size must be at least 1.")
    for value, option in ((rtol, "--rtol"), (atol, "--atol")):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{option} must be a finite number > 0, got {value:g}.")
    dev = resolve_device(device)
    prior_path = default_prior_path() if prior_dir is None else prior_dir
    prior = load_prior(prior_path, dev)
    if prior.channels != 1:
        raise InputError(f"{prior_path}: bits/dim is defined here for 1-channel (8-bit) priors only.")
    failures: list[tuple[Path, str]] = []  # a batch run skips unreadable files and reports them
    stacks = read_image_paths(files, key=key, volume=volume, allow_rgb=grey, channel=channel, failures=failures)
    for stack in stacks:
        if np.iscomplexobj(stack.data):
            failures.append((stack.source, f"{stack.source}: complex images have no 8-bit bits/dim; give magnitude images."))
    stacks = [s for s in stacks if not np.iscomplexobj(s.data)]
    if not stacks:
        if len(failures) == 1:
            raise InputError(failures[0][1])
        for _, message in failures:
            print(f"invdiff: error: {message}", file=sys.stderr)
        raise InputError(f"none of the {len(failures)} input(s) could be read.")
    for _, message in failures:
        print(f"invdiff: error: {message}", file=sys.stderr)
    generator = make_generator(seed)
    rows: list[dict] = []
    total = sum(s.data.shape[0] for s in stacks)
    with progress_bar(show_progress(quiet, json_out), "likelihood", total) as advance:
        for stack in stacks:
            for first in range(0, stack.data.shape[0], batch_size):
                pixels = stack.data[first:first + batch_size]
                x, scale = prior.normalise(pixels)
                offset = torch.full_like(scale, prior.normalisation.offset)
                images, a, b = quantisation(pixels, (x, scale, offset))
                with naming(prior_path):  # a diverging ODE is the prior's doing
                    bpd, stderr = bits_per_dim(prior, images, scale=a, offset=b, hutchinson=hutchinson,
                                               generator=generator, rtol=rtol, atol=atol)
                for j, (v, e) in enumerate(zip(bpd.tolist(), stderr.tolist())):
                    rows.append({"file": str(stack.source), "slice": first + j, "bits_per_dim": v,
                                 "stderr": None if math.isnan(e) else e})
                advance(len(pixels))
    values = np.array([r["bits_per_dim"] for r in rows])
    mean = float(values.mean())
    mean_stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    skipped = [{"input": str(path), "error": message} for path, message in failures]
    if json_out:
        emit_json({"bits_per_dim": {"per_image": rows, "mean": mean, "stderr": mean_stderr},
                   "hutchinson": hutchinson, "prior": str(prior_path), "prior_checksum": prior.checksum,
                   "device": str(dev), "seed": seed, "failed": skipped})
    else:
        if not quiet:
            for r in rows:
                err = "" if r["stderr"] is None else f" +- {r['stderr']:.3f}"
                typer.echo(f"{r['file']}[{r['slice']}]  {r['bits_per_dim']:.4f} bits/dim{err}")
        spread = "" if mean_stderr is None else f" +- {mean_stderr:.4f} (stderr over {len(values)} images)"
        typer.echo(f"mean {mean:.4f} bits/dim{spread}")
    if failures:
        raise InputError(f"{len(failures)} input(s) could not be read and were skipped; "
                         f"the other {len(stacks)} were scored.")
