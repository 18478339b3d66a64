"""One run per output folder: an exclusive lock on ``<folder>/.lock``.

``train base``, ``train meta``, ``evaluate`` and ``reproduce`` hold
:func:`output_folder_lock` on their output folder for as long as they run. The lock is an
``fcntl.flock`` on ``<folder>/.lock``, whose content names the holder (pid, host, command,
start time) in JSON. A second run into the same folder is refused at once with
:class:`OutputFolderBusy` naming that holder (exit code 2), before it writes anything.

The kernel drops a ``flock`` when its holder exits however it exits (``kill -9``
included), so the lock of a dead run is stale by construction: the next run takes it
over (and says whose it was). On exit the lock file is removed (and the folder, when
the lock created it and the run left it empty). Under
``torchrun`` only global rank 0 takes the lock (the other ranks write nothing). Without
``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hdmnet_core.errors import UserError

LOCK_NAME = ".lock"


class OutputFolderBusy(UserError, RuntimeError):
    """Another run holds the output folder's lock."""


def holder_facts(command: Sequence[str] | str) -> dict[str, Any]:
    """What the lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command if isinstance(command, str) else " ".join(command),
        "started_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def read_holder(path: Path) -> dict[str, Any]:
    """The holder facts in a lock file (``{}`` when empty or unreadable)."""
    try:
        facts = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def describe_holder(facts: dict[str, Any]) -> str:
    if not facts:
        return "a process that has not written its name yet"
    return (
        f"pid {facts.get('pid')} on {facts.get('host')}, started {facts.get('started_utc')}: "
        f"{facts.get('command')}"
    )


def is_main_process() -> bool:
    """Global rank 0 under ``torchrun`` (``RANK``), or a process on its own."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def output_folder_lock(
    folder: str | os.PathLike[str], command: Sequence[str] | str | None = None
) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    :class:`OutputFolderBusy` when another live process holds it. ``command`` is what the
    lock file names (default: this process's command line)."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield path
        return
    if not is_main_process():
        yield path
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, fcntl)
    try:
        stale = read_holder(path)
        if stale:
            print(
                f"[lock] took over the stale lock {path} of {describe_holder(stale)} "
                "(that process has ended)",
                file=sys.stderr,
                flush=True,
            )
        facts = holder_facts(command if command is not None else [sys.executable, *sys.argv])
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(facts) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):  # removed while we hold it: nobody else can
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                path.unlink()
        os.close(fd)  # releases the flock
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()


def _acquire(path: Path, fcntl: Any) -> int:
    """An open descriptor of ``path`` holding its ``flock``. Retries when the file was
    removed by a finishing holder between our open and our lock (then we would hold the
    lock of a file nobody else sees)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            os.close(fd)
            raise OutputFolderBusy(
                f"{path.parent}: another run is writing into this output folder "
                f"({describe_holder(holder)}; lock file {path}). Wait for it to finish, or "
                "give this run another output folder (--out)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same_file = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)
