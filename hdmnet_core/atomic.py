"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

Checkpoints, results tables and prepared data all go through these helpers: the bytes
are written to a temporary file in the destination's folder, flushed to disk, and
moved over the destination with :func:`os.replace` (atomic on POSIX and Windows).

A full disk (``ENOSPC``, or ``EDQUOT`` for a quota) at any point of that (writing,
flushing, moving) removes the temporary file, leaves the previous file as it was, and
raises :class:`DiskFull` ("disk full while writing <path>", exit code 2 from the CLI).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from hdmnet_core.errors import UserError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``No space left on device`` and ``Disk quota exceeded``."""


class DiskFull(UserError, OSError):
    """The disk (or the quota) filled up while a file was written; the previous file is
    unchanged and no temporary file is left. An ``OSError`` with ``errno`` ``ENOSPC``."""

    def __init__(self, path: str | os.PathLike[str], code: int = errno.ENOSPC) -> None:
        super().__init__(code, os.strerror(code), os.fspath(path))
        self.path = Path(path)

    def __str__(self) -> str:
        kept = "the previous file is unchanged" if self.path.exists() else "nothing was written"
        return (
            f"disk full while writing {self.path} ({self.strerror}); {kept}. Free space on "
            f"that disk (or write to another folder) and run the command again"
        )


def disk_full_cause(error: BaseException) -> int | None:
    """The ``errno`` of a full disk behind ``error`` (itself, or the error it was raised
    from or during: ``torch.save`` turns a failed ``write`` into a ``RuntimeError``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        current = current.__cause__ or current.__context__
    return None


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it into place."""
    path = Path(path)
    tmp_name: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
        code = disk_full_cause(error)
        if code is not None and not isinstance(error, DiskFull):
            raise DiskFull(path, code) from error
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
