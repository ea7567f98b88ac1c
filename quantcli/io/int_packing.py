"""Integer codes laid into int32 words the way compressed-tensors' pack_to_int32 (0.20) lays them: a byte layout
of the folder formats (compressed-tensors, SplitQuant), so it lives in io/ where their writers and readers are.

Codes are offset to unsigned (code + 2^(bits-1)) and written as one little-endian bit stream per row: code i of a
row occupies bits [i*bits, (i+1)*bits) counted from bit 0 of word 0, crossing word boundaries when bits does not
divide 32. A row of n codes takes ceil(n * bits / 32) words; unused high bits of the last word are 0. Zero points
of asymmetric schemes are packed the same way down the columns (along the output dimension) instead.

The C twin is qc_int_pack in quant/_kernels/int_rtn.c.
"""
from __future__ import annotations

import numpy as np


def packed_words(n: int, bits: int) -> int:
    return -(-n * bits // 32)


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, n) int8 codes in [-2^(bits-1), 2^(bits-1)) -> (rows, ceil(n*bits/32)) int32."""
    rows, n = codes.shape
    padded = -(-n // 32) * 32
    u = np.zeros((rows, padded), dtype=np.uint64)
    u[:, :n] = codes.astype(np.int64) + (1 << (bits - 1))
    u = u.reshape(rows, padded // 32, 32)
    out = np.zeros((rows, padded // 32, bits), dtype=np.uint64)
    for i in range(32):
        word, offset = divmod(i * bits, 32)
        out[:, :, word] |= (u[:, :, i] << np.uint64(offset)) & np.uint64(0xFFFFFFFF)
        if offset + bits > 32:
            out[:, :, word + 1] |= u[:, :, i] >> np.uint64(32 - offset)
    return out.reshape(rows, -1)[:, :packed_words(n, bits)].astype(np.uint32).view(np.int32)


def unpack_int32(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """The inverse of pack_int32: (rows, words) int32 -> (rows, n) int8."""
    w = words.view(np.uint32).astype(np.uint64)
    idx = np.arange(n) * bits
    word, offset = idx // 32, (idx % 32).astype(np.uint64)
    value = w[:, word] >> offset
    spill = (offset + np.uint64(bits)) > 32
    if spill.any():
        value[:, spill] |= w[:, word[spill] + 1] << (np.uint64(32) - offset[spill])
    value &= np.uint64((1 << bits) - 1)
    return (value.astype(np.int64) - (1 << (bits - 1))).astype(np.int8)
