"""GPTQ (Frantar et al., 2022, arXiv 2210.17323): integer weights chosen column by column, each column's rounding
error spread over the columns not yet quantized through the inverse Hessian of the layer's inputs.

The column loop, for W [rows, cols] and U, the upper Cholesky factor of (H + damp)^-1 (hessian.py):

    for each block of `block_size` columns [i1, i2):
        for each column i of the block:
            if i starts a scale group: scale (and zero point) of the group from the error-updated W[:, i:i+g]
            q = code of W[:, i] (rtn.py's rounding); dq = what a loader computes from q
            e = (W[:, i] - dq) / U[i, i]
            W[:, i+1:i2] -= e U[i, i+1:i2]          (inside the block: the per-column loop)
        W[:, i2:] -= E U[i1:i2, i2:]                 (after the block: one BLAS matrix product)

Scales follow rtn.py exactly (min-max over a range that holds 0, the scale rounded to its stored dtype before the
codes are made, the tiny-scale rule), and the dequantized value that feeds the error is rounded to the scale
dtype as IntCodes.dequantize rounds it, so the error is measured against what the loader will compute.

act_order quantizes columns by descending diag(H); groups are then formed over the permuted order and `g_idx`
maps each original column to its group. static_groups computes every group's scale from the original weights
before the loop, keeping groups contiguous in the original order (g_idx trivial) while still quantizing in
act-order. Per-channel scales (group_size None) are always computed before the loop, from the whole row.

The per-column loop within a block is the kernel: quant/_kernels/gptq.c (rows in parallel; bit for bit equal to
`_block_reference` here) or the NumPy reference, chosen by QUANTCLI_BACKEND. Rows are independent inside a
block, so the C kernel's result does not depend on its thread count; the BLAS product between blocks and the
Hessian's Gram matrices depend on BLAS's own threading, which `threads` pins.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from ...errors import InputError
from ..backend import Backend, get_backend
from ..int.encode import DTYPE_IDS
from ...io.int_codes import IntCodes, round_to, scale_to_f32
from ...io.int_scheme import IntScheme
from ..int.rtn import _params
from .base import Chosen
from .hessian import Hessians, prepare
from .step import BlockStep


@dataclass(frozen=True)
class Prepared:
    """What one Hessian gives every weight that shares it: the column order and U (float32, permuted)."""

    perm: np.ndarray            # int64 [cols]: column quantized at position k is perm[k]
    u: np.ndarray               # float32 [cols, cols], upper triangular
    dead: np.ndarray            # bool [cols], in the original order
    damp: float                 # the dampening fraction that made H + damp positive definite


def prepare_hessian(h: np.ndarray, damp: float, act_order: bool) -> Prepared:
    """Dead columns, act-order permutation, dampening and U for a float64 Hessian."""
    diag = np.diag(h).copy()
    diag[diag == 0] = 1.0                                           # dead columns count as H_ii = 1 (hessian.py)
    perm = np.argsort(-diag, kind="stable") if act_order else np.arange(h.shape[0])
    u, dead, frac = prepare(h, None, damp, perm if act_order else None)
    return Prepared(perm, np.ascontiguousarray(u, dtype=np.float32), dead, frac)


def _block_reference(w: np.ndarray, i1: int, u1: np.ndarray, group_of: np.ndarray, fresh: np.ndarray, g: int,
                     scheme: IntScheme, dtype: str, scale: np.ndarray, zp: np.ndarray, q: np.ndarray,
                     err: np.ndarray) -> None:
    """The per-column loop over w[:, i1:i1+count] (in place), NumPy. The C twin is qc_gptq_block (gptq.c)."""
    count = u1.shape[0]
    w1 = w[:, i1:i1 + count]
    qmin, qmax = np.float32(scheme.qmin), np.float32(scheme.qmax)
    for i in range(count):
        gi = group_of[i]
        col = w1[:, i]
        with np.errstate(all="ignore"):
            if fresh[i]:
                seg = w1[:, i:i + g]
                lo = np.minimum(seg.min(axis=1), np.float32(0))
                hi = np.maximum(seg.max(axis=1), np.float32(0))
                _, s, z = _params(lo, hi, scheme, dtype)
                scale[:, gi] = s
                zp[:, gi] = 0 if z is None else z
            s, z = scale[:, gi], zp[:, gi]
            x = col / s
            if not scheme.symmetric:
                x = x + z
            code = np.clip(np.rint(x), qmin, qmax)
            dq = (code - z) * s if not scheme.symmetric else code * s
            dq = round_to(dq, dtype)[1]
            e = (col - dq) / u1[i, i]
        q[:, i1 + i] = code.astype(np.int8)
        err[:, i] = e
        if i + 1 < count:
            w1[:, i + 1:] -= e[:, None] * u1[i, i + 1:][None, :]


def _block_c(kernels: object, w: np.ndarray, i1: int, u1: np.ndarray, group_of: np.ndarray, fresh: np.ndarray,
             g: int, scheme: IntScheme, dtype: str, scale: np.ndarray, zp: np.ndarray, q: np.ndarray,
             err: np.ndarray, threads: int) -> None:
    kernels.gptq_block(w, w.shape[1], i1, np.ascontiguousarray(u1), group_of, fresh, g,  # type: ignore[attr-defined]
                       scheme.bits, int(scheme.symmetric), DTYPE_IDS[dtype], scale, zp, q, err, max(1, threads))


def _use_c(backend: Backend) -> bool:
    has = backend.policy != "reference" and backend.kernels is not None and hasattr(backend.kernels, "gptq_block")
    if not has and backend.policy == "c":
        raise InputError("QUANTCLI_BACKEND=c but the C extension has no GPTQ kernel.",
                         hint="Rebuild it (make install), or use QUANTCLI_BACKEND=reference.")
    return has


def quantize_weight(weight: np.ndarray, prep: Prepared, scheme: IntScheme, scale_dtype: str, *,
                    block_size: int = 128, static_groups: bool = False, backend: Backend | None = None,
                    threads: int = 1, name: str = "weight") -> tuple[IntCodes, np.ndarray | None]:
    """GPTQ one weight [rows, cols] with a prepared Hessian. Returns (codes in the original column order, g_idx
    int32 [cols] when act-order formed groups over permuted columns, else None)."""
    backend = backend or get_backend()
    w = np.array(weight, dtype=np.float32, copy=True)
    rows, cols = w.shape
    if prep.u.shape != (cols, cols):
        raise ValueError(f"Hessian is {prep.u.shape}, the weight has {cols} columns")
    scheme.check_row(name, cols)
    w[:, prep.dead] = 0.0
    g = cols if scheme.group_size is None else scheme.group_size
    ngroups = cols // g
    permuted = not np.array_equal(prep.perm, np.arange(cols))
    scale = np.zeros((rows, ngroups), dtype=np.float32)
    zp = np.zeros((rows, ngroups), dtype=np.float32)
    static = scheme.group_size is None or static_groups
    if static:  # every group's scale from the (dead-zeroed) original weights, before any error feedback
        groups = w.reshape(rows * ngroups, g)
        with np.errstate(all="ignore"):
            lo = np.minimum(groups.min(axis=1), np.float32(0))
            hi = np.maximum(groups.max(axis=1), np.float32(0))
            _, s, z = _params(lo, hi, scheme, scale_dtype)
        scale[:] = s.reshape(rows, ngroups)
        if z is not None:
            zp[:] = z.reshape(rows, ngroups)
        group_of = (prep.perm // g).astype(np.int32)
        fresh = np.zeros(cols, dtype=np.uint8)
        step = block_size
    else:       # groups over the quantization order, each one's scale taken when the loop reaches it
        group_of = (np.arange(cols) // g).astype(np.int32)
        fresh = (np.arange(cols) % g == 0).astype(np.uint8)
        step = max(g, block_size // g * g)     # whole groups per block: a group's columns are all in the block
    wp = np.ascontiguousarray(w[:, prep.perm]) if permuted else w
    qp = np.empty((rows, cols), dtype=np.int8)
    use_c = _use_c(backend)
    u = prep.u
    for i1 in range(0, cols, step):
        i2 = min(cols, i1 + step)
        err = np.empty((rows, i2 - i1), dtype=np.float32)
        u1 = u[i1:i2, i1:i2]
        if use_c:
            _block_c(backend.kernels, wp, i1, u1, group_of[i1:i2], fresh[i1:i2], g, scheme, scale_dtype, scale,
                     zp, qp, err, threads)
        else:
            _block_reference(wp, i1, u1, group_of[i1:i2], fresh[i1:i2], g, scheme, scale_dtype, scale, zp, qp, err)
        if i2 < cols:
            wp[:, i2:] -= err @ u[i1:i2, i2:]
    codes = np.empty_like(qp)
    codes[:, prep.perm] = qp
    stored = round_to(scale, scale_dtype)[0]           # exact: every scale is already a value of the dtype
    out = IntCodes(codes, stored, None if scheme.symmetric else zp.astype(np.int8))
    g_idx = None
    if permuted and not static:
        g_idx = np.empty(cols, dtype=np.int32)
        g_idx[prep.perm] = group_of
    return out, g_idx


def dequantize(codes: IntCodes, scheme: IntScheme, scale_dtype: str, g_idx: np.ndarray | None = None) -> np.ndarray:
    """What a loader computes from GPTQ's codes, float32 [rows, cols]: (code - zero[g]) * scale[g] with g the
    column's group (g_idx when given), rounded to the scale dtype as IntCodes.dequantize rounds it."""
    rows, cols = codes.codes.shape
    if g_idx is None:
        g_idx = np.arange(cols) // (cols if scheme.group_size is None else scheme.group_size)
    q = codes.codes.astype(np.float32)
    if codes.zero_point is not None:
        q = q - codes.zero_point.astype(np.float32)[:, g_idx]
    return round_to(q * scale_to_f32(codes.scale)[:, g_idx], scale_dtype)[1]


class GPTQ:
    """GPTQ as a BlockMethod: Hessians captured per sub-layer group, true-sequentially within the block.

    One staged walk of the block (BlockStep.walk) serves every group: the walk pauses before each group of linears
    that share an input (q/k/v, o, gate/up, down), the group is quantized from the Hessian of the inputs captured so
    far, and the walk continues with the quantized weights, so each group sees the earlier ones quantized.

    damp: dampening as a fraction of mean(diag H); act_order: columns by descending diag(H); block_size: columns
    per lazy batch update; static_groups: group scales from the original weights (see the module docstring).
    scale_dtype: the dtype the pack stage stores scales in (the weight's own dtype), one for all tensors or one per
    tensor name; threads: the C kernel's threads (and BLAS's, through the engine's own limit).
    """

    name = "gptq"

    def __init__(self, damp: float = 0.01, act_order: bool = False, block_size: int = 128,
                 static_groups: bool = False, *, scale_dtype: str | Mapping[str, str] = "BF16", threads: int = 1,
                 backend: Backend | None = None) -> None:
        if not 0 <= damp <= 1:
            raise InputError(f"GPTQ dampening {damp} is outside [0, 1].", hint="Use a fraction such as 0.01.")
        if block_size < 1:
            raise InputError(f"GPTQ block size {block_size} must be positive.", hint="Use 128.")
        self.damp, self.act_order, self.block_size, self.static_groups = damp, act_order, block_size, static_groups
        self.scale_dtype, self.threads = scale_dtype, threads
        self.backend = backend
        self.damps: dict[str, float] = {}      # the dampening each tensor needed (raised when H was singular)

    def _dtype(self, name: str) -> str:
        return self.scale_dtype if isinstance(self.scale_dtype, str) else self.scale_dtype[name]

    def process(self, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]:
        # BLAS/LAPACK (the Gram matrices, the factorisations, the block updates) on `threads` threads: a fixed
        # count keeps the results reproducible, and OpenBLAS's default of every core slows to a crawl when the
        # machine is shared
        with threadpool_limits(limits=max(1, self.threads), user_api="blas"):
            return self._process(step, targets)

    def _process(self, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]:
        backend = self.backend or get_backend()
        chosen: list[Chosen] = []
        hessians = Hessians(targets)

        def on_group(names: list[str]) -> None:
            # every chunk has reached this group's linears, with every earlier group already quantized
            group = [n for n in names if n in targets]
            if not group:
                return
            with threadpool_limits(limits=max(1, self.threads), user_api="blas"):
                chosen.extend(self._quantize_group(step, group, hessians, targets, backend))
            hessians.release(group)

        # one pass over the block: the walk pauses at each sub-layer group, and its outputs (with every group
        # quantized) are the next block's inputs, so the block runs once instead of once per group plus once
        step.walk(capture=hessians.capture, on_group=on_group)
        missing = sorted(set(targets) - {c.name for c in chosen})
        if missing:
            raise ValueError(f"GPTQ cannot place {missing} in block {step.index}'s sub-layer order")
        return chosen

    def _quantize_group(self, step: BlockStep, group: list[str], hessians: Hessians,
                        targets: Mapping[str, IntScheme], backend: Backend) -> list[Chosen]:
        """GPTQ the linears of one sub-layer group (they share one input) and put their dequantized values back."""
        chosen = []
        # linears of one group share their input, so their Hessians are equal: prepare each distinct one once
        seen: list[tuple[np.ndarray, Prepared]] = []
        for name in group:
            h = hessians.hessian(name)
            prep = next((p for other, p in seen if np.array_equal(other, h)), None)
            if prep is None:
                prep = prepare_hessian(h, self.damp, self.act_order)
                seen.append((h, prep))
            self.damps[name] = prep.damp
            dtype = self._dtype(name)
            codes, g_idx = quantize_weight(step.weight(name), prep, targets[name], dtype,
                                           block_size=self.block_size, static_groups=self.static_groups,
                                           backend=backend, threads=self.threads, name=name)
            step.set_weight(name, dequantize(codes, targets[name], dtype, g_idx))
            chosen.append(Chosen(name, codes=codes, g_idx=g_idx))
        return chosen
