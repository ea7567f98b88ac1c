"""GPTQ error compensation on llama.cpp's K-quant blocks (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

GPTQ quantizes a linear weight W [rows, cols] one input column at a time and spreads each column's rounding
error over the columns not yet quantized, using the inverse Hessian of the layer's inputs (H = X^T X). The
K-quants group 256 consecutive values of a row into a super-block with per-sub-block scales (and mins). Here
the loop walks the columns in super-blocks of 256:

1. when it reaches a super-block, that super-block's scales and mins are chosen by the type's own encoder
   (the byte-exact llama.cpp search) from the weights as the earlier columns' errors have left them, with
   the importance weights llama.cpp's imatrix would give (the mean square input of each column, diag(H)/n);
2. each column of the super-block is then rounded to the level nearest to its current value under those
   fixed scales, and its error is fed forward to the remaining columns;
3. the levels are written into the encoder's blocks (`LevelCodes.with_levels`), so the bytes are the type's
   normal layout and decode as any other block does.

Rows are independent: only the columns interact (through H), so any permutation of the rows (llama's q/k
rope permutation) may be applied to the encoded rows afterwards.

    blocks, deq = gptq_kquant(W, H, GGMLQuantizationType.Q4_K)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from ..backend import Backend, get_backend
from ..base import quant_class
from ..types._kquant import QK_K, LevelCodes

#: The K-quants the column loop supports (each has LevelCodes).
KQUANT_TYPES = (GGMLQuantizationType.Q2_K, GGMLQuantizationType.Q3_K, GGMLQuantizationType.Q4_K,
                GGMLQuantizationType.Q5_K, GGMLQuantizationType.Q6_K)
#: Dampening added to H's diagonal, as a fraction of its mean diagonal (GPTQ's percdamp).
DEFAULT_DAMP = 0.01


@dataclass(frozen=True)
class KGPTQOptions:
    damp: float = DEFAULT_DAMP
    importance: bool = True    # weigh the encoder's scale search with diag(H) (llama.cpp's imatrix semantics)


def level_codes(qtype: GGMLQuantizationType) -> type:
    """The reference class of a supported K-quant (it implements LevelCodes)."""
    cls = quant_class(qtype)
    if qtype not in KQUANT_TYPES or not issubclass(cls, LevelCodes):
        raise ValueError(f"GPTQ on GGUF blocks supports {', '.join(t.name for t in KQUANT_TYPES)}, not {qtype.name}")
    return cls


def affine_of(cls: type, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value of every block, (a, b) with decode(with_levels(blocks, L)) = a * L + b, both (n_super, 256) float64.

    Read from the type's own decoder at levels 0 and 1, so no type's scale layout is restated here.
    """
    n = blocks.shape[0]
    b = cls.decode_blocks(cls.with_levels(blocks, np.zeros((n, QK_K), dtype=np.int32))).astype(np.float64)
    a = cls.decode_blocks(cls.with_levels(blocks, np.ones((n, QK_K), dtype=np.int32))).astype(np.float64) - b
    return a, b


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
    """GPTQ-quantize `w` [rows, cols] (cols a multiple of 256) into `qtype` blocks given H = sum of x x^T [cols, cols].

    `count` is the number of input vectors summed into H (the importance weights are diag(H) / count, the mean
    square input of each column, as llama.cpp's imatrix). Returns (bytes [rows, row_bytes] uint8, the decoded
    values [rows, cols] float32, exactly what a GGUF reader decodes from those bytes).
    """
    cls = level_codes(qtype)
    backend = backend or get_backend()
    rows, cols = w.shape
    if cols % QK_K:
        raise ValueError(f"{qtype.name} needs rows of a multiple of {QK_K} values, got {cols}")
    if h.shape != (cols, cols):
        raise ValueError(f"H has shape {h.shape}, the weight has {cols} columns")
    u, dead = inverse_hessian_factor(h, options.damp)
    importance = (np.diag(h) / max(count, 1)).astype(np.float32) if options.importance else None
    work = np.array(w, dtype=np.float64, copy=True)
    work[:, dead] = 0.0
    n_super = cols // QK_K
    out = np.empty((rows, n_super, cls.type_size), dtype=np.uint8)
    levels = np.empty((rows, QK_K), dtype=np.int32)
    top = cls.levels - 1
    for s in range(n_super):
        c0, c1 = s * QK_K, (s + 1) * QK_K
        block_w = work[:, c0:c1]             # a view: the in-block updates below write into `work`
        imp = None if importance is None else np.ascontiguousarray(importance[c0:c1])
        chosen = backend.quantize(qtype, block_w.astype(np.float32), imp, threads)   # scales from updated weights
        a, b = affine_of(cls, chosen)
        u_blk = u[c0:c1, c0:c1]
        err = np.empty((rows, QK_K), dtype=np.float64)
        for j in range(QK_K):
            col = block_w[:, j]
            aj, bj = a[:, j], b[:, j]
            with np.errstate(divide="ignore", invalid="ignore"):
                lv = np.rint((col - bj) / aj)
            lv = np.where(aj != 0, np.clip(np.nan_to_num(lv), 0, top), 0).astype(np.int32)
            levels[:, j] = lv
            e = (col - (aj * lv + bj)) / u_blk[j, j]
            err[:, j] = e
            if j + 1 < QK_K:
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
