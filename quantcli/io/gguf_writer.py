"""A streaming GGUF writer: header, metadata and tensor infos first, then tensor data one tensor at a time.

Because every tensor's type and shape are known from the plan, offsets are computed up front and only one
tensor's bytes are in memory at a time. The file is written under a temporary name in the target folder and
renamed into place by `commit()`; `abort()` (or leaving the `with` block on an exception) removes it.

    with GGUFStreamWriter(Path("out.gguf"), metadata, infos) as w:
        for info in infos:
            w.write_tensor(info.name, data_for(info))
        w.commit()
"""
from __future__ import annotations

import enum
import errno
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    GGMLQuantizationType,
    GGUFValueType,
)

from ..errors import OutputError
from .atomic import partial_name
from .direct_file import SequentialFile
from .gguf_metadata import MetaKV

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the GGUF header describes it; `shape` is in ggml order (ne[0], the row length, first)."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)


def tensor_nbytes(shape: Sequence[int], qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= d
    if shape and shape[0] % block:
        raise ValueError(f"row length {shape[0]} is not a multiple of {qtype.name}'s block of {block}")
    return n // block * size


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _encode_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _encode_strings(items: Sequence[str]) -> bytes:
    """GGUF strings back to back (u64 length, UTF-8 bytes each), built with array operations.

    A vocabulary is tens of thousands of strings written on the conversion's serial path; packing each one
    separately cost about 0.1 s for 32k tokens. Here each string is encoded once, and one scatter lays the
    length fields and the joined text side by side.
    """
    raws = [s.encode("utf-8") for s in items]
    count = len(raws)
    if count == 0:
        return b""
    lengths = np.fromiter(map(len, raws), dtype="<u8", count=count)
    text = np.frombuffer(b"".join(raws), dtype=np.uint8)
    # where string i's length field starts: its 8-byte fields before it plus the text of the strings before it
    heads = np.arange(count, dtype=np.int64) * 8
    heads[1:] += np.cumsum(lengths[:-1].astype(np.int64))
    out = np.empty(count * 8 + len(text), dtype=np.uint8)
    head_bytes = (heads[:, None] + np.arange(8)).reshape(-1)
    out[head_bytes] = lengths.view(np.uint8)
    is_text = np.ones(len(out), dtype=bool)
    is_text[head_bytes] = False
    out[is_text] = text
    return out.tobytes()


def _encode_value(value: object, vtype: GGUFValueType, subtype: GGUFValueType | None) -> bytes:
    if vtype == GGUFValueType.STRING:
        return _encode_string(str(value))
    if vtype == GGUFValueType.ARRAY:
        if subtype is None or subtype == GGUFValueType.ARRAY:
            raise ValueError("an ARRAY value needs a scalar or string element type")
        items = list(value)  # type: ignore[call-overload]
        head = struct.pack("<IQ", int(subtype), len(items))
        if subtype == GGUFValueType.STRING:
            return head + _encode_strings(items)
        return head + np.asarray(items, dtype=np.dtype(_SCALAR_FORMATS[subtype])).tobytes()
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def encode_metadata(kvs: Sequence[MetaKV]) -> bytes:
    seen: set[str] = set()
    parts = []
    for kv in kvs:
        if kv.key in seen:
            raise ValueError(f"metadata key {kv.key!r} appears twice")
        seen.add(kv.key)
        parts.append(_encode_string(kv.key) + struct.pack("<I", int(kv.vtype)) + _encode_value(kv.value, kv.vtype, kv.subtype))
    return b"".join(parts)


def metadata_nbytes(kvs: Sequence[MetaKV]) -> int:
    """len(encode_metadata(kvs)), without building the bytes of the large string arrays (the vocabulary and
    merges): their size is 8 bytes per string plus the UTF-8 length of their concatenation."""
    if len({kv.key for kv in kvs}) != len(kvs):
        encode_metadata(kvs)        # raises, naming the key that appears twice
    total = 0
    for kv in kvs:
        total += 8 + len(kv.key.encode("utf-8")) + 4
        if kv.vtype == GGUFValueType.ARRAY and kv.subtype == GGUFValueType.STRING:
            items = list(kv.value)  # type: ignore[call-overload]
            total += 4 + 8 + 8 * len(items) + len("".join(items).encode("utf-8"))
        else:
            total += len(_encode_value(kv.value, kv.vtype, kv.subtype))
    return total


# Errors that more free space would cure; any other write error needs another output place or name.
_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def write_error_hint(exc: OSError) -> str:
    """The fix for a failed write: free space only when space was the problem."""
    if exc.errno in _SPACE_ERRNOS:
        return "Free disk space or choose another output folder, then run again."
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return "Something that is not a file is in the way of the output name: remove it or choose another -o."
    return "Choose an output folder you can write to (-o), then run again."


class _State(enum.Enum):
    DATA = "writing tensor data"
    COMMITTED = "committed"
    ABORTED = "aborted"


def alignment_of(metadata: Sequence[MetaKV]) -> int:
    for kv in metadata:
        if kv.key == "general.alignment":
            return int(kv.value)  # type: ignore[call-overload]
    return GGUF_DEFAULT_ALIGNMENT


def planned_size(metadata: Sequence[MetaKV], tensors: Sequence[TensorInfo]) -> int:
    """The exact size in bytes of the file these arguments produce (for --dry-run and the disk-space check)."""
    align = alignment_of(metadata)
    header = 4 + 4 + 8 + 8 + metadata_nbytes(metadata)
    header += sum(8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8 for t in tensors)
    data = 0
    for t in tensors:
        data = _pad(data, align) + t.nbytes
    return _pad(header, align) + data


class GGUFStreamWriter:
    """Writes one GGUF file; tensors must arrive in the order of `tensors`, each with exactly its planned bytes."""

    def __init__(self, path: Path, metadata: Sequence[MetaKV], tensors: Sequence[TensorInfo]) -> None:
        self.path = Path(path)
        self.tmp_path = partial_name(self.path)
        self.align = alignment_of(metadata)
        self.tensors = list(tensors)
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor {dup!r} is planned twice")
        self._next = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # around the page cache and hashed as written (io/direct_file.py says why)
            self._fp = SequentialFile(self.tmp_path)
        except OSError as exc:
            raise OutputError(f"cannot write to {self.path.parent}: {exc.strerror}.",
                              hint="Choose an output folder you can write to (-o).") from exc
        self._state = _State.DATA
        try:
            self._write_header(metadata)
        except BaseException:
            self.abort()
            raise

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self._fp.write(data)
        except OSError as exc:
            self.abort()
            raise OutputError(f"writing {self.path} failed: {exc.strerror}.", hint=write_error_hint(exc)) from exc

    def _write_header(self, metadata: Sequence[MetaKV]) -> None:
        infos = []
        offset = 0
        for t in self.tensors:
            offset = _pad(offset, self.align)
            infos.append(_encode_string(t.name) + struct.pack("<I", len(t.shape))
                         + struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", int(t.qtype), offset))
            offset += t.nbytes
        head = struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(self.tensors), len(metadata))
        self._write(head + encode_metadata(metadata) + b"".join(infos))
        pos = self._fp.size
        self._write(b"\0" * (_pad(pos, self.align) - pos))
        self._data_start = self._fp.size

    def write_tensor(self, name: str, data: np.ndarray | bytes | memoryview) -> None:
        if self._state is not _State.DATA:
            raise RuntimeError(f"write_tensor({name!r}) called in state {self._state.value!r}")
        if self._next >= len(self.tensors):
            raise RuntimeError(f"write_tensor({name!r}): all {len(self.tensors)} planned tensors are written")
        info = self.tensors[self._next]
        if name != info.name:
            raise RuntimeError(f"write_tensor got {name!r} but the plan expects {info.name!r} next")
        buf = memoryview(np.ascontiguousarray(data)).cast("B") if isinstance(data, np.ndarray) else memoryview(data).cast("B")
        if len(buf) != info.nbytes:
            raise RuntimeError(f"tensor {name!r} has {len(buf)} bytes, the plan says {info.nbytes}")
        rel = self._fp.size - self._data_start
        self._write(b"\0" * (_pad(rel, self.align) - rel))
        self._write(buf)
        self._next += 1

    @property
    def sha256(self) -> str:
        """Hex sha256 of every byte written so far: the whole file's once all tensors are written."""
        return self._fp.sha256

    def commit(self) -> None:
        """Flush and rename the finished file to its final name (no fsync: io/atomic.py says why)."""
        if self._next != len(self.tensors):
            raise RuntimeError(f"commit() after {self._next} of {len(self.tensors)} tensors")
        try:
            self._fp.close()
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"finishing {self.path} failed: {exc.strerror}.", hint=write_error_hint(exc)) from exc
        self._state = _State.COMMITTED

    def abort(self) -> None:
        """Close and delete the temporary file; the final name is never touched."""
        if self._state is _State.COMMITTED:
            return
        self._state = _State.ABORTED
        try:
            self._fp.abort()
        except (OSError, AttributeError):
            pass
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "GGUFStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # type: ignore[no-untyped-def]
        if self._state is not _State.COMMITTED:
            self.abort()
