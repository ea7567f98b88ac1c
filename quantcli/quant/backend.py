"""Backend policy: the C kernels (quantcli._kernels) or the NumPy reference, chosen by QUANTCLI_BACKEND.

auto (default): C where a kernel exists, else the reference; a missing extension gives a one-line warning.
c: the C kernels only; a type without a kernel is an error.
reference: the NumPy classes only (slow, readable; the same bytes).

The C kernels come in instruction-set variants (quant/_kernels/dispatch.c): the best one this machine runs is
used, and QUANTCLI_ISA=default|avx2|avx512 forces another one the machine runs (every variant gives the same
bytes; tests compare them, and `quantcli version` shows the active one).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import InputError
from ..io.safetensors import to_float32
from .base import FP16_MAX, quant_class

BACKENDS = ("auto", "c", "reference")
ISAS = ("avx512", "avx2", "default")
MAX_THREADS = 1024  # the kernels count threads in a C int; more than this is a typo, not a machine
_WIDEN = {"F16": 0, "BF16": 1}          # the kernels' codes for 16-bit sources (quantize's widen=, convert's kind)
_SCAN = {"F16": 0, "BF16": 1, "F32": 2}
# The largest magnitude within F16's range, as the magnitude bits of each stored type (scan's max_abs_bits).
_FP16_MAX_BITS = {"F16": 0x7BFF, "BF16": 0x477F, "F32": int(np.array(FP16_MAX, np.float32).view(np.uint32))}


@dataclass(frozen=True)
class Scan:
    """What one pass over stored values found: how many are NaN/Inf, and whether all fit F16's range (then no
    target type can overflow: F16 holds them, and every fp16 block scale or min is a fraction of a block's range)."""

    nonfinite: int
    within_fp16: bool


def _scan_numpy(values: np.ndarray, dtype: str) -> Scan:
    """The reference scan, on bit patterns for the 16-bit types (BF16 arrives as uint16 anyway)."""
    if values.size == 0:
        return Scan(0, True)
    if dtype in ("F16", "BF16"):
        exp = np.uint16(0x7C00 if dtype == "F16" else 0x7F80)
        bits = values.view(np.uint16) & np.uint16(0x7FFF)
        return Scan(int(np.count_nonzero(bits >= exp)), int(bits.max()) <= _FP16_MAX_BITS[dtype])
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    with np.errstate(invalid="ignore"):
        return Scan(bad, bad == 0 and max(float(values.max()), -float(values.min())) <= FP16_MAX)


def _load_kernels() -> ModuleType | None:
    try:
        from .. import _kernels  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _kernels


@dataclass(frozen=True)
class Backend:
    """The active quantization backend; `name` is what `quantcli version` shows."""

    policy: str
    kernels: ModuleType | None
    isa: str | None = None          # the kernels' instruction-set variant; None when no kernels are loaded

    @property
    def name(self) -> str:
        if self.policy == "reference" or self.kernels is None:
            return "reference (NumPy)"
        return "c (quantcli._kernels)" if self.policy == "c" else "auto: c (quantcli._kernels)"

    def uses_c(self, qtype: GGMLQuantizationType) -> bool:
        return self.policy != "reference" and self.kernels is not None and bool(self.kernels.has_type(int(qtype)))

    def _c_convert(self) -> bool:
        return self.policy != "reference" and self.kernels is not None

    def scan(self, values: np.ndarray, dtype: str, threads: int = 1) -> Scan:
        """Count NaN/Inf in stored F16/BF16/F32 values and see whether all fit F16's range, in one pass."""
        kind = _SCAN.get(dtype)
        if kind is None or not self._c_convert():
            return _scan_numpy(values, dtype)
        src = np.ascontiguousarray(values)
        if src.dtype.itemsize != (4 if dtype == "F32" else 2):
            raise ValueError(f"{dtype} values stored as {src.dtype}")
        bad, top = self.kernels.scan(kind, src, max(1, threads))  # type: ignore[union-attr]
        return Scan(int(bad), int(top) <= _FP16_MAX_BITS[dtype])

    def quantizes_stored(self, qtype: GGMLQuantizationType, dtype: str) -> bool:
        """Whether quantize() takes `dtype` rows as they are stored (the kernels widen a row at a time)."""
        return dtype in _WIDEN and self.uses_c(qtype)

    def to_float32(self, array: np.ndarray, dtype: str, threads: int = 1) -> np.ndarray:
        """Widen stored F16/BF16 values to float32 (exact; the C loop uses F16C where the CPU has it)."""
        kind = {"F16": 0, "BF16": 1}.get(dtype)
        if kind is None or not self._c_convert():
            return to_float32(array, dtype)
        out = np.empty(array.shape, dtype=np.float32)
        self.kernels.convert(kind, np.ascontiguousarray(array), out, max(1, threads),  # type: ignore[union-attr]
                             self.isa)
        return out

    def to_float16(self, values: np.ndarray, threads: int = 1) -> np.ndarray:
        """float32 -> float16, round to nearest even (the same bits as NumPy's astype)."""
        if not self._c_convert():
            with np.errstate(over="ignore"):  # values beyond F16 become Inf; the quantize stage reports them
                return values.astype(np.float16)
        out = np.empty(values.shape, dtype=np.float16)
        self.kernels.convert(2, np.ascontiguousarray(values, dtype=np.float32), out, max(1, threads),  # type: ignore[union-attr]
                             self.isa)
        return out

    def quantize(self, qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None = None,
                 threads: int = 1) -> np.ndarray:
        """Quantize (nrows, n_per_row) float32 rows into (nrows, row_bytes) uint8 with this backend."""
        cls = quant_class(qtype)
        if not self.uses_c(qtype):
            if self.policy == "c":
                raise InputError(f"QUANTCLI_BACKEND=c but there is no C kernel for {qtype.name}.",
                                 hint="Use QUANTCLI_BACKEND=auto or reference.")
            return cls.quantize(rows, imatrix)
        out, _ = self._kernel_quantize(qtype, np.ascontiguousarray(rows, dtype=np.float32), imatrix, threads, -1)
        return out

    def quantize_stored(self, qtype: GGMLQuantizationType, rows: np.ndarray, dtype: str,
                        imatrix: np.ndarray | None = None, threads: int = 1, *,
                        row_order: np.ndarray | None = None) -> tuple[np.ndarray, Scan]:
        """quantize() for F16/BF16 rows as stored (BF16 as uint16; see quantizes_stored): each kernel thread widens
        one row at a time, so no float32 copy of the rows is made, and scans it on the way (what scan() returns).
        With `row_order`, output row r is rows[row_order[r]] quantized (a row permutation without a copy)."""
        if not self.quantizes_stored(qtype, dtype):
            raise ValueError(f"this backend does not quantize {dtype} rows to {qtype.name} as stored")
        rows = np.ascontiguousarray(rows)
        if rows.dtype.itemsize != 2:
            raise ValueError(f"{dtype} rows stored as {rows.dtype}")
        order = None if row_order is None else np.ascontiguousarray(row_order, dtype=np.int64)
        if order is not None and order.shape != (rows.shape[0],):
            raise ValueError(f"row_order has shape {order.shape}, the rows are {rows.shape[0]}")
        out, found = self._kernel_quantize(qtype, rows, imatrix, threads, _WIDEN[dtype], order)
        bad, top = found if found is not None else (0, 0)
        return out, Scan(int(bad), int(top) <= _FP16_MAX_BITS[dtype])

    def _kernel_quantize(self, qtype: GGMLQuantizationType, rows: np.ndarray, imatrix: np.ndarray | None,
                         threads: int, widen: int, row_order: np.ndarray | None = None,
                         ) -> tuple[np.ndarray, tuple[int, int] | None]:
        cls = quant_class(qtype)
        if rows.ndim != 2 or rows.shape[1] % cls.block_size != 0:
            raise ValueError(f"{qtype.name} needs rows of a multiple of {cls.block_size} values, got {rows.shape}")
        out = np.empty((rows.shape[0], cls.row_bytes(rows.shape[1])), dtype=np.uint8)
        found = None
        if rows.shape[0]:
            qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
            found = self.kernels.quantize(int(qtype), rows, rows.shape[1], out, qw, max(1, threads),  # type: ignore[union-attr]
                                          self.isa, widen, row_order)
        return out, found


def _choose_isa(kernels: ModuleType, isa: str | None) -> str:
    """The variant named by `isa` (or QUANTCLI_ISA), checked against what this machine runs; else the best one."""
    usable: tuple[str, ...] = kernels.isas()
    isa = (isa or os.environ.get("QUANTCLI_ISA") or "").lower()
    if not isa:
        return usable[0]
    if isa not in ISAS:
        raise InputError(f"QUANTCLI_ISA={isa!r} is not an instruction-set variant.",
                         hint=f"Use one of: {', '.join(ISAS)}.")
    if isa not in usable:
        raise InputError(f"QUANTCLI_ISA={isa} does not run on this machine (or was not built).",
                         hint=f"This machine runs: {', '.join(usable)}.")
    return isa


def get_backend(policy: str | None = None, isa: str | None = None) -> Backend:
    """The backend named by `policy`, or by QUANTCLI_BACKEND when policy is None; the C kernels' variant named
    by `isa`, or by QUANTCLI_ISA when isa is None, else the best one this machine runs."""
    policy = (policy or os.environ.get("QUANTCLI_BACKEND") or "auto").lower()
    if policy not in BACKENDS:
        raise InputError(f"QUANTCLI_BACKEND={policy!r} is not a backend.", hint=f"Use one of: {', '.join(BACKENDS)}.")
    kernels = None if policy == "reference" else _load_kernels()
    if kernels is None and policy == "c":
        raise InputError("QUANTCLI_BACKEND=c but the C extension quantcli._kernels is not built.",
                         hint="Run `make install` (or `pip install -e .`) to build it, or use QUANTCLI_BACKEND=reference.")
    if kernels is None and policy == "auto":
        print("warning: quantcli._kernels is not built; using the slow NumPy reference. Run `make install` to build it.",
              file=sys.stderr)
    return Backend(policy, kernels, None if kernels is None else _choose_isa(kernels, isa))
