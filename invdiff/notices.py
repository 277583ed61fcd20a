"""Warnings for the user from anywhere in the library: one ``invdiff: warning: ...`` line on
stderr, silenced while a command runs with ``--quiet`` (the CLI's QuietOpt sets it through
`set_quiet`; `run_app` starts every run loud and restores the state after it)."""

from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Iterator

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("invdiff_quiet", default=False)


def warn(message: str) -> None:
    """Print ``invdiff: warning: MESSAGE`` on stderr unless the running command is quiet."""
    if not _QUIET.get():
        print(f"invdiff: warning: {message}", file=sys.stderr)


def set_quiet(value: bool) -> bool:
    """Typer callback of ``--quiet``: silence `warn` for the rest of this run; returns value."""
    _QUIET.set(bool(value))
    return value


@contextlib.contextmanager
def loudness(quiet: bool = False) -> Iterator[None]:
    """Run a block with `warn` silenced (quiet=True) or not, restoring the state after it."""
    token = _QUIET.set(quiet)
    try:
        yield
    finally:
        _QUIET.reset(token)
