"""Files that appear under their final name only when complete.

Every file quantcli writes (GGUF outputs, shards, cache records, manifests) goes to a hidden name beside its final
one and is renamed when finished; on any error or interrupt the hidden file is deleted. No fsync before the rename:
the rename alone guarantees that no reader ever sees a partial file under the final name, and forcing hundreds of
MB to disk would double the time of an F16 conversion.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def partial_name(path: Path) -> Path:
    """The hidden name `path` is written under (per process, so two runs never share one)."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for writing under its partial name; rename when the block ends, delete if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        with open(tmp, "wb") as fp:
            yield fp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
