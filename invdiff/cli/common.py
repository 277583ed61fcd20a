"""Shared pieces of every subcommand: options, device, seed, progress, JSON, exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from invdiff.errors import InputError
from invdiff.notices import loudness, set_quiet, warn

#: click's usage-error base class as Typer raises it: the real ``click.ClickException`` for
#: Typer < 0.22, Typer's vendored copy (``typer._click``) after; found through the public
#: ``typer.BadParameter`` so the CLI needs no separate click install and works with both.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

#: the largest --seed: every consumer takes it (torch generators take 64-bit seeds; train also
#: seeds a second generator with seed + 1, and numpy's legacy RandomState with seed mod 2**32)
SEED_MAX = 2**63 - 2


def check_seed(seed: int) -> int:
    """``seed`` if it is a --seed every command can use (0 to SEED_MAX); else InputError. The
    --seed option's callback: checked once, as the command line is parsed."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"--seed must be a whole number from 0 to {SEED_MAX}, got {seed}.")
    return seed


# --- options every command declares the same way ---------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: cuda when available).")]
SeedOpt = Annotated[int, typer.Option("--seed", callback=check_seed, help=f"Random seed, 0 to {SEED_MAX}; the same seed and device give the same result.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", callback=set_quiet, help="No progress bar, summary table or warnings.")]
VolumeOpt = Annotated[Optional[int], typer.Option("--volume", help="4-D NIfTI (fMRI time points, diffusion directions): the volume to read, from 0.")]
SeriesOpt = Annotated[Optional[str], typer.Option("--series", help="DICOM folder that holds several series: the one to read, by SeriesNumber or SeriesInstanceUID.")]
ChannelOpt = Annotated[Optional[int], typer.Option("--channel", help="Colour PNG/JPEG or multi-channel TIFF (fluorescence channels): the channel to read, from 0 (1: green of RGB).")]
GreyOpt = Annotated[bool, typer.Option("--grey", help="Read colour PNG/JPEG/TIFF images as grey (luma 0.299 R + 0.587 G + 0.114 B) instead of refusing them.")]
# the --device and --seed every command takes (DESIGN.md section 1), on a command that has no use for them
AcceptedDeviceOpt = Annotated[str, typer.Option("--device", help="Accepted as on every command (auto, cpu, cuda); this command computes on the CPU.")]
AcceptedSeedOpt = Annotated[int, typer.Option("--seed", callback=check_seed, help="Accepted as on every command; this command draws no random numbers.")]
Bf16Opt = Annotated[bool, typer.Option("--bf16", help="Run the prior's network in bfloat16 (channels-last): 2-3x faster on CPUs with AMX or AVX512-BF16, results within a few hundredths of a dB (BENCHMARKS.md); the data-consistency steps stay float32.")]


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run the Typer app and map outcomes to exit codes: 0 ok, 2 bad input/usage, 1 internal."""
    try:
        with loudness(False):
            code = app(args=argv, standalone_mode=False, prog_name="invdiff")
    except InputError as exc:
        _error(str(exc))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:  # usage errors, bad option values, missing files
        if type(exc).__name__ == "NoArgsIsHelpError":  # plain `invdiff`: the help, as click shows it
            exc.show()
        else:
            _error(usage_message(exc, sys.argv[1:] if argv is None else argv))
        return 2
    except typer.Abort:
        _error("aborted.")
        return 130
    except KeyboardInterrupt:
        _error("interrupted.")
        return 130
    except Exception:  # a bug of ours: say so, with the traceback for the report
        import traceback

        traceback.print_exc()
        _error("internal error (a bug in invdiff; please report it with the traceback above).")
        return 1
    # Without standalone mode click returns, not raises, the code of an Exit: typer turns
    # Ctrl-C (KeyboardInterrupt) into Exit(130), which must not end as a success.
    if code == 130:
        _error("interrupted.")
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def usage_message(exc: Exception, argv: list[str]) -> str:
    """Click's usage error as one sentence of the ``invdiff: error:`` format: its own message
    (first letter lower case, the value given added to a bad option value) and where the help
    is, ``(see invdiff simulate --help)``, in place of click's three lines (usage, hint, error)."""
    def lower(text: str) -> str:  # "Invalid value" -> "invalid value"; "HDF5" stays
        return text[0].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text

    similar = getattr(exc, "possibilities", None)  # NoSuchOption: click's guesses at the option meant
    message = (str(exc.message) if similar else exc.format_message()).strip().rstrip(".")
    param = getattr(exc, "param", None)
    if type(exc).__name__ == "BadParameter" and param is not None:
        value = _given_value(list(getattr(param, "opts", [])), argv)
        if value is not None and repr(value) not in message:
            head, sep, tail = message.partition(": ")
            message = f"{head} ({value!r}){sep}{lower(tail)}" if sep else f"{message} ({value!r})"
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else " ".join(["invdiff", *[a for a in argv[:1] if not a.startswith("-")]])
    hint = f"see {command} --help"
    if similar:
        hint = f"options with similar names: {', '.join(sorted(similar))}; {hint}"
    return f"{lower(message)} ({hint})."


def _given_value(flags: list[str], argv: list[str]) -> str | None:
    """The value last given on the command line to an option of ``flags`` (``--views abc`` or
    ``--views=abc``), or None."""
    value = None
    for i, word in enumerate(argv):
        for flag in flags:
            if word == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif word.startswith(flag + "="):
                value = word[len(flag) + 1:]
    return value


def _error(message: str) -> None:
    message = message.strip()
    if message and message[-1] not in ".!?":
        message += "."
    print(f"invdiff: error: {message}", file=sys.stderr)


def check_device(name: str) -> None:
    """The --device of a command that computes on the CPU (evaluate, calibrate, info): refused
    where resolve_device would refuse it, so that a pipeline's options mean the same on every
    command; ``auto`` needs no check (and no torch import)."""
    if name != "auto":
        resolve_device(name)


def resolve_device(name: str):
    """``auto`` -> cuda if available else cpu; InputError for an unavailable device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device '{name}' is not a device name (use auto, cpu or cuda).") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available.")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device '{name}' is not supported (use auto, cpu or cuda).")
    return device


def cpu_lacks_bf16() -> bool:
    """True when this CPU has neither AMX nor AVX512-BF16, so that bfloat16 arithmetic is
    emulated and slower than float32 (measured on a 2-core AMD EPYC with AVX2 only: training 8x,
    reconstruction 5x slower; BENCHMARKS.md); False when it has them or this torch cannot tell."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return not any(check is None for check in checks) and not any(check() for check in checks)


def warn_slow_bf16(device, quiet: bool) -> None:
    """With --bf16 on a CPU that lacks bfloat16 instructions (AMX or AVX512-BF16), say on stderr
    that it will be slower there, not faster (emulated bfloat16 arithmetic)."""
    if quiet or device.type != "cpu" or not cpu_lacks_bf16():
        return
    warn("this CPU has no bfloat16 instructions (AMX or AVX512-BF16), so --bf16 runs slower than float32 here.")


def make_generator(seed: int):
    """A CPU torch.Generator seeded with ``seed`` (random draws are made on the CPU and moved,
    so a seed gives the same numbers on every device)."""
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


def show_progress(quiet: bool, json_out: bool = False) -> bool:
    """A progress bar only on a terminal, and never with --quiet or --json."""
    return not quiet and not json_out and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr (a no-op object when disabled). Yields ``advance(n=1)``."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def json_plain(obj: Any) -> Any:
    """``obj`` as plain JSON values: paths as strings, dataclasses as dicts, numpy arrays and
    scalars as lists and numbers, and NaN or infinite numbers as None (bare NaN and Infinity
    are not JSON: a PSNR is infinite for an exact reconstruction)."""
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k) if isinstance(k, Path) else k: json_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float)):
        return obj
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (json_plain: never a bare NaN)."""
    print(json.dumps(json_plain(obj), allow_nan=False))


def require_file(path: Path, what: str = "input", *, allow_folder: bool = False) -> Path:
    """InputError unless ``path`` is an existing, non-empty file, or, with ``allow_folder``, a
    folder (a DICOM series: its reader says so when it is none)."""
    if not path.exists():
        raise InputError(f"{path}: {what} file does not exist.")
    if path.is_dir() and allow_folder:
        return path
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: {what} file is empty.")
    return path


#: name endings of the other formats invdiff reads or writes: an HDF5 output named so is a mistake
OTHER_FORMAT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz", ".dcm", ".nii", ".nii.gz", ".json")


def check_suffix(path: Path, option: str, kind: str) -> Path:
    """InputError for an output file whose name says another format than the one written:
    ``kind`` "hdf5" refuses a name ending in one of OTHER_FORMAT_SUFFIXES (any other, .h5 or
    none, is taken), "png" any name that does not end in .png."""
    name = path.name.lower()
    if kind == "png" and not name.endswith(".png"):
        raise InputError(f"{path}: {option} is a PNG file; give a name ending in .png.")
    if kind == "hdf5" and name.endswith(OTHER_FORMAT_SUFFIXES):
        raise InputError(f"{path}: {option} is an HDF5 file; give a name ending in .h5.")
    return path


def nifti_axis(path: Path, axis: int | None) -> int:
    """The NIfTI axis to slice ``path`` along (default 2, axial); InputError when ``--axis`` is
    given for a file that is not NIfTI (checked before reading: other stacks are (slices, H, W))."""
    from invdiff.io.images import image_kind

    if axis is not None and (kind := image_kind(path)) not in ("nifti", None):
        raise InputError(f"{path}: --axis slices NIfTI volumes; a {kind.upper()} stack is read as (slices, H, W).")
    return 2 if axis is None else axis


def refuse_clobbering(inputs: list[Path], outputs: list[Path], read_dirs: list[Path] = ()) -> None:
    """InputError if an output path is one of the input files, lies in a folder the command
    reads (``read_dirs``: a prior directory), or two outputs are the same file.

    Checked before anything is read or written: an output that resolves to an input would
    replace the data it is made from, one inside a prior directory could replace its config or
    weights, and two equal outputs would leave only the last one.
    """
    read = {p.resolve() for p in inputs if p.is_file()}
    folders = [(d, d.resolve()) for d in read_dirs]
    seen: set[Path] = set()
    for o in outputs:
        r = o.resolve()
        if r in read:
            raise InputError(f"the output {o} would overwrite the input it is made from; choose another output path.")
        for folder, resolved in folders:
            if r == resolved or resolved in r.parents:
                raise InputError(f"the output {o} lies in the prior directory {folder}, which this command reads "
                                 f"and must not change; choose another output path.")
        if r in seen:
            raise InputError(f"{o} is given for two outputs; each needs its own path.")
        seen.add(r)


def check_writable(path: Path, folder: Path | None = None) -> None:
    """InputError naming ``path`` and the reason unless a file can be created in ``folder``
    (default: the folder ``path`` goes in) or, where that does not exist yet, in the nearest
    folder above it that does (so the missing ones can be made).

    Tried with a hidden temporary file of the name an atomic write uses, removed at once:
    permission bits alone cannot tell (root, read-only filesystems, /sys). Makes no folder.
    """
    from invdiff.io.atomic import existing_ancestor, folder_problem

    folder = existing_ancestor(path.parent if folder is None else folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the output there ({folder_problem(folder, exc)}).") from None
    os.close(fd)
    os.unlink(probe)


def check_output(path: Path, overwrite: bool = True) -> Path:
    """InputError if the path is a folder, exists and is not a regular file (a device, pipe or
    socket, or a link to one: never replaced), or its folder cannot be created or written to."""
    check_outputs([path])
    return path


def check_outputs(paths: list[Path]) -> None:
    """`check_output` for many files, trying each folder they go in once (a batch's thousands
    of results in one --out-dir cost one try)."""
    from invdiff.io.atomic import refuse_special_file

    tried: set[Path] = set()
    for path in paths:
        if path.exists() and path.is_dir():
            raise InputError(f"{path}: output path is a folder; give a file name.")
        refuse_special_file(path)
        if path.parent not in tried:
            check_writable(path)
            tried.add(path.parent)


def check_output_folder(path: Path) -> Path:
    """InputError if an output folder (files are written inside it) is a file, holds a device,
    pipe or socket (or a link to one) that a written file could replace, or cannot be created
    or written to."""
    from invdiff.io.atomic import refuse_special_file

    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: output must be a folder, but a file with that name exists.")
    if path.is_dir():
        for entry in sorted(path.iterdir()):
            refuse_special_file(entry)
    check_writable(path, folder=path)
    return path
