"""The quantize stage: run a Plan over a checkpoint and stream the GGUF file to disk.

A few tensors are in memory at a time (docs/pipeline.md counts them), so peak memory follows the largest tensors,
never the model. 16-bit sources written in their own type skip the float32 round trip entirely, and 16-bit sources
quantized to a block type reach the kernels as stored: each kernel thread widens and checks one row at a time.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import InputError, OutputError
from ..io.checkpoint import Checkpoint
from ..plan.gguf import Plan, TensorPlan
from ..quant.backend import Backend, get_backend
from ..quant.base import quant_class
from ..quant.imatrix import ImportanceMatrix

F32, F16, BF16 = GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16
_RAW_DTYPES = {F32: "F32", F16: "F16", BF16: "BF16"}
CHUNK_VALUES = 1 << 22       # values widened to float32 at a time when quantizing (16 MB)

Progress = Callable[[TensorPlan, int], None]


def float32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bit patterns, nearest-even (ggml's conversion; NaN was rejected earlier)."""
    u = x.view(np.uint32)
    return ((u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def _nonfinite_error(t: TensorPlan, bad: int) -> InputError:
    what = t.spec.sources[0] if t.spec.sources else f"{t.name} (computed from config.json)"
    return InputError(f"tensor {what!r} holds {bad} NaN/Inf values.",
                      hint="The checkpoint is corrupt or was saved after a diverged training step; fix the weights.")


def _overflow_error(t: TensorPlan, rows: np.ndarray, bad_rows: np.ndarray, first_row: int = 0) -> InputError:
    """Name the tensor, the value and the row that do not fit the target type."""
    what = t.spec.sources[0] if t.spec.sources else f"{t.name} (computed from config.json)"
    r = int(np.flatnonzero(bad_rows)[0])
    value = float(rows[r][np.argmax(np.abs(rows[r]))])
    kind = "the largest F16 value is 65504" if t.qtype == F16 else (
        "it rounds to Inf in BF16" if t.qtype == BF16 else f"{t.qtype.name}'s fp16 block scales overflow")
    return InputError(f"tensor {what!r} holds {value:g} (row {first_row + r}), too large for {t.qtype.name} "
                      f"(as {t.name}): {kind}.",
                      hint=f"Check the weights; to keep such values write this tensor as F32 "
                           f"(--tensor-type '{t.name.replace('.', chr(92) + '.')}=F32').")


def _overflowed_rows(qtype: GGMLQuantizationType, encoded: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per encoded row, True where a finite input became Inf/NaN (or, in a block type, zeros) in the target type."""
    if qtype == F16:
        return ~np.isfinite(encoded).all(axis=1)
    if qtype == BF16:
        return ((encoded & np.uint16(0x7F80)) == np.uint16(0x7F80)).any(axis=1)
    if qtype == F32:
        return np.zeros(encoded.shape[0], dtype=bool)
    return quant_class(qtype).overflowed_blocks(encoded, rows).reshape(encoded.shape[0], -1).any(axis=1)


@dataclass(frozen=True)
class Stored:
    """A tensor after its transform, still in the checkpoint's own type, and checked for NaN/Inf.
    `within_fp16`: every value fits F16's range, so no target type can overflow and encoding skips that check;
    None when the values are not scanned yet (the kernels scan them while they quantize, Encoder.encode).
    `row_order`: None when `values` are the transformed tensor; else `values` are the source as read and the
    transform is the row permutation row_order (the kernels index the rows instead of copying them; see
    materialized() for every other reader)."""

    values: np.ndarray
    dtype: str
    within_fp16: bool | None
    row_order: np.ndarray | None = None

    def materialized(self) -> "Stored":
        """The same tensor with its rows in their transformed order (a copy when row_order is set)."""
        if self.row_order is None:
            return self
        return replace(self, values=np.ascontiguousarray(self.values[self.row_order]), row_order=None)


def _scan(t: TensorPlan, values: np.ndarray, dtype: str, backend: Backend, threads: int) -> bool:
    """Refuse NaN/Inf (naming the tensor); True when every value fits F16's range. One pass in the kernels."""
    found = backend.scan(values, dtype, threads)
    if found.nonfinite:
        raise _nonfinite_error(t, found.nonfinite)
    return found.within_fp16


def prepare(t: TensorPlan, raw: list[np.ndarray], backend: Backend | None = None, threads: int = 1, *,
            scan: bool = True, index_rows: bool = False) -> Stored | None:
    """The part of encoding that no output type changes: apply an exact transform in the stored type (a copy
    for permuted tensors) and check every value. write_ggufs runs it on the read-ahead thread, off the kernels'
    critical path. None when the tensor must take the float32 path (generated, mixed dtypes, inexact transform).

    scan=False leaves the check to the encoder: write_ggufs passes it when the kernels quantize the stored rows
    for every output, since they check each row while it is in cache (no pass of its own over the tensor).
    index_rows=True keeps a transform that only reorders rows as an index (Stored.row_order) instead of copying
    the tensor: write_ggufs passes it with scan=False, when the kernels read the rows for every output."""
    if not (t.source_dtypes and t.spec.transform.exact and len(set(t.source_dtypes)) == 1):
        return None
    dtype = t.source_dtypes[0]
    order = t.spec.transform.row_order([a.shape for a in raw]) if index_rows and not scan else None
    if order is not None:
        return Stored(np.ascontiguousarray(raw[0]), dtype, None, order)
    values = np.ascontiguousarray(t.spec.transform.apply(raw))
    return Stored(values, dtype, _scan(t, values, dtype, backend or get_backend(), threads) if scan else None)


@dataclass(frozen=True)
class Encoder:
    """Turns one planned tensor into its GGUF bytes."""

    backend: Backend
    threads: int
    imatrix: ImportanceMatrix | None = None

    def encode(self, t: TensorPlan, raw: list[np.ndarray], stored: Stored | None = None) -> np.ndarray:
        """`stored` is prepare(t, raw) when the caller already has it (the same for every output of a tensor)."""
        if stored is None:
            stored = prepare(t, raw, self.backend, self.threads, scan=False)
        if stored is not None and not self.quantizes_stored(t, stored.dtype):
            stored = stored.materialized()
        if stored is not None and stored.within_fp16 is None and not self.quantizes_stored(t, stored.dtype):
            stored = replace(stored, within_fp16=_scan(t, stored.values, stored.dtype, self.backend, self.threads))
        if stored is not None and stored.dtype == _RAW_DTYPES.get(t.qtype):
            return stored.values
        if stored is not None and t.qtype != F32:
            return self._encode_by_chunks(t, stored)
        values = np.ascontiguousarray(
            t.spec.transform.apply([self.backend.to_float32(a, d, self.threads) for a, d in zip(raw, t.source_dtypes)]),
            dtype=np.float32)
        safe = _scan(t, values, "F32", self.backend, self.threads)
        if t.qtype == F32:
            return values
        rows = values.reshape(-1, t.ggml_shape[0])
        return self._encode_checked(t, rows, self._weights(t), safe=safe)

    def _encode_by_chunks(self, t: TensorPlan, stored: Stored) -> np.ndarray:
        """Widen and encode a few MB of rows at a time. Rows are encoded independently and widening is exact, so
        the bytes are those of the whole-tensor path, but only the stored tensor, its output and one chunk's
        float32 copy are in memory, instead of a float32 copy of the whole tensor (3 GB for a 150k x 5120
        embedding). The values were checked for NaN/Inf by prepare().

        When the kernels take the stored rows as they are (16-bit values that all fit F16, so no overflow check
        needs float32 rows), the whole tensor is one call: each kernel thread widens a row at a time, and the
        calling thread neither widens nor copies."""
        rows = stored.values.reshape(-1, t.ggml_shape[0])
        weights = self._weights(t)
        if stored.within_fp16 is not False and self.quantizes_stored(t, stored.dtype):
            out, found = self.backend.quantize_stored(t.qtype, rows, stored.dtype, weights, self.threads,
                                                      row_order=stored.row_order)
            if found.nonfinite:
                raise _nonfinite_error(t, found.nonfinite)
            if found.within_fp16:
                return out
            # a value beyond F16's range (a BF16 source): the rows below check every block for overflow
        stored = stored.materialized()
        rows = stored.values.reshape(-1, t.ggml_shape[0])
        if t.qtype in (F16, BF16):
            out = np.empty(rows.shape, dtype=np.float16 if t.qtype == F16 else np.uint16)
        else:
            out = np.empty((rows.shape[0], quant_class(t.qtype).row_bytes(rows.shape[1])), dtype=np.uint8)
        step = max(1, CHUNK_VALUES // rows.shape[1])
        for start in range(0, rows.shape[0], step):
            chunk = self.backend.to_float32(rows[start:start + step], stored.dtype, self.threads)
            out[start:start + step] = self._encode_checked(t, chunk, weights, start, safe=stored.within_fp16)
        return out

    def quantizes_stored(self, t: TensorPlan, dtype: str) -> bool:
        """Whether the kernels encode this tensor from its stored rows (and check them as they go)."""
        return t.qtype not in (F16, BF16, F32) and self.backend.quantizes_stored(t.qtype, dtype)

    def _weights(self, t: TensorPlan) -> np.ndarray | None:
        """The imatrix weights of a tensor encoded in a block type (float outputs never consult the matrix)."""
        if self.imatrix is None or t.qtype in (F16, BF16):
            return None
        return self.imatrix.for_tensor(t.name, t.ggml_shape[0])

    def _encode_checked(self, t: TensorPlan, rows: np.ndarray, weights: np.ndarray | None, first_row: int = 0, *,
                        safe: bool = False) -> np.ndarray:
        """Encode finite rows and refuse any that overflow the target type (1e6 in F16 is Inf; in Q4_0 its
        block scale is Inf and the block decodes to NaN): llama.cpp would write them without a word."""
        encoded = self._encode_rows(t.qtype, rows, weights)
        if safe:
            return encoded
        bad_rows = _overflowed_rows(t.qtype, encoded.reshape(rows.shape[0], -1), rows)
        if bad_rows.any():
            raise _overflow_error(t, rows, bad_rows, first_row)
        return encoded

    def _encode_rows(self, qtype: GGMLQuantizationType, rows: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        if qtype == F16:
            return self.backend.to_float16(rows, self.threads)
        if qtype == BF16:
            return float32_to_bf16(rows)
        return self.backend.quantize(qtype, rows, weights, self.threads)


def check_free_space(outputs: Sequence[tuple[Plan, Path]]) -> None:
    """Refuse to start when the planned files do not fit on their file systems."""
    needed: dict[int, tuple[Path, int]] = {}
    for plan, path in outputs:
        # The folder may not exist yet: its nearest existing ancestor is the file system it will be on.
        folder = path.parent.absolute()
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        dev = folder.stat().st_dev
        prev = needed.get(dev, (folder, 0))
        needed[dev] = (prev[0], prev[1] + plan.total_bytes)
    for folder, size in needed.values():
        free = shutil.disk_usage(folder).free
        if free < size:
            raise OutputError(f"{folder} has {free / 1e9:.2f} GB free but the output needs {size / 1e9:.2f} GB.",
                              hint="Free disk space or write elsewhere with -o.")


def check_overrides(plan: Plan, given: Mapping[str, np.ndarray]) -> None:
    """Every override names a planned tensor and has exactly its planned bytes (the header was sized by the plan)."""
    planned = {t.name: t for t in plan.tensors}
    for name, data in given.items():
        t = planned.get(name)
        if t is None:
            raise ValueError(f"encoded rows given for {name}, which the plan does not write")
        if data.dtype != np.uint8 or data.nbytes != t.nbytes:
            raise ValueError(f"{name}: encoded rows hold {data.nbytes} bytes ({data.dtype}), the plan needs {t.nbytes}")


def write_ggufs(outputs: Sequence[tuple[Plan, Path]], ckpt: Checkpoint, *, threads: int = 1,
                backend: Backend | None = None, imatrix: ImportanceMatrix | None = None,
                progress: Progress | None = None,
                overrides: Sequence[Mapping[str, np.ndarray] | None] | None = None) -> list[str]:
    """Write several planned GGUFs from one read of `ckpt`: each source tensor is read once for all outputs.
    Returns each file's sha256, computed as it was written.

    Every file goes to a temporary name and is renamed only when complete; on any error or interrupt the
    temporary files are removed and no final name is touched. Reading runs ahead on one thread and writing
    behind on another (stages/overlap.py), so the calling thread only feeds the kernels; one tensor waits to be
    encoded and two to be written (every extra slot holds one more tensor in memory; stages/pack_group.py).

    `overrides`, one mapping per output (or None), gives already encoded rows for some tensors by GGUF name (the
    GPTQ pass, stages/gptq_gguf.py); they are written as they are, in the planned type and size.
    """
    from .pack_group import write_group   # the GGUF-only case of the shared pass (pack_group builds on this module)

    return write_group(outputs, (), ckpt, threads=threads, backend=backend, imatrix=imatrix, progress=progress,
                       overrides=overrides)[0]
