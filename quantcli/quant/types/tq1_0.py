"""TQ1_0: ternary super-blocks of 256 values packed base 3, five values per byte (1.6875 bits per value), with one
fp16 scale d = amax; a value decodes as (t - 1) * d for its trit t in 0..2 (formats/TQ1_0.md).

Bytes: 48 bytes qs, 4 bytes qh, then d. qs[0:32] hold values m + 32*k (k = 0..4, k = 0 the most significant
trit), qs[32:48] values 160 + m + 16*k, qh[0:4] values 240 + j + 4*k (k = 0..3, then a zero trit). Each
base-3 number n < 243 is stored as ceil(n * 256 / 243) so that decoding is a multiply and a shift.
Trits are lroundf(x * (1/d)) + 1. The imatrix is ignored, as in llama.cpp.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import F32, block_bytes, fp16_field, read_fp16, ternary_quants, to_columns

TRITS_PER_BYTE = 5
POW3_BYTE = 3 ** TRITS_PER_BYTE                  # 243 numbers fit in one byte's trits
# The three regions of a block: (values per region, stride between a byte's trits, trits stored per byte).
REGIONS = ((160, 32, 5), (80, 16, 5), (16, 4, 4))


def _pack_region(q: np.ndarray, stride: int, trits: int) -> np.ndarray:
    """(values, blocks) trits -> (bytes, blocks): uint8 base-3 accumulation (wrapping like ggml's uint8_t),
    padded to five trits, then the ceiling scale to 0..255."""
    g = q.reshape(-1, trits, stride, q.shape[1])
    acc = np.zeros((g.shape[0], *g.shape[2:]), dtype=np.int32)
    for k in range(trits):
        acc = (acc * 3 + g[:, k]) & 0xFF
    for _ in range(TRITS_PER_BYTE - trits):
        acc = (acc * 3) & 0xFF
    acc = (acc * 256 + (POW3_BYTE - 1)) // POW3_BYTE
    return (acc & 0xFF).astype(np.uint8).reshape(-1, q.shape[1])


class TQ1_0(QuantType, qtype=GGMLQuantizationType.TQ1_0):
    fp16_offsets = (52,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, q = ternary_quants(to_columns(rows, cls.block_size))
        parts, start = [], 0
        for count, stride, trits in REGIONS:
            parts.append(_pack_region(q[start:start + count], stride, trits).T)
            start += count
        return block_bytes(rows.shape[0], *parts, fp16_field(d))

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        values, start = [], 0
        for count, stride, trits in REGIONS:
            nbytes = count // trits
            b = blocks[:, start:start + nbytes].reshape(n, -1, 1, stride).astype(np.uint16)
            pow3 = (3 ** np.arange(trits, dtype=np.uint16)).reshape(1, 1, trits, 1)
            t = (((b * pow3) & 0xFF) * 3) >> 8                      # trit k: byte * 3**k mod 256, top of * 3
            values.append(t.reshape(n, -1))
            start += nbytes
        q = np.concatenate(values, axis=1).astype(np.int8) - np.int8(1)
        return q.astype(F32) * read_fp16(blocks, cls.type_size - 2)
