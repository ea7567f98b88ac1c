"""The GPTQ pass for GGUF K-quant mixes: walk the blocks over calibration text, GPTQ every block matrix the mix
stores in one of the types KGPTQOptions.types names (by default the K-quants and the 4-bit legacy Q4_0/Q4_1 a
mix falls back to for rows that are not a multiple of 256), and hand the encoded rows to the quantize stage in place of its plain
encoding.

The plan decides every tensor's type exactly as for a plain conversion (the same mix, with an importance
matrix present), so the file has the same tensors, types and sizes; only the levels (and the scales chosen
from error-updated weights) differ. Blocks are walked in order with Engine.blocks: after a block's matrices
are quantized their decoded values replace the weights, so every later block is calibrated on the outputs of
the quantized earlier ones ("true sequential"). Tensors outside the blocks (token embedding, output) and
block matrices of other types (Q5_0/Q5_1/Q8_0 by default, F16, IQ4_NL, ...) are left to the quantize stage.

    result = gptq_overrides(Path("SmolLM2-135M-Instruct"), plan, load_calibration_text("builtin:calibration"),
                            CalibrateOptions(chunks=32))                       # doctest: +SKIP
    write_ggufs([(plan, path)], ckpt, overrides=[result.overrides])         # doctest: +SKIP
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import InputError
from ..models.transforms import Concat, PermuteRope, Transform
from ..plan.gguf import FLOAT_TYPES, Plan, TensorPlan
from ..quant.algorithms.gptq_kquant import (
    ACTIVATION_BLOCK,
    GPTQ_TYPES,
    KGPTQOptions,
    gptq_kquant,
    runtime_inputs,
)
from ..quant.algorithms.hessian import Hessians
from ..quant.backend import get_backend
from .calibrate import BLOCK_PREFIX, CalibrateOptions, special_ids
from .calibration_data import CalibrationText
from .chunks import calibration_chunks, resolve_ctx

#: Mixes whose block matrices are K-quants or their legacy fallbacks (all of which the column loop encodes).
GPTQ_MIXES = ("Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
              "Q3_K", "Q4_K", "Q5_K")
#: Transforms that only move or stack whole rows: they commute with a row-wise encoding and apply to its bytes.
ROW_TRANSFORMS = (PermuteRope, Concat)


@dataclass
class GPTQResult:
    overrides: dict[str, np.ndarray]                 # GGUF tensor name -> encoded rows [rows, row_bytes] uint8
    # GGUF tensor name -> mean square input per column, seen in the same walk (inputs of the quantized earlier
    # blocks): the importance weights for the block matrices GPTQ does not encode (a type left out, or F16)
    importance: dict[str, np.ndarray]
    ctx: int
    chunks: int
    seconds: float
    per_type: dict[str, int] = field(default_factory=dict)   # block type -> matrices GPTQ'd

    def manifest(self) -> dict[str, object]:
        return {"method": "gptq", "ctx": self.ctx, "chunks": self.chunks, "seconds": round(self.seconds, 3),
                "tensors": len(self.overrides), "types": dict(self.per_type)}


def check_gptq_mix(mix: str) -> None:
    if mix.upper() not in GPTQ_MIXES:
        raise InputError(f"--method gptq does not support --type {mix}: its error compensation is written for "
                         "llama.cpp's K-quant blocks.",
                         hint=f"Use one of: {', '.join(GPTQ_MIXES)}; or drop --method gptq.")


def _row_transform(t: TensorPlan) -> bool:
    return type(t.spec.transform) is Transform or isinstance(t.spec.transform, ROW_TRANSFORMS)


def gptq_targets(plan: Plan, types: tuple[GGMLQuantizationType, ...] = GPTQ_TYPES) -> dict[str, TensorPlan]:
    """HF weight name -> its planned GGUF tensor, for every 2-D block matrix the plan stores in a GPTQ type."""
    out: dict[str, TensorPlan] = {}
    for t in plan.tensors:
        if (t.name.startswith(BLOCK_PREFIX) and len(t.spec.shape) == 2 and t.qtype in types
                and t.spec.sources and _row_transform(t)):
            for src in t.spec.sources:
                out[src] = t
    return out


class _Capture:
    """The walk's capture callback: X^T X of the GPTQ targets (quant.algorithms.hessian.Hessians), with each
    target's inputs rounded as llama.cpp's matmul rounds them when `rounding` names its activation block, and the
    per-column sum of squares an imatrix would hold for the block's other quantized matrices (`squares`: HF name
    -> GGUF name), so those get importance weights from the same pass."""

    def __init__(self, hessians: Hessians, rounding: Mapping[str, int], squares: Mapping[str, str],
                 sums: dict[str, np.ndarray], counts: dict[str, int]) -> None:
        self.hessians, self.rounding, self.squares, self.sums, self.counts = hessians, rounding, squares, sums, counts
        # the last input, its block and its rounded copy: q/k/v receive the same input in a row, and handing
        # Hessians the same rounded object lets it compute the Gram matrix once
        self._last: tuple[np.ndarray, int, np.ndarray] | None = None

    def __call__(self, name: str, x: np.ndarray) -> None:
        tensor = self.squares.get(name)
        if tensor is not None:
            rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
            self.sums[tensor] = self.sums.get(tensor, 0) + np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
            self.counts[tensor] = self.counts.get(tensor, 0) + rows.shape[0]
        block = self.rounding.get(name)
        if block is not None:
            if self._last is None or self._last[0] is not x or self._last[1] != block:
                self._last = (x, block, runtime_inputs(x, block))
            x = self._last[2]
        self.hessians.capture(name, x)


def gptq_overrides(source: Path, plan: Plan, data: CalibrationText, options: CalibrateOptions, *,
                   method: KGPTQOptions | None = None,
                   progress: Callable[[int, int], None] | None = None) -> GPTQResult:
    """Encode every block matrix of `plan` in a GPTQ type with GPTQ over `data` (`method` None: the defaults);
    see the module docstring."""
    from ..engine import Engine
    from .eval_text import text_tokens

    check_gptq_mix(plan.mix)
    method = method or KGPTQOptions()
    started = time.perf_counter()
    targets = gptq_targets(plan, tuple(t for t in method.types if t in GPTQ_TYPES))
    # every other quantized block matrix gets importance weights from the same walk (first source, as calibrate)
    squares = {t.spec.sources[0]: t.name for t in plan.tensors
               if t.name.startswith(BLOCK_PREFIX) and len(t.spec.shape) == 2 and t.spec.sources
               and t.qtype not in FLOAT_TYPES and t.spec.sources[0] not in targets}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    engine = Engine.from_hf(Path(source), threads=options.threads)
    backend = get_backend()
    encoded: dict[str, np.ndarray] = {}
    per_type: dict[str, int] = {}
    try:
        ctx = resolve_ctx(options.ctx, engine.n_ctx_train)
        special = special_ids(plan.metadata)
        chunks = calibration_chunks(text_tokens(Path(source), data.text, special), ctx, options.chunks, special.bos)
        n_layer = None
        for step in engine.blocks(chunks):
            names = [n for n in step.linears if n in targets]
            if not names and not any(n in squares for n in step.linears):
                continue
            hess = Hessians(names)     # q/k/v (gate/up) share one input: its X^T X is computed once
            rounding = {n: ACTIVATION_BLOCK[targets[n].qtype] for n in names} if method.runtime_inputs else {}
            step.forward(capture=_Capture(hess, rounding, squares, sums, counts))
            for n in names:
                qtype = targets[n].qtype
                rows, deq = gptq_kquant(step.weight(n), hess.gram(n), qtype, count=hess.count(n), options=method,
                                        backend=backend, threads=max(1, options.threads))
                step.set_weight(n, deq)
                encoded[n] = rows
                per_type[qtype.name] = per_type.get(qtype.name, 0) + 1
            if progress is not None:
                n_layer = n_layer or engine.spec.n_layer
                progress(step.index + 1, n_layer)
    finally:
        engine.close()
    overrides = {}
    for t in {id(t): t for t in targets.values()}.values():
        if all(s in encoded for s in t.spec.sources):
            overrides[t.name] = encoded_tensor(t, [encoded[s] for s in t.spec.sources])
    importance = {name: (total / max(counts[name], 1)).astype(np.float32) for name, total in sums.items()}
    return GPTQResult(overrides, importance, ctx, len(chunks), time.perf_counter() - started, per_type)


def encoded_tensor(t: TensorPlan, parts: list[np.ndarray]) -> np.ndarray:
    """The plan's row transform applied to the encoded rows of its sources (rows are encoded independently,
    so permuting or stacking bytes row by row equals encoding the permuted or stacked weights)."""
    out = np.ascontiguousarray(t.spec.transform.apply(parts))
    expected = (t.spec.shape[0], t.nbytes // t.spec.shape[0])
    if out.shape != expected or out.dtype != np.uint8:
        raise RuntimeError(f"{t.name}: GPTQ rows have shape {out.shape}, the plan needs {expected}")
    return out

