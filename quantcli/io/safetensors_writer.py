"""A streaming safetensors writer: the header is written from a plan of names, dtypes and shapes, then the data
of each tensor in that order, so memory holds one tensor at a time. Past `max_shard_bytes` the tensors are split
into model-0000i-of-0000n.safetensors shards with a model.safetensors.index.json, as transformers writes them.

Every file goes through io.atomic; the folder writer builds the whole folder under a hidden name and renames it
into place at the end, so a reader never sees half a model.

    >>> import tempfile
    >>> entries = [TensorEntry("w", "I32", (4, 2))]
    >>> with SafetensorsWriter(Path(tempfile.mkdtemp()) / "x.safetensors", entries) as w:
    ...     w.write("w", np.zeros((4, 2), np.int32))
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from .atomic import atomic_file
from .safetensors import DTYPES

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
ALIGN = 8   # header padded with spaces so tensor data starts 8-byte aligned (what safetensors itself does)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str                   # a safetensors dtype name (io.safetensors.DTYPES)
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


def header_bytes(entries: list[TensorEntry], metadata: dict[str, str] | None = None) -> bytes:
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    return len(raw).to_bytes(8, "little") + raw


def _le_bytes(array: np.ndarray, dtype: np.dtype) -> memoryview:
    """The tensor's stored bytes (little-endian), through a view where it already is: no copy in memory."""
    return np.ascontiguousarray(array).astype(dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8).data


class SafetensorsWriter:
    """Writes one safetensors file: header on open, then write() each planned tensor in order, then close."""

    def __init__(self, path: Path, entries: list[TensorEntry], metadata: dict[str, str] | None = None) -> None:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: duplicate tensor names in the plan")
        self.path, self.entries, self._next = Path(path), entries, 0
        self._cm = atomic_file(self.path, large=True)
        self._fp = self._cm.__enter__()
        self._fp.write(header_bytes(entries, metadata))

    def write(self, name: str, array: np.ndarray) -> None:
        if self._next >= len(self.entries):
            raise ValueError(f"{self.path}: {name!r} written after the last planned tensor")
        e = self.entries[self._next]
        if name != e.name:
            raise ValueError(f"{self.path}: expected tensor {e.name!r} next, got {name!r}")
        want = DTYPES[e.dtype]
        if array.dtype != want or tuple(array.shape) != e.shape:
            raise ValueError(f"{self.path}: {name!r} is {array.dtype}{array.shape}, planned {want}{e.shape}")
        self._fp.write(_le_bytes(array, want))
        self._next += 1

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None and self._next != len(self.entries):
            exc = ValueError(f"{self.path}: closed after {self._next} of {len(self.entries)} planned tensors")
            self._cm.__exit__(type(exc), exc, None)
            raise exc
        self._cm.__exit__(kind, exc, tb)


def shard(entries: list[TensorEntry], max_shard_bytes: int | None) -> list[list[TensorEntry]]:
    """Split the plan into consecutive shards of at most max_shard_bytes (a larger tensor gets a shard alone)."""
    if not max_shard_bytes:
        return [entries]
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_tensors(folder: Path, entries: list[TensorEntry], tensors: Iterable[tuple[str, np.ndarray]],
                  max_shard_bytes: int | None = None, metadata: dict[str, str] | None = None) -> list[Path]:
    """Write the planned tensors (yielded in plan order) into folder, sharded, with an index when sharded."""
    shards = shard(entries, max_shard_bytes)
    names = shard_names(len(shards))
    it: Iterator[tuple[str, np.ndarray]] = iter(tensors)
    paths = []
    for part, fname in zip(shards, names):
        with SafetensorsWriter(folder / fname, part, metadata) as w:
            for _ in part:
                w.write(*next(it))
        paths.append(folder / fname)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                 "weight_map": {e.name: fname for part, fname in zip(shards, names) for e in part}}
        with atomic_file(folder / INDEX_NAME) as fp:
            fp.write(json.dumps(index, indent=2, sort_keys=True).encode())
        paths.append(folder / INDEX_NAME)
    return paths


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Build a folder under a hidden name beside `path`; on success it replaces `path`, on error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class PlacedTensorWriter:
    """Every shard of a planned folder open at once, each tensor written at its planned offset in any order.

    The header of each shard is fixed by the plan, so a tensor's place in the file is known before any data
    exists: the files come out byte for byte as write_tensors writes them, whatever order the tensors arrive in.
    The shared pack pass (stages/pack_group.py) needs this because it reads the source once in the order of the
    GGUF outputs, which is not the order of a folder's plan. Each shard goes through io.atomic like every file;
    close() checks that every planned tensor was written, renames the shards and writes the index."""

    def __init__(self, folder: Path, entries: list[TensorEntry], max_shard_bytes: int | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{folder}: duplicate tensor names in the plan")
        self.folder, self.entries = Path(folder), entries
        self._shards = shard(entries, max_shard_bytes)
        self._names = shard_names(len(self._shards))
        self._files: list[tuple[object, BinaryIO]] = []
        self._place: dict[str, tuple[int, int, TensorEntry]] = {}
        self._written: set[str] = set()
        try:
            for i, (part, fname) in enumerate(zip(self._shards, self._names)):
                cm = atomic_file(self.folder / fname)
                fp = cm.__enter__()
                self._files.append((cm, fp))
                head = header_bytes(part, metadata)
                fp.write(head)
                offset = len(head)
                for e in part:
                    self._place[e.name] = (i, offset, e)
                    offset += e.nbytes
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, array: np.ndarray) -> None:
        placed = self._place.get(name)
        if placed is None:
            raise ValueError(f"{self.folder}: {name!r} is not a planned tensor")
        if name in self._written:
            raise ValueError(f"{self.folder}: {name!r} written twice")
        i, offset, e = placed
        want = DTYPES[e.dtype]
        if array.dtype != want or tuple(array.shape) != e.shape:
            raise ValueError(f"{self.folder}: {name!r} is {array.dtype}{array.shape}, planned {want}{e.shape}")
        fp = self._files[i][1]
        fp.seek(offset)
        fp.write(_le_bytes(array, want))
        self._written.add(name)

    def close(self) -> list[str]:
        """Rename every shard into place (inside the caller's partial folder) and write the index; returns the
        file names. Refuses, removing the shards, when a planned tensor was never written."""
        missing = [e.name for e in self.entries if e.name not in self._written]
        if missing:
            self.abort()
            raise ValueError(f"{self.folder}: closed with {len(missing)} planned tensors unwritten (first {missing[0]!r})")
        files, self._files = self._files, []
        for cm, _ in files:
            cm.__exit__(None, None, None)      # type: ignore[attr-defined]
        out = list(self._names)
        if len(self._shards) > 1:
            index = {"metadata": {"total_size": sum(e.nbytes for e in self.entries)},
                     "weight_map": {e.name: fname for part, fname in zip(self._shards, self._names) for e in part}}
            with atomic_file(self.folder / INDEX_NAME) as fp:
                fp.write(json.dumps(index, indent=2, sort_keys=True).encode())
            out.append(INDEX_NAME)
        return out

    def abort(self) -> None:
        """Delete every shard's partial file (an error or Ctrl-C before close)."""
        files, self._files = self._files, []
        for cm, _ in files:
            try:
                cm.__exit__(_Aborted, _Aborted(), None)      # type: ignore[attr-defined]
            except _Aborted:
                pass


class _Aborted(Exception):
    """Thrown into a shard's atomic_file so that it deletes its partial file."""
