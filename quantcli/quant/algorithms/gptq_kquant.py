"""GPTQ error compensation on llama.cpp's block types: the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the
32-value legacy types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) that K-quant mixes fall back to.

GPTQ quantizes a linear weight W [rows, cols] one input column at a time and spreads each column's rounding
error over the columns not yet quantized, using the inverse Hessian of the layer's inputs (H = X^T X). Every
supported type groups consecutive values of a row into blocks with their own scales (and mins): super-blocks
of 256 for the K-quants, blocks of 32 for the legacy types. The loop walks the columns one block width at a time:

1. when it reaches a block of columns, those blocks' scales and mins are chosen by the type's own encoder
   (the byte-exact llama.cpp search, C or NumPy reference) from the weights as the earlier columns' errors
   have left them, with the importance weights llama.cpp's imatrix would give (the mean square input of each
   column, diag(H)/n);
2. each column of the block is then rounded to the level nearest to its current value under those fixed
   scales, and its error is fed forward to the remaining columns;
3. the levels are written into the encoder's blocks (`LevelCodes.with_levels`), so the bytes are the type's
   normal layout and decode as any other block does.

The encoder sees one block width of a row at a time. For the K-quants that is exactly llama.cpp's rule (their
statistics are per super-block). Q4_0..Q5_1's imatrix search weighs each value by qw * sqrt(sigma2 + x^2) with
sigma2 the mean square of the *whole row*; here sigma2 is that of the 32 values of the block being encoded,
since the rest of the row is not final when the block is reached. Q8_0 ignores importance weights, as in llama.cpp.

Rows are independent: only the columns interact (through H), so any permutation of the rows (llama's q/k
rope permutation) may be applied to the encoded rows afterwards.

    blocks, deq = gptq_kquant(W, H, GGMLQuantizationType.Q4_K)
    blocks, deq = gptq_kquant(W, H, GGMLQuantizationType.Q5_0)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from ..backend import Backend, get_backend
from ..base import quant_class
from ..types._common import LevelCodes

#: The K-quants the column loop supports (each has LevelCodes; blocks of 256 columns).
KQUANT_TYPES = (GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K,
                GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K)
#: The legacy types it supports (blocks of 32 columns): what K-quant mixes store rows of other widths in.
LEGACY_TYPES = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q5_0,
                GGMLQuantizationType.Q5_1, GGMLQuantizationType.Q8_0)
#: Every type gptq_kquant encodes.
GPTQ_TYPES = KQUANT_TYPES + LEGACY_TYPES
#: The types a GGUF pass encodes unless told otherwise: the K-quants and the 4-bit legacy fallbacks. Measured on
#: SmolLM2-135M (docs/quality.md "gguf-gptq"): GPTQ on the 4-bit Q4_0 fallbacks of Q3_K_M lowers KLD well below
#: llama.cpp's imatrix file, while GPTQ on the 5- and 8-bit fallbacks of Q4_K_M (Q5_0, Q8_0) raised KLD on the
#: evaluation text above the importance-weighted encoder's; those stay with that encoder.
DEFAULT_GGUF_TYPES = KQUANT_TYPES + (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1)
#: Dampening added to H's diagonal, as a fraction of its mean diagonal (GPTQ's percdamp).
DEFAULT_DAMP = 0.01
#: llama.cpp's CPU matmul rounds the activations to 8 bits before the dot product with a quantized weight, with one
#: scale (absmax / 127) per block of this many inputs: Q8_K blocks for the K-quants, Q8_0 / Q8_1 for the rest.
ACTIVATION_BLOCK = {**{t: 256 for t in KQUANT_TYPES}, **{t: 32 for t in LEGACY_TYPES}}


def runtime_inputs(x: np.ndarray, block: int) -> np.ndarray:
    """x [..., cols] as llama.cpp's CPU matmul multiplies it: each block of `block` inputs rounded to 8 bits on
    the grid absmax / 127 (float32, a new array).

    Why GPTQ's Hessian is built from these and not from x: the column loop moves each rounding error onto other
    columns by how their inputs correlate. Small inputs that share a block with a large one lose most of their
    bits at run time, so a correction aimed at them through the exact correlations partly misses. Measured
    (docs/gguf-gptq.md): llama-perplexity's KLD fell on all four files tried, by up to 2.4 %; our engine, which
    computes with exact inputs, scores the same files slightly worse.
    """
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1] // block, block)
    step = np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)
    out = np.divide(blocks, step, out=np.zeros_like(blocks), where=step > 0)   # an all-zero block stays zero
    np.rint(out, out=out)
    out *= step
    return out.reshape(x.shape)


@dataclass(frozen=True)
class KGPTQOptions:
    damp: float = DEFAULT_DAMP
    importance: bool = True    # weigh the encoder's scale search with diag(H) (llama.cpp's imatrix semantics)
    # the block types a GGUF pass encodes with GPTQ; matrices of other types keep the importance-weighted encoder
    types: tuple[GGMLQuantizationType, ...] = DEFAULT_GGUF_TYPES
    # H from the inputs as llama.cpp's matmul rounds them (runtime_inputs); the importance weights then too
    runtime_inputs: bool = True


def level_codes(qtype: GGMLQuantizationType) -> type:
    """The reference class of a supported block type (it implements LevelCodes)."""
    cls = quant_class(qtype)
    if qtype not in GPTQ_TYPES or not issubclass(cls, LevelCodes):
        raise ValueError(f"GPTQ on GGUF blocks supports {', '.join(t.name for t in GPTQ_TYPES)}, not {qtype.name}")
    return cls


def affine_of(cls: type, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value of every block, (a, b) with decode(with_levels(blocks, L)) = a * L + b, both
    (n_blocks, block_size) float64.

    Read from the type's own decoder at levels 0 and 1, so no type's scale layout is restated here.
    """
    shape = (blocks.shape[0], cls.block_size)
    # two neighbouring levels inside every type's range (Q8_0's lowest valid level is 1, not 0)
    lo = cls.level_min
    at_lo = cls.decode_blocks(cls.with_levels(blocks, np.full(shape, lo, dtype=np.int32))).astype(np.float64)
    a = cls.decode_blocks(cls.with_levels(blocks, np.full(shape, lo + 1, dtype=np.int32))).astype(np.float64) - at_lo
    return a, at_lo - a * lo


def inverse_hessian_factor(h: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(upper Cholesky factor of H^-1, dead-column mask) after GPTQ's dampening.

    A column no token ever excited (diag 0) gets a unit diagonal, so H stays invertible; its weights are then
    rounded plainly, with no error to spread from them.
    """
    h = np.array(h, dtype=np.float64, copy=True)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices_from(h)] += damp * mean_diag
    # H^-1 = (L L^T)^-1; its upper Cholesky factor is what the column updates use
    while True:
        try:
            lower = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:   # numerically indefinite: dampen more, as GPTQ implementations do
            h[np.diag_indices_from(h)] += damp * mean_diag
    inv = np.linalg.inv(lower)
    hinv = inv.T @ inv
    return np.linalg.cholesky(hinv).T, dead


def gptq_kquant(w: np.ndarray, h: np.ndarray, qtype: GGMLQuantizationType, *, count: int = 1,
                options: KGPTQOptions = KGPTQOptions(), backend: Backend | None = None,
                threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ-quantize `w` [rows, cols] into `qtype` blocks given H = sum of x x^T [cols, cols].

    cols must be a multiple of the type's block size (256 for the K-quants, 32 for the legacy types).
    `count` is the number of input vectors summed into H (the importance weights are diag(H) / count, the mean
    square input of each column, as llama.cpp's imatrix). Returns (bytes [rows, row_bytes] uint8, the decoded
    values [rows, cols] float32, exactly what a GGUF reader decodes from those bytes).
    """
    cls = level_codes(qtype)
    backend = backend or get_backend()
    rows, cols = w.shape
    width = cls.block_size
    if cols % width:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {width} values, got {cols}")
    if h.shape != (cols, cols):
        raise ValueError(f"H has shape {h.shape}, the weight has {cols} columns")
    u, dead = inverse_hessian_factor(h, options.damp)
    importance = (np.diag(h) / max(count, 1)).astype(np.float32) if options.importance else None
    work = np.array(w, dtype=np.float64, copy=True)
    work[:, dead] = 0.0
    n_blocks = cols // width
    out = np.empty((rows, n_blocks, cls.type_size), dtype=np.uint8)
    levels = np.empty((rows, width), dtype=np.int32)
    bottom, top = cls.level_min, cls.levels - 1
    for s in range(n_blocks):
        c0, c1 = s * width, (s + 1) * width
        block_w = work[:, c0:c1]             # a view: the in-block updates below write into `work`
        imp = None if importance is None else np.ascontiguousarray(importance[c0:c1])
        chosen = backend.quantize(qtype, block_w.astype(np.float32), imp, threads)   # scales from updated weights
        a, b = affine_of(cls, chosen)
        u_blk = u[c0:c1, c0:c1]
        err = np.empty((rows, width), dtype=np.float64)
        for j in range(width):
            col = block_w[:, j]
            aj, bj = a[:, j], b[:, j]
            with np.errstate(divide="ignore", invalid="ignore"):
                lv = np.rint((col - bj) / aj)
            # a zero scale decodes every level alike: keep the lowest valid one
            lv = np.where(aj != 0, np.clip(np.nan_to_num(lv), bottom, top), bottom).astype(np.int32)
            levels[:, j] = lv
            e = (col - (aj * lv + bj)) / u_blk[j, j]
            err[:, j] = e
            if j + 1 < width:
                block_w[:, j + 1:] -= np.outer(e, u_blk[j, j + 1:])
        if c1 < cols:                        # the lazy batch update of every later column (one GEMM)
            work[:, c1:] -= err @ u[c0:c1, c1:]
        out[:, s] = cls.with_levels(chosen, levels)
    encoded = out.reshape(rows, -1)
    decoded = cls.decode_blocks(out.reshape(-1, cls.type_size)).reshape(rows, cols).astype(np.float32)
    return encoded, decoded


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """trace((W - Q) H (W - Q)^T) = ||(W - Q) X^T||^2 for H = X^T X: the loss GPTQ minimises."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", d, h, d))
