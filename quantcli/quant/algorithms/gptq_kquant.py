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
2. each column of the block is then rounded to the level nearest to its current value under those scales,
   and its error is fed forward to the remaining columns. For the K-quants, whose super-block holds 8 or 16
   sub-blocks with their own scale (and min) codes under one d (and dmin), each sub-block's codes are chosen
   again when the loop reaches it (`refit_sub_block`, within `scale_radius` steps): by then the earlier
   sub-blocks' errors have moved its values, and GPTQ's cost of an error in column j (1 / [H^-1]_jj) is what
   the search weighs, not the encoder's importance weights;
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

import itertools
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from ..backend import Backend, get_backend
from ..base import quant_class
from ..types._common import LevelCodes, SubScaleCodes

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
#: How far (in code steps, per field) a K-quant sub-block's scale and min codes may move from the encoder's when
#: the loop reaches the sub-block. Measured on the widened SmolLM2 (docs/gguf-gptq.md): 2 took Q4_K_M's
#: llama-perplexity KLD from 1.0 % above llama.cpp's imatrix file to 4.7 % below; 4 gained 1.2 % more (about
#: the run-to-run noise) for 35 % more time. 0 keeps the encoder's codes.
DEFAULT_SCALE_RADIUS = 2
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
    # re-choose each K-quant sub-block's scale codes within this many steps when the loop reaches it (0: never)
    scale_radius: int = DEFAULT_SCALE_RADIUS


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


def code_slopes(cls: type, blocks: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How each sub-block's (a, b) moves per unit step of each of its codes: (n_blocks, subs, fields, 2).

    Read from the decoder (one code step per field, every sub-block at once), so no type's scale arithmetic is
    restated here; a sub-block's decode is linear in its own codes and independent of the other sub-blocks'.
    """
    codes = cls.scale_codes(blocks)
    step = np.where(codes < cls.code_bounds()[1], 1, -1)
    first = np.arange(0, cls.block_size, cls.sub_size)      # one value per sub-block stands for all of it
    slopes = np.empty(codes.shape + (2,), dtype=np.float64)
    for f in range(codes.shape[2]):
        moved = codes.copy()
        moved[:, :, f] += step[:, :, f]
        a_f, b_f = affine_of(cls, cls.with_scale_codes(blocks, moved))
        slopes[:, :, f, 0] = (a_f - a)[:, first] / step[:, :, f]
        slopes[:, :, f, 1] = (b_f - b)[:, first] / step[:, :, f]
    return slopes


def refit_sub_block(cls: type, blocks: np.ndarray, k: int, x: np.ndarray, weights: np.ndarray, radius: int, *,
                    affine: tuple[np.ndarray, np.ndarray], slopes: np.ndarray) -> np.ndarray:
    """`blocks` with sub-block k's codes re-chosen for its current values x (n_blocks, sub_size) (a copy).

    `affine` is affine_of(cls, blocks) and `slopes` code_slopes of the same blocks (or of blocks differing from
    them in other sub-blocks' codes only).

    Every code combination within `radius` steps of the current one (clipped to the codes' ranges) is tried;
    each rounds x to its nearest levels, and the one of lowest weighted square error is kept (the current codes
    unless another is strictly better). Why: the encoder chose all sub-blocks' codes when the loop reached the
    super-block, before the earlier sub-blocks' rounding errors had been fed into this one, and for its own
    importance weights rather than GPTQ's (the caller passes 1 / [H^-1]_jj, the cost of an error in column j).
    """
    sub = cls.sub_size
    codes = cls.scale_codes(blocks)
    here = codes[:, k, :]                                                       # (n, fields)
    offsets = np.array(list(itertools.product(range(-radius, radius + 1), repeat=here.shape[1])), dtype=np.int32)
    cand = np.clip(here[:, None, :] + offsets[None, :, :], *cls.code_bounds())   # (n, C, fields)
    # float32 is plenty to rank candidates and halves the traffic over the (n, C, sub) arrays
    moved = (cand - here[:, None, :]).astype(np.float32)
    a = affine[0][:, k * sub, None, None] + moved @ slopes[:, k, :, 0, None].astype(np.float32)    # (n, C, 1)
    b = affine[1][:, k * sub, None, None] + moved @ slopes[:, k, :, 1, None].astype(np.float32)
    a, b = a.astype(np.float32), b.astype(np.float32)
    inverse = np.divide(1, a, out=np.zeros_like(a), where=a != 0)   # a zero scale: every level decodes to b
    xs = np.asarray(x, dtype=np.float32)[:, None, :]                             # (n, 1, sub)
    levels = np.rint((xs - b) * inverse)
    np.clip(levels, cls.level_min, cls.levels - 1, out=levels)
    resid = xs - (a * levels + b)
    resid *= resid
    err = resid @ np.asarray(weights, dtype=np.float32)                         # (n, C)
    centre = len(offsets) // 2                                                  # the all-zero offset
    best = np.argmin(err, axis=1)
    rows = np.arange(len(best))
    best = np.where(err[rows, best] < err[:, centre], best, centre)
    codes[:, k, :] = cand[rows, best]
    return cls.with_scale_codes(blocks, codes)


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
    refit = options.scale_radius > 0 and issubclass(cls, SubScaleCodes)
    for s in range(n_blocks):
        c0, c1 = s * width, (s + 1) * width
        block_w = work[:, c0:c1]             # a view: the in-block updates below write into `work`
        imp = None if importance is None else np.ascontiguousarray(importance[c0:c1])
        chosen = backend.quantize(qtype, block_w.astype(np.float32), imp, threads)   # scales from updated weights
        a, b = affine_of(cls, chosen)
        u_blk = u[c0:c1, c0:c1]
        err = np.empty((rows, width), dtype=np.float64)
        if refit:
            slopes = code_slopes(cls, chosen, a, b)
            cost = 1.0 / np.diag(u_blk) ** 2
        for j in range(width):
            if refit and j % cls.sub_size == 0:
                sub = slice(j, j + cls.sub_size)
                chosen = refit_sub_block(cls, chosen, j // cls.sub_size, block_w[:, sub], cost[sub],
                                         options.scale_radius, affine=(a, b), slopes=slopes)
                a, b = affine_of(cls, chosen)
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
    return encoded, cls.dequantize(encoded, cols)


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """trace((W - Q) H (W - Q)^T) = ||(W - Q) X^T||^2 for H = X^T X: the loss GPTQ minimises."""
    d = np.asarray(w, dtype=np.float64) - np.asarray(q, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", d, h, d))
