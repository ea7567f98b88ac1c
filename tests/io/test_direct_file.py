"""SequentialFile: the bytes and the sha256 are what was written, with O_DIRECT, without it, and when the file
system refuses it at open or at a write."""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from quantcli.io import direct_file
from quantcli.io.direct_file import ALIGN, CHUNK, SequentialFile

# piece sizes that cross every boundary: empty, below and at the alignment, a whole buffer, past it, several buffers
PIECES = [[], [1], [ALIGN - 1], [ALIGN], [CHUNK], [CHUNK + 1], [3, ALIGN + 5, CHUNK - 7, 2 * CHUNK + 11, 1]]


def pieces(sizes: list[int], seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("sizes", PIECES, ids=lambda s: "+".join(map(str, s)) or "empty")
def test_file_holds_exactly_what_was_written(tmp_path: Path, sizes: list[int], direct: bool) -> None:
    data = pieces(sizes)
    path = tmp_path / "f.bin"
    with SequentialFile(path, direct=direct) as f:
        for d in data:
            assert f.write(d) == len(d)
        assert f.size == sum(sizes)
    whole = b"".join(data)
    assert path.read_bytes() == whole
    assert f.sha256 == hashlib.sha256(whole).hexdigest()


def test_writes_take_any_buffer(tmp_path: Path) -> None:
    a = np.arange(1000, dtype=np.float32)
    with SequentialFile(tmp_path / "f.bin") as f:
        f.write(memoryview(a).cast("B"))
        f.write(bytearray(b"tail"))
    assert (tmp_path / "f.bin").read_bytes() == a.tobytes() + b"tail"


def test_o_direct_refused_at_open_falls_back_to_buffered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, mode: int = 0o777) -> int:   # what tmpfs and many FUSE file systems do
        if flags & direct_file._O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(direct_file.os, "open", no_direct)
    data = pieces([CHUNK + 3, 5])
    with SequentialFile(tmp_path / "f.bin") as f:
        assert not f.direct
        for d in data:
            f.write(d)
    assert (tmp_path / "f.bin").read_bytes() == b"".join(data)


def test_other_open_errors_are_not_swallowed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SequentialFile(tmp_path / "missing-folder" / "f.bin")


def test_o_direct_refused_at_a_write_drops_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_pwrite = os.pwrite
    refused: list[int] = []

    def picky(fd: int, data: memoryview, offset: int) -> int:   # a device whose alignment is larger than ALIGN
        if os.get_blocking(fd) and direct_file.fcntl.fcntl(fd, direct_file.fcntl.F_GETFL) & direct_file._O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_file.os, "pwrite", picky)
    data = pieces([2 * CHUNK + 9])
    with SequentialFile(tmp_path / "f.bin") as f:
        f.write(data[0])
    if refused:                       # O_DIRECT was granted at open (not on tmpfs): the first write refused it
        assert refused == [0] and not f.direct
    assert (tmp_path / "f.bin").read_bytes() == data[0]


def test_real_write_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_file.os, "pwrite", full)
    f = SequentialFile(tmp_path / "f.bin")
    with pytest.raises(OSError) as info:
        f.write(bytes(CHUNK))
    assert info.value.errno == errno.ENOSPC
    f.abort()


def test_abort_drops_the_buffer_and_close_twice_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    f = SequentialFile(path)
    f.write(b"never reaches the disk")
    f.abort()
    assert path.read_bytes() == b""
    f.close()
    with pytest.raises(ValueError, match="after close"):
        f.write(b"x")


def test_leaving_by_an_exception_aborts(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with pytest.raises(RuntimeError), SequentialFile(path) as f:
        f.write(b"partial")
        raise RuntimeError
    assert path.read_bytes() == b""
