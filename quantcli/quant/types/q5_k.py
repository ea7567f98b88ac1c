"""Q5_K: super-blocks of 256 values in 8 sub-blocks of 32; x ~ (d * sc) * q - (dmin * m), q in 0..31.

Block (176 bytes): d (fp16), dmin (fp16), 12 bytes of 6-bit sub-block scales and mins (as Q4_K), 32 bytes
of high bits (bit 2c of byte l: value 64c + l, bit 2c+1: value 64c + 32 + l), 128 bytes of low nibbles laid
out as Q4_K's quants. Format and encoder rules: formats/Q5_K.md. C twin: quant/_kernels/q5_k.c.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import LevelCodes, block_bytes, fp16_field, read_fp16
from ._kquant import (KQUANT_CHUNK_BLOCKS, QK_K, ScaleMin32Codes, decode_scale_min_32, encode_scale_min_32,
                      pack_4bit_pairs, unpack_4bit_pairs)

#: Q5_K's quants run 0..NMAX; (rmin, rdelta, nstep) of the scale search without an imatrix.
NMAX = 31
REF_SEARCH = (-0.5, 0.1, 15)


def _pack_high_bits(L: np.ndarray) -> np.ndarray:
    hi = (L.reshape(-1, 4, 2, 32).astype(np.int32) >> 4) & 1
    shifts = (2 * np.arange(4).reshape(1, 4, 1, 1) + np.arange(2).reshape(1, 1, 2, 1))
    return np.bitwise_or.reduce((hi << shifts).reshape(-1, 8, 32), axis=1).astype(np.uint8)


class Q5_K(QuantType, LevelCodes, ScaleMin32Codes, qtype=GGMLQuantizationType.Q5_K):
    fp16_offsets = (0, 2)  # byte offsets of the block's fp16 scale fields
    levels = NMAX + 1
    quant_span = (16, 16 + QK_K // 8 + QK_K // 2)
    chunk_blocks = KQUANT_CHUNK_BLOCKS

    @classmethod
    def encode_chunk(cls, chunk: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        # Q5_K's imatrix path clamps the 6-bit levels to 63 where Q4_K's does not (it only matters for
        # the negative levels a degenerate search could give, which wrap modulo 256).
        d, dmin, scales, L = encode_scale_min_32(chunk, imatrix, NMAX, REF_SEARCH, clamp_qp_levels=True)
        return block_bytes(chunk.shape[0], fp16_field(d), fp16_field(dmin), scales, cls.pack_levels(L))

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return np.concatenate([_pack_high_bits(L), pack_4bit_pairs(L)], axis=1)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        d, dmin = read_fp16(blocks, 0), read_fp16(blocks, 2)
        qh = blocks[:, 16:48].astype(np.int32).reshape(-1, 1, 1, 32)
        shifts = (2 * np.arange(4).reshape(1, 4, 1, 1) + np.arange(2).reshape(1, 1, 2, 1))
        high = ((qh >> shifts) & 1).reshape(-1, QK_K)
        q = unpack_4bit_pairs(blocks[:, 48:48 + QK_K // 2]) | (high << 4)
        return decode_scale_min_32(d, dmin, blocks[:, 4:16], q)
