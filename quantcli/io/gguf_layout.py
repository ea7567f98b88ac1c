"""A fast, hostile-file-safe scan of a GGUF file's layout: where each metadata entry and tensor lives.

gguf-py's GGUFReader decodes every metadata value into numpy views, which takes seconds on a 50k-token
vocabulary; splitting and publishing only need byte ranges, a few scalar values and the tensor table. This
scan walks the header with struct arithmetic, keeps the raw bytes' positions, decodes only small scalars
and strings, and checks every length and offset against the file's size before using it.

    layout = read_layout(Path("model-Q8_0.gguf"))
    layout.values["general.architecture"], len(layout.tensors), round(layout.bits_per_weight, 2)
    # -> ('llama', 21, 8.5)
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from ..errors import InputError
from .files import require_regular

MAX_DIMS = 4                     # GGML_MAX_DIMS
MAX_COUNT = 1 << 32              # more tensors, keys or array items than any file holds: a corrupt header
MAX_STRING = 1 << 30             # one string longer than 1 GiB is a corrupt length
ARRAY_HEAD = 8                   # items of each array decoded for display (inspect); the rest are only skipped
SUPPORTED_VERSIONS = (2, 3)
_SCALAR_SIZES: dict[int, int] = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}
_SCALAR_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class KVSpan:
    key: str
    start: int                   # file offset of the entry (its key's length field)
    end: int                     # one past its last byte


@dataclass(frozen=True)
class TensorSpan:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]       # ggml order (row length first)
    info_start: int              # file offset of the tensor's description
    info_end: int                # one past its last byte (the uint64 offset field ends here)
    data_offset: int             # absolute file offset of the data
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFLayout:
    path: Path
    version: int
    kvs: list[KVSpan]
    values: dict[str, object]    # scalar and string values (arrays are skipped)
    tensors: list[TensorSpan]
    alignment: int
    data_start: int
    size: int
    array_lengths: dict[str, int] = field(default_factory=dict)
    array_heads: dict[str, list[object]] = field(default_factory=dict)   # the first ARRAY_HEAD items of each

    @property
    def bits_per_weight(self) -> float:
        n = sum(t.n_elements for t in self.tensors)
        return 8.0 * sum(t.n_bytes for t in self.tensors) / n if n else 0.0


class _Cursor:
    def __init__(self, buf: memoryview | mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> InputError:
        return InputError(f"{self.path} is not a valid GGUF file: {what} (at byte {self.pos}).",
                          hint="The file is truncated or damaged; re-create it with quantcli convert.")

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"needs {n} more bytes but the file ends")
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str) -> int | float | bool:
        start = self.take(struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, start)[0]

    def count(self, what: str) -> int:
        n = int(self.unpack("<Q"))
        if n > MAX_COUNT:
            raise self.fail(f"{what} {n} is implausibly large")
        return n

    def string(self, decode: bool = True, lenient: bool = False) -> str:
        """The next string; `lenient` for vocabulary entries, which may hold partial UTF-8 sequences."""
        n = int(self.unpack("<Q"))
        if n > MAX_STRING:
            raise self.fail(f"a string claims {n} bytes")
        start = self.take(n)
        if not decode:
            return ""
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8", "replace" if lenient else "strict")
        except UnicodeDecodeError as exc:
            raise self.fail("a key or name is not UTF-8") from exc

    def vtype(self) -> int:
        t = int(self.unpack("<I"))
        if t not in _SCALAR_SIZES and t not in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            raise self.fail(f"unknown value type {t}")
        return t


def _scan(cur: _Cursor, path: Path) -> GGUFLayout:
    if cur.size < 24:
        raise cur.fail(f"only {cur.size} bytes, too short for a GGUF header")
    if int(cur.unpack("<I")) != GGUF_MAGIC:
        raise cur.fail("it does not start with the GGUF magic")
    version = int(cur.unpack("<I"))
    if version not in SUPPORTED_VERSIONS:
        raise cur.fail(f"GGUF version {version} is not one of {SUPPORTED_VERSIONS}")
    n_tensors, n_kv = cur.count("tensor count"), cur.count("metadata count")
    kvs: list[KVSpan] = []
    values: dict[str, object] = {}
    arrays: dict[str, int] = {}
    heads: dict[str, list[object]] = {}
    for _ in range(n_kv):
        start = cur.pos
        key = cur.string()
        t = cur.vtype()
        if t == GGUFValueType.STRING:
            values[key] = cur.string()
        elif t == GGUFValueType.ARRAY:
            sub = cur.vtype()
            n = cur.count("array length")
            arrays[key] = n
            if sub == GGUFValueType.ARRAY:
                raise cur.fail(f"{key} is an array of arrays, which no model file uses")
            if sub == GGUFValueType.STRING:
                heads[key] = [cur.string(lenient=True) for _ in range(min(n, ARRAY_HEAD))]
                for _ in range(n - len(heads[key])):
                    cur.string(decode=False)
            else:
                heads[key] = [cur.unpack(_SCALAR_FORMATS[sub]) for _ in range(min(n, ARRAY_HEAD))]
                cur.take((n - len(heads[key])) * _SCALAR_SIZES[sub])
        else:
            values[key] = cur.unpack(_SCALAR_FORMATS[t])
        kvs.append(KVSpan(key, start, cur.pos))
    if len({k.key for k in kvs}) != len(kvs):
        raise cur.fail("a metadata key appears twice")
    alignment = values.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
    raw_tensors = []
    for _ in range(n_tensors):
        start = cur.pos
        name = cur.string()
        n_dims = int(cur.unpack("<I"))
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(int(cur.unpack("<Q")) for _ in range(n_dims))
        raw_type = int(cur.unpack("<I"))
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise cur.fail(f"tensor {name!r} has unknown type {raw_type}") from exc
        offset = int(cur.unpack("<Q"))
        if shape[0] % block:
            raise cur.fail(f"tensor {name!r}: row of {shape[0]} is not a multiple of {qtype.name}'s block {block}")
        n = 1
        for d in shape:
            n *= d
        raw_tensors.append((name, qtype, shape, start, cur.pos, offset, n // block * type_size))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    tensors = []
    names: set[str] = set()
    for name, qtype, shape, start, end, offset, n_bytes in raw_tensors:
        if name in names:
            raise cur.fail(f"tensor {name!r} appears twice")
        names.add(name)
        if offset % alignment or data_start + offset + n_bytes > cur.size:
            raise cur.fail(f"tensor {name!r} data ({n_bytes} bytes at {offset}) is misaligned or past the end")
        tensors.append(TensorSpan(name, qtype, shape, start, end, data_start + offset, n_bytes))
    return GGUFLayout(path, version, kvs, values, tensors, alignment, data_start, cur.size, arrays, heads)


def read_layout(path: Path) -> GGUFLayout:
    """Scan `path`'s header; any inconsistency is an InputError naming the byte where it was found."""
    path = Path(path)
    if path.exists():
        require_regular(path, "GGUF file")  # opening a FIFO would block until a writer appears
    try:
        with open(path, "rb") as fp:
            size = fp.seek(0, 2)
            if size == 0:
                raise InputError(f"{path} is empty, not a GGUF file.", hint="Re-create it with quantcli convert.")
            with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan(_Cursor(mm, path), path)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}.", hint="Check that the file exists and is readable.") from exc
