"""NF4 with bitsandbytes' blockwise absmax scaling (NumPy reference), and its optional double quantization.

A weight is flattened row-major and cut into blocks of 64 (the last may be shorter). Each block keeps
absmax = max |x|; each value x * (1 / absmax), clamped to [-1, 1], takes the index of the nearest NF4 level
(ties go to the lower level: the search counts the midpoints strictly below the value, as torch.bucketize does).
Two indices share a byte, the first in the high nibble. Double quantization stores the float32 absmax values as
8-bit codes: their mean (the offset) is subtracted, then blocks of 256 are scaled by their own absmax and mapped
to the nearest entry of a signed 8-bit dynamic code (io/nf4_codes.py holds both code books and NF4Codes). A loader rebuilds
absmax = code[q] * nested_absmax + offset and weight = NF4[index] * absmax, in float32, then casts to the model dtype.
formats/bnb-nf4.md describes the same bytes. The C twin of the blockwise loop is quant/_kernels/nf4.c.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...io.nf4_codes import NESTED_BLOCK, NF4_BLOCK, NF4_LEVELS, NF4Codes, dynamic_code


def _blockwise(values: np.ndarray, block: int, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices into sorted `levels` of values scaled per block by 1 / absmax; returns (indices, absmax)."""
    n = values.shape[0]
    nblocks = -(-n // block)
    padded = np.zeros(nblocks * block, dtype=np.float32)
    padded[:n] = values
    blocks = padded.reshape(nblocks, block)
    absmax = np.abs(blocks).max(axis=1)
    inv = np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))
    scaled = np.clip(blocks * inv[:, None], np.float32(-1), np.float32(1)).reshape(-1)[:n]
    mids = (levels[:-1] + levels[1:]) / np.float32(2)
    return np.searchsorted(mids, scaled, side="left").astype(np.uint8), absmax


def encode_nf4(weight: np.ndarray, double_quant: bool = True, kernels: Any = None, threads: int = 1) -> NF4Codes:
    """Encode a weight; `kernels` (quantcli._kernels) runs the blockwise loop in C (nf4.c), with the same bytes."""
    flat = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
    if kernels is not None:
        idx = np.empty(flat.shape[0], dtype=np.uint8)
        absmax = np.empty(-(-flat.shape[0] // NF4_BLOCK), dtype=np.float32)
        kernels.nf4_blocks(flat, idx, absmax, max(1, threads))
    else:
        with np.errstate(all="ignore"):
            idx, absmax = _blockwise(flat, NF4_BLOCK, NF4_LEVELS)
    if idx.shape[0] % 2:
        idx = np.append(idx, np.uint8(7))            # pad with the 0.0 level
    packed = ((idx[0::2] << 4) | idx[1::2]).astype(np.uint8)[:, None]
    if not double_quant:
        return NF4Codes(packed, absmax)
    offset = np.float32(absmax.astype(np.float64).mean())
    with np.errstate(all="ignore"):
        q, nested = _blockwise(absmax - offset, NESTED_BLOCK, dynamic_code())
    return NF4Codes(packed, q, nested, float(offset))
