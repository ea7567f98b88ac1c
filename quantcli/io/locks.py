"""Exclusive locks on final output names, held by one run from its cache lookup to its manifest.

Two runs writing the same file would each rename a complete file into place, but the manifest of one could end
up beside the GGUF of the other. A run therefore holds, for every final name it may write, an flock on a hidden
empty file beside it (`.x.gguf.lock`), taken in one sorted order so that two runs with overlapping outputs cannot
deadlock. The kernel drops the locks of a process that dies, so a killed run never blocks the next one.

The holder deletes the lock file before it lets go, so none is left behind. That is safe because a taker checks,
once it holds the lock, that the file it locked is still the one at that name: a waiter that had opened the file
just deleted holds a lock on a dead inode, sees the mismatch and starts over on a fresh file.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Callable

from ..errors import OutputError

LOCK_SUFFIX = ".lock"


def lock_name(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def _open_lock(lock: Path) -> int:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write to {lock.parent}: {exc.strerror}.",
                          hint="Choose an output folder you can write to (-o).") from exc


def _is_current(fd: int, lock: Path) -> bool:
    """Whether `fd` is still the file at the name `lock` (its holder may have deleted it meanwhile)."""
    try:
        named = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


@contextmanager
def _flock(path: Path, on_wait: Callable[[Path], None] | None) -> Iterator[None]:
    lock = lock_name(path)
    warned = False
    while True:
        fd = _open_lock(lock)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not warned:
                    on_wait(path)
                    warned = True
                fcntl.flock(fd, fcntl.LOCK_EX)     # an interrupt while waiting raises out of here, as anywhere
        except BaseException:
            os.close(fd)
            raise
        if _is_current(fd, lock):
            break
        os.close(fd)                               # we locked a file its holder had deleted: take the new one
    try:
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)           # still holding the lock: see the module docstring
        finally:
            os.close(fd)                           # closing the descriptor releases the lock


@contextmanager
def output_locks(paths: Sequence[Path], on_wait: Callable[[Path], None] | None = None) -> Iterator[None]:
    """Hold the lock of every path in `paths` for the duration of the block."""
    # Resolved, so that two spellings of one file (relative, through a symlinked folder) share one lock.
    ordered = sorted({str(Path(p).resolve()) for p in paths})
    with ExitStack() as stack:
        for path in ordered:
            stack.enter_context(_flock(Path(path), on_wait))
        yield
