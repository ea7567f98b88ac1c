"""IQ4_XS: super-blocks of 256 values = 8 blocks of 32; each value is a 4-bit index into IQ4_GRID, each block has
a 6-bit scale ls (stored + 32), the super-block one fp16 scale d; a value decodes as d * (ls - 32) *
IQ4_GRID[q] (formats/IQ4_XS.md).

Encoder: iq4_block_scales picks a float scale per block (weights use sigma2 of the whole super-block);
d = -max_scale / 32 for the block scale of the largest magnitude; ls = clamp(nearest_int(scale / d), -32, 31);
values then take the grid level nearest x / (d * ls).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (F32, IQ4_GRID, best_index_iq4, block_bytes, block_weights, c_inverse_or_zero,
                      f32_div, first_absmax, fp16_field, iq4_block_scales, iq4_weights,
                      nearest_int, pack_nibbles, read_fp16, to_columns, unpack_nibbles)

SUB = 32              # values per block
SCALE_BIAS = 32       # stored block scale = ls + 32, ls in -32..31
LOW_BITS = 4          # scales_l holds the low 4 bits of each stored scale, two per byte
HIGH_MASK = 0x3       # scales_h holds the top 2 bits, eight 2-bit fields in a little-endian uint16


class IQ4_XS(QuantType, qtype=GGMLQuantizationType.IQ4_XS):
    fp16_offsets = (0,)  # byte offsets of the block's fp16 scale fields
    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        n_sub = cls.block_size // SUB
        xt = to_columns(rows, SUB)                                   # (32, n_blocks of 32)
        qw = None if imatrix is None else block_weights(imatrix, rows.shape[0], SUB)
        scales = iq4_block_scales(xt, iq4_weights(xt, qw, n_sub))
        _, max_scale = first_absmax(scales.reshape(-1, n_sub).T)
        d = f32_div(-max_scale, F32(SCALE_BIAS))
        with np.errstate(invalid="ignore", over="ignore"):
            ls = np.clip(nearest_int(np.repeat(c_inverse_or_zero(d), n_sub) * scales), -SCALE_BIAS, SCALE_BIAS - 1)
            dl = np.repeat(d, n_sub) * ls.astype(F32)
            L = best_index_iq4(c_inverse_or_zero(dl) * xt)
        stored = (ls + SCALE_BIAS).reshape(-1, n_sub)                  # (n_super, 8)
        low = stored & ((1 << LOW_BITS) - 1)
        scales_l = (low[:, 0::2] | (low[:, 1::2] << LOW_BITS)).astype(np.uint8)
        shifts = (2 * np.arange(n_sub)).astype(np.uint32)
        scales_h = np.bitwise_or.reduce((stored >> LOW_BITS).astype(np.uint32) << shifts, axis=1)
        scales_h = scales_h.astype("<u2").view(np.uint8).reshape(-1, 2)
        half = SUB // 2
        qs = pack_nibbles(L[:half], L[half:]).T.reshape(-1, n_sub * half)
        return block_bytes(rows.shape[0], fp16_field(d), scales_h, scales_l, qs)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        n_sub = cls.block_size // SUB
        d = read_fp16(blocks, 0)
        high = np.ascontiguousarray(blocks[:, 2:4]).view("<u2").astype(np.int32)     # (n, 1)
        low_bytes = blocks[:, 4:4 + n_sub // 2].astype(np.int32)
        low = np.stack([low_bytes & 0xF, low_bytes >> LOW_BITS], axis=2).reshape(-1, n_sub)
        ls = low | (((high >> (2 * np.arange(n_sub))) & HIGH_MASK) << LOW_BITS)
        dl = d * (ls - SCALE_BIAS).astype(F32)                                         # (n, 8)
        q = IQ4_GRID.astype(F32)[unpack_nibbles(blocks[:, 4 + n_sub // 2:])].reshape(-1, n_sub, SUB)
        return (dl[:, :, None] * q).reshape(-1, cls.block_size)
