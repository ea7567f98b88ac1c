"""A lazy safetensors reader that treats every file as hostile.

The header is checked the way the safetensors project checks it: a size cap, known dtypes, non-negative
integer shapes, byte lengths that equal shape x itemsize, data regions contiguous from 0, and header plus
data equal to the file length exactly. Tensor data is read on request, one tensor at a time, so the resident
memory of a conversion stays bounded by the tensors in flight, not the model: `read_tensor` preads into a
fresh buffer of its own; `map_tensor` (the quantize stage's read path) maps the tensor's pages of the page
cache read-only and unmaps them when the array is freed, which saves the fresh buffer's zeroed pages and the
copy out of the page cache (about 1 s of CPU per 2 GB).

    st = SafetensorsFile.open(Path("model.safetensors"))
    st.tensors["model.norm.weight"].shape
    # -> (576,)
    x = st.read("model.norm.weight")          # numpy array in the stored dtype (BF16 as uint16)
"""
from __future__ import annotations

import errno
import functools
import json
import mmap
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError, UnsupportedError
from .files import require_regular

HEADER_SIZE_CAP = 100 * 1024 * 1024  # the safetensors project's own cap on the JSON header
# Below this, map_tensor reads instead: mapping and unmapping a few pages costs more than copying them.
MAP_MIN_BYTES = 1 << 20
# madvise(MADV_POPULATE_READ) (Linux 5.14): map every page now, reading from disk what is not cached. Python 3.11's
# mmap module does not name it; older kernels answer EINVAL, and then the pages are faulted in as they are read.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """libc's madvise through ctypes, which releases the GIL for the call (mmap.madvise holds it, so populating a
    large tensor, or waiting for the disk, would stop the main thread between kernel calls); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int

    def call(addr: int, length: int, advice: int) -> int:
        return 0 if fn(addr, length, advice) == 0 else ctypes.get_errno()
    return call

# safetensors dtype name -> (numpy dtype of the stored bytes, itemsize). BF16 has no numpy dtype: it is read
# as uint16 and widened by to_float32.
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute offset, length; shape in the stored (row-major) order."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    path: Path
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _bad(path: Path, what: str) -> InputError:
    return InputError(f"{path}: {what}.",
                      hint="The file is truncated or corrupt: download it again (quantcli download --force).")


@dataclass(frozen=True)
class SafetensorsFile:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @classmethod
    def open(cls, path: Path) -> "SafetensorsFile":
        path = Path(path)
        size = require_regular(path, "safetensors file").st_size
        try:
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise _bad(path, f"only {size} bytes, too short for a safetensors header")
                (n,) = struct.unpack("<Q", head)
                if n > HEADER_SIZE_CAP:
                    raise _bad(path, f"header claims {n} bytes, above the {HEADER_SIZE_CAP}-byte cap")
                if 8 + n > size:
                    raise _bad(path, f"header claims {n} bytes but the file has {size}")
                raw = f.read(n)
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}.", hint="Check that the file exists and is readable.") from exc
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(path, f"header is not valid JSON ({exc})") from exc
        except RecursionError as exc:  # a valid header is two levels deep; Python's parser recurses per level
            raise _bad(path, "header nests JSON too deeply") from exc
        if not isinstance(header, dict):
            raise _bad(path, "header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise _bad(path, "__metadata__ is not a map of strings")
        data_start = 8 + n
        data_len = size - data_start
        tensors: dict[str, TensorInfo] = {}
        spans: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                raise _bad(path, f"tensor {name!r} entry must have exactly dtype, shape and data_offsets")
            dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in DTYPES:
                raise UnsupportedError(f"{path}: tensor {name!r} has dtype {dtype!r}, which quantcli does not read.",
                                       hint=f"Supported dtypes: {', '.join(DTYPES)}.")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                    or not 0 <= offs[0] <= offs[1]):
                raise _bad(path, f"tensor {name!r} has invalid data_offsets {offs!r}")
            n_el = 1
            for d in shape:
                n_el *= d
            nbytes = n_el * DTYPES[dtype].itemsize
            if offs[1] - offs[0] != nbytes:
                raise _bad(path, f"tensor {name!r}: shape {shape} x {dtype} is {nbytes} bytes but its offsets span "
                                 f"{offs[1] - offs[0]}")
            spans.append((offs[0], offs[1], name))
            tensors[name] = TensorInfo(name, dtype, tuple(shape), path, data_start + offs[0], nbytes)
        spans.sort()
        end = 0
        for begin, stop, name in spans:
            if begin != end:
                raise _bad(path, f"tensor {name!r} starts at {begin}, expected {end} (overlap or gap)")
            end = stop
        if end != data_len:
            raise _bad(path, f"tensor data ends at byte {end} but the file holds {data_len} data bytes")
        return cls(path, tensors, meta)

    def read(self, name: str) -> np.ndarray:
        return read_tensor(self.tensors[name])


def read_tensor(info: TensorInfo) -> np.ndarray:
    """The tensor's values in the stored dtype (BF16 as uint16 bit patterns), shaped as stored."""
    out = np.empty(info.nbytes, dtype=np.uint8)
    fd = os.open(info.path, os.O_RDONLY)
    try:
        view = memoryview(out)
        done = 0
        while done < info.nbytes:
            got = os.preadv(fd, [view[done:]], info.offset + done)
            if got <= 0:
                raise _bad(info.path, f"file ended while reading tensor {info.name!r}")
            done += got
    finally:
        os.close(fd)
    return out.view(DTYPES[info.dtype]).reshape(info.shape)


def map_tensor(info: TensorInfo) -> np.ndarray:
    """read_tensor()'s values, read-only, backed by the file's pages in the page cache instead of a copy.

    The pages are mapped on the calling thread (the read-ahead thread of a conversion), so a reader of the
    array never waits for the disk, and they are unmapped when the last view of the array is freed: what is
    resident stays bounded by the arrays alive, as with read_tensor. A file shorter than its header says is the
    same InputError as read_tensor's. Small tensors, and files that cannot be mapped, are read instead."""
    if info.nbytes < MAP_MIN_BYTES:
        return read_tensor(info)
    start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
    try:
        fd = os.open(info.path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot read {info.path}: {exc.strerror}.",
                         hint="Check that the file exists and is readable.") from exc
    try:
        mapped = mmap.mmap(fd, info.offset + info.nbytes - start, access=mmap.ACCESS_READ, offset=start)
    except ValueError as exc:   # Python checks the length against the file's size before mapping
        raise _bad(info.path, f"file ended while reading tensor {info.name!r}") from exc
    except OSError:             # a file system without mmap: read the bytes instead
        return read_tensor(info)
    finally:
        os.close(fd)
    # frombuffer keeps the mapping alive: it is unmapped when the last array over it is freed
    whole = np.frombuffer(mapped, dtype=np.uint8)
    madvise = _madvise()
    failed = madvise(whole.__array_interface__["data"][0], whole.nbytes, _MADV_POPULATE_READ) if madvise else 0
    if failed and failed != errno.EINVAL:
        raise _bad(info.path, f"reading tensor {info.name!r} failed ({os.strerror(failed)})")
    out = whole[info.offset - start:info.offset - start + info.nbytes]
    return out.view(DTYPES[info.dtype]).reshape(info.shape)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Widen stored values to float32 exactly (BF16 by a 16-bit shift; F64 rounds to nearest)."""
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype not in FLOAT_DTYPES:
        raise UnsupportedError(f"a weight of dtype {dtype} cannot be converted.",
                               hint="Only F32, F16, BF16 and F64 weights are supported.")
    return array.astype(np.float32, copy=False)
