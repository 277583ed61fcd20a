"""Shared pieces of every subcommand: options, device, seed, progress, JSON, exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator

import typer

from invdiff.errors import InputError

#: click's usage-error base class as Typer raises it: the real ``click.ClickException`` for
#: Typer < 0.22, Typer's vendored copy (``typer._click``) after; found through the public
#: ``typer.BadParameter`` so the CLI needs no separate click install and works with both.
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# --- options every command declares the same way ---------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: cuda when available).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; the same seed and device give the same result.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]
Bf16Opt = Annotated[bool, typer.Option("--bf16", help="Run the prior's network in bfloat16 (channels-last): 2-3x faster on CPUs with AMX or AVX512-BF16, results within a few hundredths of a dB (BENCHMARKS.md); the data-consistency steps stay float32.")]


def run_app(app: typer.Typer, argv: list[str] | None = None) -> int:
    """Run the Typer app and map outcomes to exit codes: 0 ok, 2 bad input/usage, 1 internal."""
    try:
        app(args=argv, standalone_mode=False, prog_name="invdiff")
    except InputError as exc:
        _error(str(exc))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:  # usage errors, bad option values, missing files
        exc.show()
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
    return 0


def _error(message: str) -> None:
    message = message.strip()
    if message and message[-1] not in ".!?":
        message += "."
    print(f"invdiff: error: {message}", file=sys.stderr)


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


def warn_slow_bf16(device, quiet: bool) -> None:
    """With --bf16 on a CPU that lacks bfloat16 instructions (AMX or AVX512-BF16), say on stderr
    that it will be slower there, not faster (emulated bfloat16 arithmetic)."""
    import torch

    if quiet or device.type != "cpu":
        return
    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(check is None for check in checks) or any(check() for check in checks):
        return  # native bfloat16 (or a torch that cannot tell): no warning
    print("invdiff: warning: this CPU has no bfloat16 instructions (AMX or AVX512-BF16), so --bf16 runs slower "
          "than float32 here.", file=sys.stderr)


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


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (numpy scalars and paths converted)."""

    def default(o):
        if isinstance(o, Path):
            return str(o)
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if hasattr(o, "item"):
            return o.item()
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    print(json.dumps(obj, default=default))


def require_file(path: Path, what: str = "input") -> Path:
    """InputError unless ``path`` is an existing, non-empty file."""
    if not path.exists():
        raise InputError(f"{path}: {what} file does not exist.")
    if path.is_dir():
        raise InputError(f"{path}: {what} is a folder, not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: {what} file is empty.")
    return path


def refuse_clobbering(inputs: list[Path], outputs: list[Path]) -> None:
    """InputError if an output path is one of the input files, or two outputs are the same file.

    Checked before anything is read or written: an output that resolves to an input would
    replace the data it is made from, and two equal outputs would leave only the last one.
    """
    read = {p.resolve() for p in inputs if p.is_file()}
    seen: set[Path] = set()
    for o in outputs:
        r = o.resolve()
        if r in read:
            raise InputError(f"the output {o} would overwrite the input it is made from; choose another output path.")
        if r in seen:
            raise InputError(f"{o} is given for two outputs; each needs its own path.")
        seen.add(r)


def check_output(path: Path, overwrite: bool = True) -> Path:
    """InputError if the output's folder cannot be created or the path is a folder."""
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: output path is a folder; give a file name.")
    return path
