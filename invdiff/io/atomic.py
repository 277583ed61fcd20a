"""Atomic output: write to a temporary file beside the target, flush, fsync, rename.

A run killed at any moment leaves either the complete old file or the complete new one,
never a half-written output (os.replace is atomic on POSIX within one filesystem). What a
SIGKILL can leave behind is a hidden ``.NAME.*.tmp`` file beside the target, which no reader
mistakes for an output. The renamed file gets the permissions a plainly created file would
have (0666 minus the umask; an existing target keeps its mode), not mkstemp's private 0600.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator


def _default_mode() -> int:
    """0666 minus the process umask (read from /proc where possible: os.umask would briefly
    change it for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not every platform can open folders)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto target.

    On any exception the temporary file is removed and the target is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except OSError:
            mode = _default_mode()
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths (e.g. folders) in one atomic step, with Linux's
    ``renameat2(RENAME_EXCHANGE)``. Returns False, changing nothing, where that is not
    available (other systems, old kernels, some filesystems); the caller then falls back to
    two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    result = renameat2(_AT_FDCWD, os.fsencode(os.fspath(a)), _AT_FDCWD, os.fsencode(os.fspath(b)), _RENAME_EXCHANGE)
    return result == 0
