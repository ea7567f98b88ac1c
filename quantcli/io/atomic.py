"""Files that appear under their final name only when complete.

Every file quantcli writes (GGUF outputs, shards, cache records, manifests) goes to a hidden name beside its final
one and is renamed when finished; on any error or interrupt the hidden file is deleted. No fsync before the rename:
the rename alone guarantees that no reader ever sees a partial file under the final name, and forcing hundreds of
MB to disk would double the time of an F16 conversion.

A partial name carries the writer's pid and a per-process counter (`.x.gguf.partial-4242-3`), so two writers never
share one, even two writers of one process aiming at the same final name. A process killed with SIGKILL cannot
delete its partial file; `sweep_partials` removes those whose pid no longer runs (the next run in the folder does).
"""
from __future__ import annotations

import itertools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .direct_file import SequentialFile

PARTIAL_MARK = ".partial-"
# `.<final name>.partial-<pid>[-<n>]`; the bare `-<pid>` form is what earlier versions wrote.
_PARTIAL = re.compile(r"^\..+\.partial-(?P<pid>\d+)(?:-\d+)?$")
_counter = itertools.count()
_counter_lock = threading.Lock()


def partial_name(path: Path) -> Path:
    """A hidden name beside `path` that no other writer (process or object) uses."""
    with _counter_lock:
        n = next(_counter)
    path = Path(path)
    return path.with_name(f".{path.name}{PARTIAL_MARK}{os.getpid()}-{n}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_partials(folder: Path) -> list[Path]:
    """Delete the partial files in `folder` left by processes that are gone; returns what was removed.

    Only names of our partial pattern are touched, and only when their pid is not running: a live writer's file
    is never removed (a recycled pid merely keeps a stale file one run longer).
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _PARTIAL.match(entry.name)
        if m is None or pid_alive(int(m.group("pid"))):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass   # gone already, or not ours to delete: the sweep is a courtesy, never a failure
    return removed


@contextmanager
def atomic_file(path: Path, *, large: bool = False) -> Iterator[BinaryIO]:
    """Open `path` for writing under its partial name; rename when the block ends, delete if it raises.

    `large`: a file of tensor data written front to back, which goes around the page cache (io/direct_file.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        with (SequentialFile(tmp) if large else open(tmp, "wb")) as fp:
            yield fp  # type: ignore[misc]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
