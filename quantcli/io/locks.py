"""Exclusive locks on final output names, held by one run from its cache lookup to its manifest.

Two runs writing the same file would each rename a complete file into place, but the manifest of one could end
up beside the GGUF of the other. A run therefore holds, for every final name it may write, an flock on a hidden
empty file beside it (`.x.gguf.lock`), taken in one sorted order so that two runs with overlapping outputs cannot
deadlock. The lock files stay: deleting one while another process waits on it would let a third process lock a
new file of the same name, and two runs would hold "the" lock at once. The kernel drops the locks of a process
that dies, so a killed run never blocks the next one.
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


@contextmanager
def _flock(path: Path, on_wait: Callable[[Path], None] | None) -> Iterator[None]:
    lock = lock_name(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write to {lock.parent}: {exc.strerror}.",
                          hint="Choose an output folder you can write to (-o).") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(path)
            fcntl.flock(fd, fcntl.LOCK_EX)     # an interrupt while waiting raises out of here, as anywhere
        yield
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
