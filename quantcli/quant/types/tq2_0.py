"""TQ2_0: ternary super-blocks of 256 values, 2 bits per value (0, 1, 2 meaning -1, 0, +1) and one fp16 scale d
= amax; a value decodes as (q - 1) * d (formats/TQ2_0.md). Bytes: 64 bytes of quants, then d.

Byte m of each 32-byte group g holds values 128*g + m + 32*k in bits 2k..2k+1. Quants are
lroundf(x * (1/d)) + 1 (halves away from zero). The imatrix is ignored, as in llama.cpp.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import F32, block_bytes, fp16_field, read_fp16, ternary_quants, to_columns

GROUP = 32          # bytes per group; each byte holds 4 values GROUP apart
PER_BYTE = 4
BITS = 2


class TQ2_0(QuantType, qtype=GGMLQuantizationType.TQ2_0):
    fp16_offsets = (64,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, q = ternary_quants(to_columns(rows, cls.block_size))
        g = q.reshape(-1, PER_BYTE, GROUP, q.shape[1])                 # (groups, k, m, blocks)
        acc = np.zeros((g.shape[0], *g.shape[2:]), dtype=np.int32)   # ggml's uint8 `q += (t & 3) << 2k` wraps
        for k in range(PER_BYTE):
            acc = (acc + ((g[:, k] & 3) << (BITS * k))) & 0xFF
        qs = acc.astype(np.uint8).reshape(-1, q.shape[1]).T
        return block_bytes(rows.shape[0], qs, fp16_field(d))

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n = blocks.shape[0]
        qs = blocks[:, :cls.block_size // PER_BYTE].reshape(n, -1, 1, GROUP)
        shifts = (BITS * np.arange(PER_BYTE, dtype=np.uint8)).reshape(1, 1, PER_BYTE, 1)
        q = ((qs >> shifts) & np.uint8(3)).reshape(n, -1).astype(np.int8) - np.int8(1)
        return q.astype(F32) * read_fp16(blocks, cls.type_size - 2)
