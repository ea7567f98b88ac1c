"""Split a GGUF file into shards that llama.cpp loads as one model (the layout of llama.cpp's gguf-split).

Shard i of n is named `<prefix>-<i:05d>-of-<n:05d>.gguf` (1-based). Every shard is a complete GGUF file
holding a run of consecutive tensors; the first carries all of the original metadata, and every shard carries
`split.no` (0-based, uint16), `split.count` (uint16) and `split.tensors.count` (int32, tensors over all
shards). llama.cpp opens the first shard, reads split.count and derives the other names from the first's.

Shards are cut like gguf-split's `--split-max-size`: tensors are taken in file order and a new shard starts
when the next tensor's data (padded to 32 bytes) would push the current shard's tensor data past the limit.
A tensor larger than the limit gets a shard of its own (a tensor cannot be cut). Metadata and tensor
descriptions are copied byte for byte, never decoded and re-encoded.

    paths = split_gguf(Path("big.gguf"), Path("publish/"), parse_size("2G"))
    [p.name for p in paths]
    # -> ['big-00001-of-00003.gguf', 'big-00002-of-00003.gguf', 'big-00003-of-00003.gguf']
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGUFValueType, Keys

from ..errors import InputError, OutputError
from .gguf_metadata import MetaKV
from .atomic import atomic_file
from .gguf_writer import encode_metadata

SPLIT_KEYS = (Keys.Split.LLM_KV_SPLIT_NO, Keys.Split.LLM_KV_SPLIT_COUNT, Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT)
SHARD_NAME = "{prefix}-{index:05d}-of-{count:05d}.gguf"
SHARD_PATTERN = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 0xFFFF                  # split.count is a uint16
COPY_CHUNK = 1 << 24                 # bytes per read when copying tensor data
SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}   # decimal, as gguf-split and the hub count


def parse_size(text: str) -> int:
    """'2G' -> 2_000_000_000; accepts K, M, G, T with an optional B ('500MB'), decimal units.

    >>> parse_size("2G"), parse_size("500MB"), parse_size("1.5G")
    (2000000000, 500000000, 1500000000)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text).upper())
    if m is None or float(m.group(1)) <= 0:
        raise InputError(f"{text!r} is not a size.", hint="Write a positive number with a unit, e.g. 2G, 500M, 48GB.")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2)])


def shard_name(prefix: str, index: int, count: int) -> str:
    """The file name of shard `index` (0-based) of `count`, as llama.cpp's llama_split_path builds it."""
    return SHARD_NAME.format(prefix=prefix, index=index + 1, count=count)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class _Tensor:
    name: str
    info: bytes            # the original tensor description up to (not including) its offset field
    n_bytes: int
    src_offset: int        # absolute position of the data in the source file


@dataclass(frozen=True)
class _Source:
    kv_raw: list[tuple[str, bytes]]
    tensors: list[_Tensor]
    alignment: int


def _read_source(path: Path) -> _Source:
    from .gguf_layout import read_layout

    layout = read_layout(path)
    for key in SPLIT_KEYS:
        if key in layout.values:
            raise InputError(f"{path} is already a shard ({key} is set).", hint="Split the unsplit file instead.")
    with open(path, "rb") as fp:
        def span(start: int, end: int) -> bytes:
            fp.seek(start)
            return fp.read(end - start)

        kvs = [(kv.key, span(kv.start, kv.end)) for kv in layout.kvs]
        # The last 8 bytes of a tensor description are its data offset, which each shard rewrites.
        tensors = [_Tensor(t.name, span(t.info_start, t.info_end - 8), t.n_bytes, t.data_offset) for t in layout.tensors]
    return _Source(kvs, tensors, layout.alignment)


def plan_shards(sizes: Sequence[int], max_bytes: int) -> list[list[int]]:
    """Tensor indices per shard for tensors of `sizes` bytes (see the module docstring for the rule)."""
    shards: list[list[int]] = [[]]
    current = 0
    for i, n in enumerate(sizes):
        padded = _pad(n, GGUF_DEFAULT_ALIGNMENT)
        if shards[-1] and current + padded > max_bytes:
            shards.append([])
            current = 0
        shards[-1].append(i)
        current += padded
    return shards


def _split_kvs(no: int, count: int, n_tensors: int) -> bytes:
    return encode_metadata([
        MetaKV(Keys.Split.LLM_KV_SPLIT_NO, no, GGUFValueType.UINT16),
        MetaKV(Keys.Split.LLM_KV_SPLIT_COUNT, count, GGUFValueType.UINT16),
        MetaKV(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, n_tensors, GGUFValueType.INT32),
    ])


def _copy_range(src: BinaryIO, dst: BinaryIO, offset: int, length: int) -> None:
    src.seek(offset)
    left = length
    while left:
        chunk = src.read(min(COPY_CHUNK, left))
        if not chunk:
            raise OutputError("the source GGUF ended while copying tensor data.", hint="Re-create the source file.")
        dst.write(chunk)
        left -= len(chunk)


def _write_shard(path: Path, src: BinaryIO, source: _Source, members: list[int], no: int, count: int) -> None:
    first = no == 0
    kv_bytes = (b"".join(raw for _, raw in source.kv_raw) if first else b"") + _split_kvs(no, count, len(source.tensors))
    n_kv = (len(source.kv_raw) if first else 0) + len(SPLIT_KEYS)
    align = source.alignment if first else GGUF_DEFAULT_ALIGNMENT
    infos, offset = [], 0
    for i in members:
        t = source.tensors[i]
        offset = _pad(offset, align)
        infos.append(t.info + struct.pack("<Q", offset))
        offset += t.n_bytes
    head = struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(members), n_kv) + kv_bytes + b"".join(infos)
    with atomic_file(path, large=True) as out:
        out.write(head)
        out.write(b"\0" * (_pad(len(head), align) - len(head)))
        pos = 0
        for i in members:
            t = source.tensors[i]
            out.write(b"\0" * (_pad(pos, align) - pos))
            pos = _pad(pos, align)
            _copy_range(src, out, t.src_offset, t.n_bytes)
            pos += t.n_bytes


def split_gguf(path: Path, out_dir: Path, max_bytes: int, *, prefix: str | None = None) -> list[Path]:
    """Write the shards of `path` into `out_dir`; a file whose tensors fit in one shard is not split ([path]).

    Each shard is written under a temporary name and renamed when complete; on error none is left behind.
    """
    path = Path(path)
    source = _read_source(path)
    shards = plan_shards([t.n_bytes for t in source.tensors], max_bytes)
    if len(shards) <= 1:
        return [path]
    if len(shards) > MAX_SHARDS:
        raise InputError(f"{path} would need {len(shards)} shards; GGUF allows {MAX_SHARDS}.",
                         hint="Choose a larger --max-shard-size.")
    prefix = prefix or path.name.removesuffix(".gguf")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        with open(path, "rb") as src:
            for no, members in enumerate(shards):
                target = out_dir / shard_name(prefix, no, len(shards))
                _write_shard(target, src, source, members, no, len(shards))
                written.append(target)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written
