"""Atomic output: write to a temporary file beside the target, flush, fsync, rename.

A run killed at any moment leaves either the complete old file or the complete new one,
never a half-written output (os.replace is atomic on POSIX within one filesystem). What a
SIGKILL can leave behind is a hidden ``.NAME.*.tmp`` file beside the target, which no reader
mistakes for an output. The renamed file gets the permissions a plainly created file would
have (0666 minus the umask; an existing target keeps its mode), not mkstemp's private 0600.
Several outputs of one command go through `atomic_paths`, so that a failure leaves none of
them. A folder that cannot be made or written to is an InputError naming the output.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from invdiff.errors import InputError


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


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def existing_ancestor(folder: Path) -> Path:
    """``folder``, or the nearest of its parents that exists (a file, where one is in the way)."""
    missing = _missing_folders(folder)
    return missing[-1].parent if missing else folder


def folder_problem(folder: Path, exc: OSError) -> str:
    """Why ``exc`` stopped a file being made in ``folder`` (or the folder being made), in words
    for a message: a file where a folder should be, else the system's reason."""
    folder = existing_ancestor(folder)
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    return exc.strerror or str(exc)


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are still empty (best effort)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _temp_beside(target: Path) -> tuple[Path, list[Path]]:
    """A new empty temporary file in the target's folder (created with its parents where
    missing), and the folders that had to be created; InputError naming the target if the
    folder or the file cannot be created (a parent that is a file, no permission, a read-only
    filesystem)."""
    created = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        _remove_empty(created)
        raise InputError(f"{target}: cannot write the output file ({folder_problem(target.parent, exc)}).") from None
    os.close(fd)
    return Path(tmp), created


def _commit(tmp_path: Path, target: Path) -> None:
    """Flush ``tmp_path`` to disk, give it the target's mode and rename it onto ``target``."""
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


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto target.

    On any exception the temporary file is removed, and the folders made for it if they are
    still empty, and the target is left untouched. A folder that cannot be made or written to
    is an InputError naming the target.
    """
    target = Path(target)
    tmp_path, created = _temp_beside(target)
    try:
        yield tmp_path
        _commit(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_paths(targets: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """Several outputs as one: yield a temporary path per target; only when the block succeeds
    are they renamed onto their targets, in the given order (so the last target, the main
    result, appears last).

    On any exception no target is changed: the temporaries are removed, and so are the folders
    made for them if still empty. Should a rename fail after others were done (a disk failing
    at the very end), the targets already renamed that did not exist before are removed again;
    one that replaced an existing file cannot be restored and keeps the new content. An
    InputError whose message names a temporary is reworded to name its target.
    """
    targets = [Path(t) for t in targets]
    existed = [t.exists() for t in targets]
    temps: list[Path] = []
    created: list[Path] = []
    done: list[Path] = []
    try:
        for target in targets:
            tmp_path, made = _temp_beside(target)
            temps.append(tmp_path)
            created = made + created  # deepest first: a later target's folders may lie inside
        try:
            yield list(temps)
        except InputError as exc:
            text = str(exc)
            for tmp_path, target in zip(temps, targets):
                text = text.replace(str(tmp_path), str(target))
            if text == str(exc):
                raise
            raise type(exc)(text) from None
        for tmp_path, target in zip(temps, targets):
            _commit(tmp_path, target)
            done.append(target)
    except BaseException:
        for tmp_path in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
        for target, was_there in zip(targets, existed):
            if target in done and not was_there:
                with contextlib.suppress(OSError):
                    target.unlink()
        _remove_empty(created)
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
