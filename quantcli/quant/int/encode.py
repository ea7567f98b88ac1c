"""Encode one weight with the active backend: the C twin (quant/_kernels/int_rtn.c) or the NumPy reference.

Both give the same codes, scales, zero points and packed words; QUANTCLI_BACKEND chooses as for the GGUF types.
"hqq" starts from the min-max encoding and then solves the zero points (quant/algorithms/hqq.py, C: int_hqq.c).
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from ...errors import InputError
from ...io.int_codes import IntCodes
from ...io.int_packing import pack_int32, packed_words
from ...io.int_scheme import PACK_QUANTIZED, IntScheme
from ..algorithms import hqq
from ..backend import Backend
from .rtn import METHODS as RTN_METHODS
from .rtn import encode

METHODS = RTN_METHODS + ("hqq",)     # what --method accepts for compressed-tensors folders
METHOD_IDS = {"minmax": 0, "mse": 1, "hqq": 0}     # hqq's C pass starts from the min-max encoding
DTYPE_IDS = {"F32": 0, "F16": 1, "BF16": 2}
SCALE_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def _has_c(backend: Backend, kernel: str = "int_rtn") -> bool:
    return backend.policy != "reference" and backend.kernels is not None and hasattr(backend.kernels, kernel)


def nf4_kernels(backend: Backend) -> ModuleType | None:
    """The extension when the NF4 loop should run in C, None for the NumPy reference."""
    if _has_c(backend, "nf4_blocks"):
        return backend.kernels
    if backend.policy == "c":
        raise InputError("QUANTCLI_BACKEND=c but the C extension has no NF4 kernel.",
                         hint="Rebuild it (make install), or use QUANTCLI_BACKEND=reference.")
    return None


def encode_weight(rows: np.ndarray, scheme: IntScheme, scale_dtype: str, method: str, backend: Backend,
                  threads: int = 1) -> tuple[IntCodes, np.ndarray | None]:
    """(out, in) float32 -> (codes, packed words for pack-quantized schemes or None)."""
    if not _has_c(backend):
        if backend.policy == "c":
            raise InputError("QUANTCLI_BACKEND=c but the C extension has no integer-scheme kernels.",
                             hint="Rebuild it (make install), or use QUANTCLI_BACKEND=reference.")
        codes = encode(rows, scheme, scale_dtype, "minmax" if method == "hqq" else method)
        if method == "hqq":
            codes = hqq.refine(rows, codes, scheme, scale_dtype)
        return codes, pack_int32(codes.codes, scheme.bits) if scheme.storage == PACK_QUANTIZED else None
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n = rows.shape
    g = n if scheme.group_size is None else scheme.group_size
    q = np.empty((nrows, n), dtype=np.int8)
    scale = np.empty((nrows, n // g), dtype=SCALE_NP[scale_dtype])
    zp = None if scheme.symmetric else np.empty((nrows, n // g), dtype=np.int8)
    backend.kernels.int_rtn(rows, n, g, scheme.bits, int(scheme.symmetric), DTYPE_IDS[scale_dtype],  # type: ignore[union-attr]
                            METHOD_IDS[method], q, scale, zp, max(1, threads))
    if method == "hqq":
        if zp is None:
            raise ValueError("HQQ solves zero points; a symmetric scheme has none (make_int_plan refuses it)")
        backend.kernels.int_hqq(rows, n, g, scheme.bits, DTYPE_IDS[scale_dtype], scale, zp, q,  # type: ignore[union-attr]
                                max(1, threads))
    packed = None
    if scheme.storage == PACK_QUANTIZED:
        packed = np.empty((nrows, packed_words(n, scheme.bits)), dtype=np.int32)
        backend.kernels.int_pack(q, n, scheme.bits, packed, max(1, threads))  # type: ignore[union-attr]
    return IntCodes(q, scale, zp), packed
