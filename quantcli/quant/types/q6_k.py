"""Q6_K: super-blocks of 256 values in 16 sub-blocks of 16; x ~ (d * sc) * q, q in -32..31, sc an int8.

Block (210 bytes): ql (128 bytes of low nibbles), qh (64 bytes of high 2-bit pairs), 16 int8 scales,
d (fp16). In each half h of the block (values 128h .. 128h + 127), ql byte 64h + l holds values
128h + l (low nibble) and 128h + 64 + l (high nibble), ql byte 64h + 32 + l values 128h + 32 + l and
128h + 96 + l, and qh byte 32h + l holds the top 2 bits of values 128h + 32k + l at bits 2k.
Format and encoder rules: formats/Q6_K.md. C twin: quant/_kernels/q6_k.c.

Numeric quirks reproduced: the imatrix path passes the raw importance weights to the search (no sigma2
term); a super-block whose scales are all below GROUP_MAX_EPS is written as 210 zero bytes; sub-blocks whose
decoded scale is 0 keep their search levels.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..base import QuantType
from ._common import (LevelCodes, SubScaleCodes, F32, GROUP_MAX_EPS, block_bytes, block_weights, c_low_byte, f32_div,
                      first_absmax, fp16_field, fp16_value, make_qx_quants, nearest_int, read_fp16, to_columns)
from ._kquant import KQUANT_CHUNK_BLOCKS, QK_K, requantize

#: Q6_K's levels are q + NMAX with q in -NMAX..NMAX-1; the largest scale maps to SCALE_LEVELS (as -128).
NMAX = 32
SCALE_LEVELS = 128
SCALE_CAP = 127
SUB = 16


def _pack_quants(L: np.ndarray) -> np.ndarray:
    """(n_super, 256) levels 0..63 -> (n_super, 192) bytes: ql then qh (module docstring)."""
    Lb = L.reshape(-1, 2, 4, 32)
    ql = np.concatenate([(Lb[:, :, 0] & 0xF) | ((Lb[:, :, 2] & 0xF) << 4),
                         (Lb[:, :, 1] & 0xF) | ((Lb[:, :, 3] & 0xF) << 4)], axis=2).reshape(-1, QK_K // 2)
    qh = ((Lb[:, :, 0] >> 4) | ((Lb[:, :, 1] >> 4) << 2) | ((Lb[:, :, 2] >> 4) << 4)
          | ((Lb[:, :, 3] >> 4) << 6)).reshape(-1, QK_K // 4)
    return np.concatenate([(ql & 0xFF).astype(np.uint8), (qh & 0xFF).astype(np.uint8)], axis=1)


def _encode(rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    subs = QK_K // SUB
    xt = to_columns(rows, SUB)
    n_super = xt.shape[1] // subs
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        qw = None if imatrix is None else block_weights(imatrix, rows.shape[0], SUB)
        scales, L = make_qx_quants(xt, NMAX, qw)
        sc = scales.reshape(n_super, subs)
        amax, max_scale = first_absmax(np.ascontiguousarray(sc.T))
        empty = amax < GROUP_MAX_EPS
        iscale = f32_div(F32(-SCALE_LEVELS), np.where(empty, F32(1), max_scale))
        d = f32_div(F32(1), iscale)
        q8 = c_low_byte(np.minimum(SCALE_CAP, nearest_int(iscale[:, None] * sc)), signed=True)
        dq = (fp16_value(d)[:, None] * q8.astype(F32)).reshape(-1)
    L = requantize(xt, L.astype(np.int32), dq, None, -NMAX, NMAX - 1, NMAX).T.reshape(n_super, QK_K)
    blocks = block_bytes(n_super, _pack_quants(L), (q8 & 0xFF).astype(np.uint8), fp16_field(d))
    blocks[empty] = 0                        # ggml writes an all-zero block when every scale is ~0
    return blocks.reshape(rows.shape[0], -1)


class Q6_K(QuantType, LevelCodes, SubScaleCodes, qtype=GGMLQuantizationType.Q6_K):
    fp16_offsets = (208,)  # byte offsets of the block's fp16 scale fields
    levels = 2 * NMAX
    quant_span = (0, QK_K // 2 + QK_K // 4)
    sub_size = SUB
    code_ranges = ((-SCALE_LEVELS, SCALE_CAP),)   # int8 scales; the encoder writes -128 for a block's largest
    chunk_blocks = KQUANT_CHUNK_BLOCKS

    @classmethod
    def scale_codes(cls, blocks: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.int32)[:, :, None]

    @classmethod
    def with_scale_codes(cls, blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
        out = np.array(blocks, dtype=np.uint8, copy=True)
        out[:, 192:208] = codes[:, :, 0].astype(np.int8).view(np.uint8)
        return out

    @classmethod
    def encode_chunk(cls, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return _encode(rows, imatrix)

    @classmethod
    def pack_levels(cls, L: np.ndarray) -> np.ndarray:
        return _pack_quants(L)

    @classmethod
    def decode_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        ql = blocks[:, 0:128].astype(np.int32).reshape(-1, 2, 1, 2, 32)      # (half, nibble, byte row, l)
        qh = blocks[:, 128:192].astype(np.int32).reshape(-1, 2, 1, 32)
        low = (ql >> (4 * np.arange(2).reshape(1, 1, 2, 1, 1))) & 0xF         # value index 64*nibble + 32*row + l
        low = low.reshape(-1, 2, 4, 32)
        high = (qh >> (2 * np.arange(4).reshape(1, 1, 4, 1))) & 3
        q = ((low | (high << 4)) - NMAX).reshape(-1, 16, SUB).astype(F32)
        sc = blocks[:, 192:208].view(np.int8).astype(F32)
        d = read_fp16(blocks, 208)
        return ((d * sc)[:, :, None] * q).reshape(-1, QK_K)
