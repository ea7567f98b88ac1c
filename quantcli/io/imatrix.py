"""Writers of importance matrices in the two file formats llama.cpp's imatrix tool writes and its quantizer reads.

The statistics of one matrix are the sum over tokens of the squared input, per input column, and how many tokens
were seen; a 3-D weight (MoE experts) keeps one row of sums and one count per expert.

GGUF (the tool's default since 2025; quantcli/quant/imatrix.py reads it):
    metadata  general.type = "imatrix", imatrix.datasets (string array), imatrix.chunk_count (u32),
              imatrix.chunk_size (u32: tokens per chunk)
    tensors   per weight name W, in sorted name order: "W.in_sum2" F32 with ggml shape (n_cols, n_mat), the raw
              sums; "W.counts" F32 with ggml shape (1, n_mat), the raw token counts (llama.cpp rounds them back
              to integers when it reads them)
Legacy .dat (little-endian, no header):
    int32 n_entries; per entry (sorted names, entries without any data skipped): int32 name length, the name's
    bytes, int32 ncall, int32 n_values, n_values float32; then int32 chunk_count, int32 dataset length and the
    dataset's bytes. ncall = ceil(max count / chunk_size) and each value is (sum / count) * ncall, so a reader
    dividing by ncall gets the mean square; an expert that saw no token stores 1 * ncall.

    >>> stats = ImatrixStats({"blk.0.attn_q.weight": MatrixStats(np.ones((1, 64), np.float32), np.array([512]))},
    ...                      datasets=("calib.txt",), chunk_count=1, chunk_size=512)
    >>> write_imatrix_gguf(Path("imatrix.gguf"), stats)             # doctest: +SKIP
"""
from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, GGMLQuantizationType, GGUFValueType

from ..errors import OutputError
from .gguf_metadata import MetaKV, kv_array, kv_str, kv_u32
from .atomic import atomic_file
from .gguf_writer import encode_metadata

# The file format's vocabulary, in one place (llama.cpp: tools/imatrix/imatrix.cpp, common/imatrix-loader.h).
KEY_TYPE = "general.type"
TYPE_IMATRIX = "imatrix"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUFFIX_SUMS = ".in_sum2"
SUFFIX_COUNTS = ".counts"
FORMATS = ("gguf", "dat")


@dataclass(frozen=True)
class MatrixStats:
    """One weight's statistics: `sums` float32 [n_mat, n_cols] (sum of x**2 per column), `counts` int64 [n_mat]."""

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.sums.ndim != 2 or self.counts.shape != (self.sums.shape[0],):
            raise ValueError(f"sums {self.sums.shape} and counts {self.counts.shape} do not describe the same matrices")

    @property
    def mean_squares(self) -> np.ndarray:
        """sums / count per matrix, 1 where a matrix saw no token: the weights llama-quantize derives."""
        counts = self.counts.astype(np.float32)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(counts > 0, self.sums / np.where(counts > 0, counts, 1), np.float32(1)).astype(np.float32)


@dataclass(frozen=True)
class ImatrixStats:
    """Everything an imatrix file holds: per-weight statistics (GGUF tensor names) and the run's description."""

    entries: Mapping[str, MatrixStats]
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int


def write_imatrix_gguf(path: Path, stats: ImatrixStats) -> None:
    """Write `stats` as llama.cpp's GGUF imatrix, atomically.

    The whole file is built in memory (an imatrix holds a few floats per column, megabytes at most) because the
    layout must end with the last tensor padded to the alignment: llama.cpp loads imatrix files with their data
    (no_alloc=false) and then reads every tensor's padded size, the last one's too.
    """
    metadata: list[MetaKV] = [
        kv_str(KEY_TYPE, TYPE_IMATRIX),
        kv_array(KEY_DATASETS, list(stats.datasets), GGUFValueType.STRING),
        kv_u32(KEY_CHUNK_COUNT, stats.chunk_count),
        kv_u32(KEY_CHUNK_SIZE, stats.chunk_size),
    ]
    tensors: list[tuple[str, tuple[int, ...], bytes]] = []
    for name in sorted(stats.entries):
        entry = stats.entries[name]
        n_mat, n_cols = entry.sums.shape
        tensors.append((name + SUFFIX_SUMS, (n_cols, n_mat), np.ascontiguousarray(entry.sums, dtype="<f4").tobytes()))
        tensors.append((name + SUFFIX_COUNTS, (1, n_mat), entry.counts.astype("<f4").tobytes()))
    align = GGUF_DEFAULT_ALIGNMENT
    infos, blobs, offset = [], [], 0
    for name, shape, data in tensors:
        raw = name.encode("utf-8")
        infos.append(struct.pack("<Q", len(raw)) + raw + struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
                     + struct.pack("<IQ", int(GGMLQuantizationType.F32), offset))
        padded = data + b"\0" * (-len(data) % align)
        blobs.append(padded)
        offset += len(padded)
    head = struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(tensors), len(metadata))
    head += encode_metadata(metadata) + b"".join(infos)
    head += b"\0" * (-len(head) % align)
    try:
        with atomic_file(Path(path)) as fp:
            fp.write(head + b"".join(blobs))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}.", hint="Choose a folder you can write to (-o).") from exc


def legacy_values(entry: MatrixStats, chunk_size: int) -> tuple[int, np.ndarray] | None:
    """(ncall, values) of one .dat entry, None when no matrix of the weight saw a token (the tool skips it)."""
    if not (entry.counts > 0).any():
        return None
    ncall = (int(entry.counts.max()) + chunk_size - 1) // chunk_size
    counts = entry.counts.astype(np.float32)[:, None]
    sums = np.where(counts > 0, entry.sums, np.float32(1))
    values = (sums / np.where(counts > 0, counts, np.float32(1))) * np.float32(ncall)
    return ncall, values.astype("<f4").reshape(-1)


def write_imatrix_dat(path: Path, stats: ImatrixStats) -> None:
    """Write `stats` in llama.cpp's legacy .dat layout, atomically (the last dataset names the file's source)."""
    if stats.chunk_size <= 0:
        raise ValueError("the legacy format needs the chunk size to turn counts into calls")
    body = []
    for name in sorted(stats.entries):
        legacy = legacy_values(stats.entries[name], stats.chunk_size)
        if legacy is None:
            continue
        ncall, values = legacy
        raw = name.encode("utf-8")
        body.append(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size) + values.tobytes())
    dataset = (stats.datasets[-1] if stats.datasets else "").encode("utf-8")
    data = (struct.pack("<i", len(body)) + b"".join(body) + struct.pack("<i", stats.chunk_count)
            + struct.pack("<i", len(dataset)) + dataset)
    try:
        with atomic_file(Path(path)) as fp:
            fp.write(data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}.", hint="Choose a folder you can write to (-o).") from exc


def write_imatrix(path: Path, stats: ImatrixStats, fmt: str = "gguf") -> None:
    """Write in `fmt` ("gguf" or "dat")."""
    if fmt == "gguf":
        write_imatrix_gguf(path, stats)
    elif fmt == "dat":
        write_imatrix_dat(path, stats)
    else:
        raise ValueError(f"unknown imatrix format {fmt!r}; expected one of {FORMATS}")
