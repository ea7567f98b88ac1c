"""The driver of a calibrated method (GPTQ, AWQ): calibration text -> token chunks -> the engine's block walk ->
the method's choices, spooled for the pack stage.

Per block (Engine.blocks), the method gets the block's Linear weights that the IntPlan quantizes, with their
scheme, and returns a Chosen per tensor it decided (quant/algorithms/base.py). For each the driver
- checks it (a tensor of this block, codes of the planned shape, a g_idx the folder format can store),
- makes it final: codes are kept (their scales rounded to the stored scale dtype if the method gave another);
  dense values of a quantized Linear are RTN-encoded with the plan's scheme; dense values of any other tensor
  are rounded to its stored dtype,
- puts the value a loader will see back on the step (dequantized codes; a norm as the factor the engine
  multiplies by, spec.numerics.norm_weight_offset added), so the next block is calibrated on the outputs of the
  quantized ones,
- and writes it to the spool (stages/spool.py), so memory holds one block's choices, not the model's.
A quantized Linear of the block the method returns nothing for is RTN-encoded (min-max) from its current value,
so what is written is always what the later blocks saw. Tensors outside the blocks (embeddings, final norm,
lm_head) are not touched; the pack stage writes them as planned.

The text is tokenized and chunked as the calibrate stage does it (stages/calibrate.py: one tokenization, chunks
of `ctx` tokens, BOS first when the vocabulary adds one, at least two chunks).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..quant.algorithms.base import BlockMethod, Chosen
from ..quant.backend import Backend, get_backend
from ..quant.int.encode import encode_weight
from ..io.int_codes import IntCodes, round_to, scale_to_f32
from ..io.int_scheme import IntScheme
from ..plan.safetensors import IntPlan, ModulePlan
from .chunks import calibration_chunks, resolve_ctx
from .calibration_data import CalibrationText
from .pack_safetensors import scale_dtype
from .spool import ChoiceSpool

# Sequences a calibrated method sees by default: GPTQ papers and llm-compressor use 128 to 512 samples; 128 of
# 512 tokens keep the walk's hidden states (2 x n_seq x ctx x hidden float32) near 300 MB for a 576-wide model.
DEFAULT_CHUNKS = 128
FLOAT_DTYPES = ("F32", "F16", "BF16")
NP_SCALE = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16"}
# Folder formats that store a column -> group map (g_idx). compressed-tensors 0.20 dropped its "group" act-order
# (weight_g_idx); a GPTQ run with act-order must keep groups contiguous there (static groups, actorder "weight").
STORES_G_IDX: dict[str, bool] = {"compressed-tensors": False, "bnb-nf4": False, "gptq": True, "awq": False}


@dataclass(frozen=True)
class CalibratedOptions:
    ctx: int | None = None             # None: 512, or the model's context when that is shorter
    chunks: int | None = None          # None: DEFAULT_CHUNKS (or every chunk of a shorter text)
    threads: int = 0


@dataclass(frozen=True)
class CalibratedSummary:
    """What the walk did, for the CLI and the manifest."""

    data_name: str
    data_sha256: str
    ctx: int
    chunks: int
    tokens: int
    blocks: int
    chosen: int          # tensors the method decided
    filled: int          # quantized Linears it left alone (RTN-encoded by the driver)
    seconds: float

    def record(self) -> dict[str, Any]:
        return {"data": self.data_name, "data_sha256": self.data_sha256, "ctx": self.ctx, "chunks": self.chunks,
                "tokens": self.tokens, "blocks": self.blocks, "chosen": self.chosen, "filled": self.filled,
                "seconds": round(self.seconds, 3)}


def calibration_tokens(source: Path, data: CalibrationText, options: CalibratedOptions,
                       n_ctx_train: int) -> np.ndarray:
    """The calibration text as [n_chunks, ctx] token ids, the calibrate stage's way. Bad sizes are InputErrors."""
    from ..io.checkpoint import Checkpoint
    from ..plan.gguf import SourceModel
    from .calibrate import special_ids
    from .eval_text import text_tokens

    ctx = resolve_ctx(options.ctx, n_ctx_train)
    special = special_ids(SourceModel.open(Checkpoint.open(Path(source))).tokenizer(None))
    tokens = text_tokens(Path(source), data.text, special)
    return calibration_chunks(tokens, ctx, DEFAULT_CHUNKS if options.chunks is None else options.chunks, special.bos)


def dequantize(codes: IntCodes, scheme: IntScheme, dtype: str, g_idx: np.ndarray | None) -> np.ndarray:
    """What a loader computes from codes, float32; with g_idx, column j uses scale group g_idx[j]."""
    if g_idx is None:
        return codes.dequantize(dtype, scheme.group_size)
    q = codes.codes.astype(np.float32)
    if codes.zero_point is not None:
        q = q - codes.zero_point.astype(np.float32)[:, g_idx]
    return round_to(q * codes.scale_f32()[:, g_idx], dtype)[1]


def _trivial_g_idx(g_idx: np.ndarray, n: int, scheme: IntScheme) -> bool:
    g = n if scheme.group_size is None else scheme.group_size
    return bool(np.array_equal(g_idx, np.arange(n) // g))


class _Finisher:
    """Turns one Chosen into (value for the step, what the spool stores), with every check."""

    def __init__(self, plan: IntPlan, spool: ChoiceSpool, backend: Backend, threads: int, norm_offset: float) -> None:
        self.plan, self.spool, self.backend, self.threads = plan, spool, backend, threads
        self.norm_offset = norm_offset
        self.scheme = plan.options.scheme
        self.stores_g_idx = STORES_G_IDX.get(plan.options.format, False)

    def codes(self, m: ModulePlan, codes: IntCodes, g_idx: np.ndarray | None, who: str) -> tuple[IntCodes, np.ndarray | None]:
        rows, n = m.shape
        groups = self.scheme.groups_per_row(n)
        if codes.codes.shape != (rows, n) or codes.scale.shape != (rows, groups):
            raise RuntimeError(f"{who} gave {m.source} codes {codes.codes.shape} and scales {codes.scale.shape}; "
                               f"the plan needs {(rows, n)} and {(rows, groups)}")
        if (codes.zero_point is None) != self.scheme.symmetric:
            raise RuntimeError(f"{who} gave {m.source} {'no ' if codes.zero_point is None else ''}zero points "
                               f"for a {'symmetric' if self.scheme.symmetric else 'asymmetric'} scheme")
        if codes.codes.min(initial=0) < self.scheme.qmin or codes.codes.max(initial=0) > self.scheme.qmax:
            raise RuntimeError(f"{who} gave {m.source} codes outside [{self.scheme.qmin}, {self.scheme.qmax}]")
        q = codes.codes.astype(np.int8, copy=False)     # checked first: a wider integer type must not wrap
        want = scale_dtype(m, self.plan.options.format)
        scale = codes.scale
        if NP_SCALE.get(scale.dtype) != want:
            # The method kept its scales in another dtype: store them as the loader will read them; the codes
            # stay, and the step gets the values of the rounded scales, so later blocks see what is written.
            scale = round_to(scale_to_f32(scale), want)[0]
        if g_idx is not None:
            g_idx = np.asarray(g_idx, dtype=np.int32)
            if g_idx.shape != (n,) or g_idx.min() < 0 or g_idx.max() >= groups:
                raise RuntimeError(f"{who} gave {m.source} a g_idx of shape {g_idx.shape} outside its {groups} groups")
            if _trivial_g_idx(g_idx, n, self.scheme):
                g_idx = None
            elif not self.stores_g_idx:
                raise InputError(f"{self.plan.options.format} cannot store the column order {who} chose for "
                                 f"{m.source} (act-order with reordered groups).",
                                 hint="Use act-order with static groups (the default for this format), or drop --act-order.")
        zp = None if codes.zero_point is None else codes.zero_point.astype(np.int8, copy=False)
        return IntCodes(q, scale, zp), g_idx

    def finish(self, c: Chosen, m: ModulePlan, role: str, who: str) -> np.ndarray:
        """The float32 value the step gets for this choice, after spooling what the pack stage writes."""
        if m.quantized:
            if c.codes is not None:
                codes, g_idx = self.codes(m, c.codes, c.g_idx, who)
            else:
                codes, g_idx = self.rtn(m, np.asarray(c.dense, dtype=np.float32), who), None
            self.spool.put_codes(m.source, codes, g_idx)
            return dequantize(codes, self.scheme, scale_dtype(m, self.plan.options.format), g_idx)
        if c.codes is not None:
            raise RuntimeError(f"{who} gave codes for {m.source}, which the plan keeps unquantized")
        if m.dtype not in FLOAT_DTYPES:
            raise RuntimeError(f"{who} gave values for {m.source}, stored as {m.dtype}")
        dense = np.asarray(c.dense, dtype=np.float32)
        if dense.shape != m.shape:
            raise RuntimeError(f"{who} gave {m.source} values of shape {dense.shape}, the tensor is {m.shape}")
        stored, value = round_to(dense, m.dtype)
        self.spool.put_dense(m.source, stored)
        if role.endswith("_norm") and self.norm_offset:
            value = value + np.float32(self.norm_offset)   # the engine's factor, as HFWeights computes it
        return value

    def rtn(self, m: ModulePlan, dense: np.ndarray, who: str) -> IntCodes:
        if dense.shape != m.shape:
            raise RuntimeError(f"{who} gave {m.source} values of shape {dense.shape}, the weight is {m.shape}")
        if not np.isfinite(dense).all():
            raise RuntimeError(f"{who} gave {m.source} non-finite values")
        return encode_weight(dense, self.scheme, scale_dtype(m, self.plan.options.format), "minmax", self.backend, self.threads)[0]


def run_calibrated(plan: IntPlan, method: BlockMethod, tokens: np.ndarray, spool: ChoiceSpool, data: CalibrationText,
                   *, threads: int = 0, progress: Callable[[int, int], None] | None = None) -> CalibratedSummary:
    """Walk the blocks of plan.source over `tokens` with `method`, spooling every choice (module docstring)."""
    from ..engine import Engine

    started = time.perf_counter()
    modules = {m.source: m for m in plan.modules}
    engine = Engine.from_hf(plan.source, threads=threads)
    finisher = _Finisher(plan, spool, get_backend(), max(1, threads), engine.spec.numerics.norm_weight_offset)
    who = f"--method {getattr(method, 'name', type(method).__name__)}"
    chosen = filled = blocks = 0
    try:
        n_blocks = engine.spec.n_layer
        for step in engine.blocks(tokens):
            names = set(step.names.values())
            targets: Mapping[str, IntScheme] = {n: plan.options.scheme for n in step.linears
                                                if n in modules and modules[n].quantized}
            decided: set[str] = set()
            for c in method.process(step, dict(targets)):
                if c.name not in names or c.name not in modules:
                    raise RuntimeError(f"{who} chose {c.name!r}, which is no tensor of block {step.index}")
                if c.name in decided:
                    raise RuntimeError(f"{who} chose {c.name!r} twice in block {step.index}")
                decided.add(c.name)
                step.set_weight(c.name, finisher.finish(c, modules[c.name], step.role(c.name), who))
            for name in targets:
                if name not in decided:
                    codes = finisher.rtn(modules[name], step.weight(name), who)
                    spool.put_codes(name, codes)
                    step.set_weight(name, dequantize(codes, plan.options.scheme, scale_dtype(modules[name], plan.options.format), None))
                    filled += 1
            chosen += len(decided)
            blocks += 1
            if progress is not None:
                progress(blocks, n_blocks)
            if blocks == n_blocks:
                break   # the walk would run the last block once more to feed a next one; nothing needs it
    finally:
        engine.close()
    return CalibratedSummary(data.name, data.sha256, int(tokens.shape[1]), int(tokens.shape[0]), int(tokens.size),
                             blocks, chosen, filled, time.perf_counter() - started)
