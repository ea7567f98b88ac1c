"""A large output file written front to back around the page cache (O_DIRECT), hashed as it goes.

Why not a plain buffered file: the kernel copies every written byte into page-cache pages it has just allocated, and
on a VM those pages are often fresh host memory. Profiling a 1.1B HF -> Q4_K_M conversion (issue 11) put 0.9 s of
CPU in that copy, about 60 % of what ran outside the quantization kernels. With O_DIRECT the device reads the bytes
straight from one small buffer that is reused for the whole file (so its pages stay warm), the copy costs almost
no CPU, and writing a large output does not push the source model out of the page cache.

How: writes are gathered in an aligned buffer of `CHUNK` bytes and handed to the device a whole buffer at a time
(O_DIRECT wants the memory, the file offset and the length aligned). The last, partial buffer is padded to the
alignment and the file is then truncated to its true length. Every byte is hashed (sha256) as it enters the buffer,
so the manifest never reads the file back.

Falls back to ordinary buffered writes, with the same bytes, where O_DIRECT is refused: file systems without it
(tmpfs, several FUSE and network file systems) refuse at open, and a device with a larger alignment refuses the
first write, after which the descriptor simply drops the flag.

    with SequentialFile(path) as f:
        f.write(header)
        f.write(array_bytes)
    digest = f.sha256
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
from pathlib import Path
from types import TracebackType

CHUNK = 8 << 20        # bytes handed to the device per write: large enough that the per-call cost is noise
ALIGN = 4096           # O_DIRECT's alignment of memory, offset and length on every common device and file system
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


class SequentialFile:
    """A new file (created or truncated) written from start to end; `direct=False` forces buffered writes."""

    def __init__(self, path: Path, *, direct: bool = True) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        self.path = Path(path)
        self.direct = False
        fd = -1
        if direct and _O_DIRECT:
            try:
                fd = os.open(self.path, flags | _O_DIRECT, 0o644)
                self.direct = True
            except OSError as exc:
                if exc.errno != errno.EINVAL:      # EINVAL: this file system has no O_DIRECT; anything else is real
                    raise
        if fd < 0:
            fd = os.open(self.path, flags, 0o644)
        self._fd = fd
        self._buf = mmap.mmap(-1, CHUNK)       # anonymous mappings are page aligned, which O_DIRECT needs
        self._view = memoryview(self._buf)
        self._fill = 0                         # bytes waiting in the buffer
        self._flushed = 0                      # bytes already handed to the file
        self._digest = hashlib.sha256()
        self._closed = False

    @property
    def size(self) -> int:
        """Bytes written so far (buffered or not)."""
        return self._flushed + self._fill

    @property
    def sha256(self) -> str:
        """Hex sha256 of every byte written so far."""
        return self._digest.hexdigest()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError(f"write to {self.path} after close")
        src = memoryview(data).cast("B")
        pos, n = 0, len(src)
        while pos < n:
            take = min(CHUNK - self._fill, n - pos)
            dst = self._view[self._fill:self._fill + take]
            dst[:] = src[pos:pos + take]
            self._digest.update(dst)           # hashed from the buffer it was just copied to: still in the cache
            self._fill += take
            pos += take
            if self._fill == CHUNK:
                self._write_out(CHUNK)
                self._flushed += CHUNK
                self._fill = 0
        return n

    def _write_out(self, length: int) -> None:
        """Hand the buffer's first `length` bytes to the file at the end of what it holds."""
        done = 0
        while done < length:
            try:
                done += os.pwrite(self._fd, self._view[done:length], self._flushed + done)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._drop_direct()            # a device that wants more than ALIGN, or a short write left us unaligned

    def _drop_direct(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
        self.direct = False

    def close(self) -> None:
        """Write what is buffered and close; the file then holds exactly the bytes written."""
        if self._closed:
            return
        try:
            if self._fill:
                size = self.size
                if self.direct:
                    padded = -(-self._fill // ALIGN) * ALIGN
                    self._view[self._fill:padded] = bytes(padded - self._fill)
                    self._write_out(padded)
                    os.ftruncate(self._fd, size)   # drop the padding: the file ends at the last written byte
                else:
                    self._write_out(self._fill)
                self._flushed, self._fill = size, 0
        finally:
            self._release()

    def abort(self) -> None:
        """Close without writing what is buffered (the caller deletes the file)."""
        if not self._closed:
            self._release()

    def _release(self) -> None:
        self._closed = True
        try:
            os.close(self._fd)
        finally:
            self._view.release()
            try:
                self._buf.close()
            except BufferError:
                pass   # a slice still lives in a traceback being handled: the mapping goes with it

    def __enter__(self) -> "SequentialFile":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
