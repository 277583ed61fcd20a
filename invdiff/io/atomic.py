"""Atomic output: write to a temporary file beside the target, flush, fsync, rename.

A run killed at any moment leaves either the complete old file or the complete new one,
never a half-written output (os.replace is atomic on POSIX within one filesystem). What a
SIGKILL can leave behind is a hidden ``.NAME.*.tmp`` file beside the target, which no reader
mistakes for an output. The renamed file gets the permissions a plainly created file would
have (0666 minus the umask; an existing target keeps its mode), not mkstemp's private 0600.
Several outputs of one command go through `atomic_paths`, so that a failure leaves none of
them. A folder that cannot be made or written to is an InputError naming the output, and so is
an OSError while the output is written or renamed (a full disk: ENOSPC). A target that exists
and is not a regular file (a device such as /dev/null, a FIFO, a socket, or a link to one) is
refused before anything is written and again just before the rename, never replaced.
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


def refuse_special_file(target: str | os.PathLike) -> None:
    """InputError if ``target`` exists and is neither a regular file nor a folder (a device, a
    FIFO, a socket, or a symbolic link to one): renaming a new file onto it would destroy it
    (``--out /dev/null`` run as root would replace the device). A missing target, or a dangling
    link (which the rename replaces, not what it points to), passes; folders are left to the
    callers, which name them as such."""
    try:
        mode = os.stat(target).st_mode  # follows links: a link to a device is refused too
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"{target}: output exists and is not a regular file (a device or pipe); give a file path.")


def write_problem(target: str | os.PathLike, exc: OSError) -> InputError:
    """The InputError for an OSError while writing ``target`` (a full disk, an I/O error): one
    sentence naming the output and the system's reason (`write_reason`)."""
    return InputError(f"{target}: cannot write the output ({write_reason(exc)}).")


def write_reason(exc: OSError) -> str:
    """The system's reason for ``exc`` in a few words, from its errno where it has one (h5py's
    OSErrors carry HDF5's multi-line report as their text)."""
    reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else (exc.strerror or str(exc))
    return " ".join(str(reason).split()).rstrip(".") or type(exc).__name__


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
    refuse_special_file(target)
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
    """Flush ``tmp_path`` to disk, give it the target's mode and rename it onto ``target``
    (refused, InputError, if the target has become a device or pipe meanwhile); an OSError is
    an InputError naming the target (`write_problem`)."""
    try:
        _flush_and_rename(tmp_path, target)
    except InputError:
        raise
    except OSError as exc:
        raise write_problem(target, exc) from None


def _flush_and_rename(tmp_path: Path, target: Path) -> None:
    """The steps of `_commit`: fsync, chmod, a last check of the target, rename, fsync the folder."""
    with open(tmp_path, "rb+") as fh:
        fh.flush()
        os.fsync(fh.fileno())
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except OSError:
        mode = _default_mode()
    os.chmod(tmp_path, mode)
    refuse_special_file(target)
    os.replace(tmp_path, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto target.

    On any exception the temporary file is removed, and the folders made for it if they are
    still empty, and the target is left untouched. A folder that cannot be made or written to,
    a target that is a device or pipe (`refuse_special_file`), and an OSError raised in the
    block or by the rename (a full disk) are InputErrors naming the target; an InputError of
    the block that names the temporary is reworded to name the target.
    """
    target = Path(target)
    tmp_path, created = _temp_beside(target)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise write_problem(target, exc) from None
        except InputError as exc:
            raise _naming_targets(exc, [tmp_path], [target]) from None
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
    InputError whose message names a temporary is reworded to name its target; an OSError in
    the block (a full disk) is an InputError naming the target whose temporary it names, else
    all the targets (`_write_problem_of`).
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
        except OSError as exc:
            raise _write_problem_of(exc, temps, targets) from None
        except InputError as exc:
            raise _naming_targets(exc, temps, targets) from None
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


def _naming_targets(exc: InputError, temps: list[Path], targets: list[Path]) -> InputError:
    """``exc``, reworded (same class) to name the targets where its message names their
    temporaries: the user never sees a hidden ``.NAME.*.tmp`` path."""
    text = str(exc)
    for tmp_path, target in zip(temps, targets):
        text = text.replace(str(tmp_path), str(target))
    return exc if text == str(exc) else type(exc)(text)


def _write_problem_of(exc: OSError, temps: list[Path], targets: list[Path]) -> InputError:
    """`write_problem` for an OSError raised while several outputs were written: naming the
    target whose temporary the error names (``exc.filename``), else all of them."""
    named = str(exc.filename) if exc.filename is not None else ""
    for tmp_path, target in zip(temps, targets):
        if named and (named == str(tmp_path) or named.startswith(str(tmp_path))):
            return write_problem(target, exc)
    if len(targets) == 1:
        return write_problem(targets[0], exc)
    return InputError(f"{', '.join(map(str, targets))}: cannot write the outputs ({write_reason(exc)}).")


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically; InputError naming it for any OSError (a full disk)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of ``text`` in UTF-8."""
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
