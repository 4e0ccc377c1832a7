"""The one exception type for errors a user can cause and fix, and the translation of disk errors into it."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class RllcError(Exception):
    """A user-fixable error: bad input, a missing file, a mismatch.

    The CLI prints its message on one line (no traceback) and exits with status 2. The message names the file
    or value at fault and says what to do.
    """


class DiskFullError(RllcError):
    """A write failed because the disk (or quota) is full; nothing already written was damaged."""


class ReadOnlyError(RllcError):
    """A command would write into a directory it may not write to."""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def is_writable(directory: str | Path) -> bool:
    """True if this process may create files in `directory` (or, if it does not exist yet, in the nearest existing
    folder above it). Uses the effective uid, as the kernel does when the file is created."""
    d = _existing(Path(directory))
    if d.is_file():
        d = d.parent
    return os.access(d, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def read_only_error(directory: str | Path, what: str = "") -> ReadOnlyError:
    d = Path(directory)
    return ReadOnlyError(f"{d} is read-only{' (' + what + ')' if what else ''}; make it writable (chmod -R u+w "
                         f"{d}) or work on a copy (cp -r {d} COPY)")


def check_writable(directory: str | Path, what: str = "") -> None:
    """Raise a one-line ReadOnlyError naming `directory` unless files can be created in it."""
    near = _existing(Path(directory))
    if near.is_file():
        raise RllcError(f"{near} is a file, not a folder; pick another path")
    if not is_writable(directory):
        raise read_only_error(_existing(Path(directory)), what)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def disk_full_error(path: str | Path, needed: int | None = None, what: str = "") -> DiskFullError:
    path = Path(path)
    try:
        free = shutil.disk_usage(_existing(path)).free
    except OSError:
        free = None
    need = f"{_mb(needed)} needed, " if needed else ""
    have = f"{_mb(free)} free" if free is not None else "no space left"
    return DiskFullError(f"disk full writing {what + ' ' if what else ''}{path} ({need}{have}); free some space and "
                         "run the same command again (nothing already written was damaged)")


def _is_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _FULL:
        return True
    msg = str(e).lower()
    return "no space left" in msg or "disk is full" in msg or "os error 28" in msg or "storagefull" in msg


def _is_readonly(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in _READONLY:
        return True
    msg = str(e).lower()
    return "readonly database" in msg or "read-only file system" in msg or "os error 30" in msg or \
        "permission denied" in msg


@contextlib.contextmanager
def writing(path: str | Path, *, needed: int | None = None, what: str = "") -> Iterator[None]:
    """Translate a full or read-only disk met while writing `path` into a one-line RllcError.

    Args:
        path: the file (or folder) being written; named in the message.
        needed: bytes the write needs, if known (said in the message).
        what: a few words on what the file is ("checkpoint", "results store").
    """
    try:
        yield
    except RllcError:
        raise
    except Exception as e:  # OSError, sqlite3.OperationalError, SafetensorError, tokenizers' bare Exception
        if _is_full(e):
            raise disk_full_error(path, needed, what) from None
        if _is_readonly(e):
            raise read_only_error(Path(path).parent if not Path(path).is_dir() else Path(path), what) from None
        raise
