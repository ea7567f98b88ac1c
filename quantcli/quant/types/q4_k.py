"""Q4_K: super-blocks of 256 values in 8 sub-blocks of 32; x ~ (d * sc) * q - (dmin * m), q in 0..15.

Block (144 bytes): d (fp16), dmin (fp16), 12 bytes of 6-bit sub-block scales and mins, 128 bytes of 4-bit
quants (byte 32*c + l holds values 64c + l in its low nibble and 64c + 32 + l in its high nibble).
Format and encoder rules: formats/Q4_K.md. C twin: quant/_kernels/q4_k.c.

Numeric quirk reproduced: a sub-block whose decoded scale d * sc is 0 keeps the levels of the scale search
instead of being requantized (ggml skips it).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import LevelCodes, block_bytes, fp16_field, read_fp16
from ._kquant import (KQUANT_CHUNK_BLOCKS, QK_K, ScaleMin32Codes, decode_scale_min_32, encode_scale_min_32,
                      pack_4bit_pairs, unpack_4bit_pairs)

#: Q4_K's quants run 0..NMAX; (rmin, rdelta, nstep) of the scale search without an imatrix.
NMAX = 15
REF_SEARCH = (-1.0, 0.1, 20)


class Q4_K(QuantType, LevelCodes, ScaleMin32Codes, qtype=GGMLQuantizationType.Q4_K):
    fp16_offsets = (0, 2)  # byte offsets of the block's fp16 scale fields
    levels = NMAX + 1
    quant_span = (16, 16 + QK_K // 2)
    chunk_blocks = KQUANT_CHUNK_BLOCKS

    @classmethod
    def encode_chunk(cls, chunk: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        d, dmin, scales, L = encode_scale_min_32(chunk, imatrix, NMAX, REF_SEARCH, clamp_qp_levels=False)
        return block_bytes(chunk.shape[0], fp16_field(d), fp16_field(dmin), scales, cls.pack_levels(L))

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return pack_4bit_pairs(L)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d, dmin = read_fp16(blocks, 0), read_fp16(blocks, 2)
        return decode_scale_min_32(d, dmin, blocks[:, 4:16], unpack_4bit_pairs(blocks[:, 16:16 + QK_K // 2]))
