"""NF4 with bitsandbytes' blockwise absmax scaling (NumPy reference), and its optional double quantization.

A weight is flattened row-major and cut into blocks of 64 (the last may be shorter). Each block keeps
absmax = max |x|; each value x * (1 / absmax), clamped to [-1, 1], takes the index of the nearest NF4 level
(ties go to the lower level: the search counts the midpoints strictly below the value, as torch.bucketize does).
Two indices share a byte, the first in the high nibble. Double quantization stores the float32 absmax values as
8-bit codes: their mean (the offset) is subtracted, then blocks of 256 are scaled by their own absmax and mapped
to the nearest entry of a signed 8-bit dynamic code (DYNAMIC_CODE). A loader rebuilds
absmax = code[q] * nested_absmax + offset and weight = NF4[index] * absmax, in float32, then casts to the model dtype.
formats/bnb-nf4.md describes the same bytes. The C twin of the blockwise loop is quant/_kernels/nf4.c.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

NF4_BLOCK = 64
NESTED_BLOCK = 256
# The 16 NF4 levels (quantiles of a standard normal scaled to [-1, 1]) as bitsandbytes defines them; its loader
# uses its own copy of this table, so these float32 values are part of the format.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


@lru_cache(maxsize=1)
def dynamic_code() -> np.ndarray:
    """The signed 8-bit dynamic code (Dettmers, 8-bit approximations): for exponent e = 0..6, 2^e evenly spaced
    fractions in (0.1, 1) times 10^(e-6), both signs, plus 0 and 1. The table is stored in every file beside
    the codes that index it, so the loader never needs to regenerate it."""
    values = [0.0, 1.0]
    for e in range(7):
        edges = np.linspace(0.1, 1.0, 2 ** e + 1, dtype=np.float32)
        mids = (edges[:-1] + edges[1:]) / np.float32(2)
        values += [float(np.float32(10.0 ** (e - 6)) * m) for m in mids]
        values += [-float(np.float32(10.0 ** (e - 6)) * m) for m in mids]
    code = np.array(sorted(values), dtype=np.float32)
    assert code.shape == (256,)
    return code


@dataclass(frozen=True)
class NF4Codes:
    packed: np.ndarray                      # (ceil(n / 2), 1) uint8: two indices per byte, first in the high nibble
    absmax: np.ndarray                      # float32 per block, or uint8 codes when double quantized
    nested_absmax: np.ndarray | None = None # float32 per block of 256 absmax values
    offset: float | None = None             # the mean subtracted before the nested quantization

    def block_absmax(self) -> np.ndarray:
        if self.nested_absmax is None:
            return self.absmax
        n = self.absmax.shape[0]
        scale = np.repeat(self.nested_absmax, NESTED_BLOCK)[:n]
        return dynamic_code()[self.absmax] * scale + np.float32(self.offset)

    def dequantize(self, shape: tuple[int, ...]) -> np.ndarray:
        """float32 values a loader computes before casting to the model dtype."""
        n = int(np.prod(shape))
        idx = np.empty(self.packed.shape[0] * 2, dtype=np.uint8)
        idx[0::2], idx[1::2] = self.packed[:, 0] >> 4, self.packed[:, 0] & 0xF
        levels = NF4_LEVELS[idx[:n]]
        absmax = np.repeat(self.block_absmax(), NF4_BLOCK)[:n]
        return (levels * absmax).reshape(shape)


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
