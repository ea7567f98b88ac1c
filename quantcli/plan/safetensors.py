"""The plan of a quantized safetensors folder: which weights get an integer scheme, under which HF names, and the
tensors each one becomes; everything else is carried over as stored. Computed from the checkpoint's header alone.

A weight is quantized when it is the 2-D `.weight` of a Linear layer (not an embedding, not lm_head) and no
--ignore pattern names its module. Patterns follow compressed-tensors: a module name, or `re:` and a regex matched
against the whole module name. The tensors a quantized module becomes are named by the folder format's writer
(io/compressed_tensors.py), so this module knows schemes and names, not byte layouts.

    plan = make_int_plan(Checkpoint.open(path), IntOptions(scheme=scheme_named("W4A16")))
    plan.modules[0].name, plan.modules[0].quantized      # ('model.layers.0.mlp.down_proj', True)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io import awq, gptq
from ..io.checkpoint import Checkpoint
from ..io.int_scheme import IntScheme
from ..io.nf4_codes import NF4_BLOCK
from ..quant.algorithms.registry import CALIBRATED, is_calibrated
from ..quant.int.encode import METHODS

# Substrings that mark a 2-D weight as an embedding table (never a Linear): llama/mistral/qwen/gemma/phi use
# embed_tokens, GPT-2 wte/wpe, BERT word/position/token_type_embeddings.
EMBEDDING_MARKERS = ("embed_tokens", "embeddings", ".wte.", ".wpe.", "embed_positions")
ALWAYS_IGNORED = ("lm_head",)        # the output projection stays in 16 bits, as llm-compressor's recipes do
FORMATS = ("compressed-tensors", "bnb-nf4", "gptq", "awq")
# The folder formats that store GPTQ-style packed integers (one module each under io/), and what they accept.
PACKED_FORMATS = {"gptq": gptq, "awq": awq}


@dataclass(frozen=True)
class IntOptions:
    scheme: IntScheme
    method: str = "minmax"
    ignore: tuple[str, ...] = ()
    format: str = "compressed-tensors"
    double_quant: bool = True                     # bnb-nf4 only: 8-bit codes for the block absmax values
    max_shard_bytes: int | None = 5 * 10**9       # transformers' default shard size


@dataclass(frozen=True)
class ModulePlan:
    """One source tensor: quantized (a Linear's weight) or carried over unchanged."""

    source: str                  # HF tensor name in the source checkpoint
    shape: tuple[int, ...]
    dtype: str                   # stored dtype in the source
    quantized: bool

    @property
    def module(self) -> str:
        return self.source.rsplit(".", 1)[0]


@dataclass(frozen=True)
class IntPlan:
    source: Path
    options: IntOptions
    modules: tuple[ModulePlan, ...]
    ignore: tuple[str, ...] = field(default=())     # what the config's ignore list must hold

    @property
    def n_params(self) -> int:
        total = 0
        for m in self.modules:
            n = 1
            for d in m.shape:
                n *= d
            total += n
        return total


def _is_linear_weight(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and name.endswith(".weight") and not any(m in f".{name}." for m in EMBEDDING_MARKERS)


def matches(module: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], module) is not None
    return module == pattern


def make_int_plan(ckpt: Checkpoint, options: IntOptions) -> IntPlan:
    """Plan a folder; refuses (before any writing) a method, format or group size the tensors cannot take."""
    if options.method not in METHODS and not is_calibrated(options.method):
        raise InputError(f"--method {options.method} is not available.",
                         hint=f"Use one of: {', '.join(METHODS + tuple(CALIBRATED))}.")
    if options.format == "bnb-nf4" and options.method != "minmax":
        raise InputError(f"--method {options.method} does not apply to bnb-nf4 (its codes are fixed by absmax).",
                         hint="Drop --method, or use --format compressed-tensors.")
    if options.method == "hqq" and options.format == "compressed-tensors" and options.scheme.symmetric:
        raise InputError(f"--method hqq solves zero points, and {options.scheme.name} (symmetric) has none.",
                         hint="Use --scheme W4A16_ASYM (or --asym), or --method mse for a symmetric scheme.")
    if options.format not in FORMATS:
        raise InputError(f"--format {options.format} is not available yet.", hint=f"Use one of: {', '.join(FORMATS)}.")
    if options.format in PACKED_FORMATS:
        PACKED_FORMATS[options.format].check_scheme(options.scheme)
    for p in options.ignore:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as exc:
                raise InputError(f"--ignore {p!r} is not a valid regex ({exc}).", hint="Fix the pattern after 're:'.") from None
    patterns = ALWAYS_IGNORED + tuple(options.ignore)
    skipped: list[str] = []
    modules = []
    for name, info in ckpt.tensors.items():
        quantized = (_is_linear_weight(name, info.shape) and info.dtype in ("F32", "F16", "BF16")
                     and not any(matches(name.rsplit(".", 1)[0], p) for p in patterns))
        if _is_linear_weight(name, info.shape) and not quantized and not name.startswith(ALWAYS_IGNORED):
            skipped.append(name.rsplit(".", 1)[0])
        if quantized and options.format == "compressed-tensors":
            options.scheme.check_row(name, info.shape[1])
        if quantized and options.format in PACKED_FORMATS:
            PACKED_FORMATS[options.format].check_module(name, info.shape, options.scheme)
        if quantized and options.format == "bnb-nf4" and info.shape[1] % NF4_BLOCK:
            # The format itself allows it, but bitsandbytes 0.50's CPU kernel indexes block scales per row and
            # decodes such rows wrongly (its own quantize_4bit round trip fails there), so the folder would not
            # load correctly on the CPU.
            raise InputError(f"bnb-nf4: the rows of {name!r} have {info.shape[1]} values, not a multiple of {NF4_BLOCK}; "
                             "bitsandbytes' CPU kernel decodes such rows wrongly.",
                             hint=f"Add --ignore {name.rsplit('.', 1)[0]} (or a re: pattern), or use --format compressed-tensors.")
        modules.append(ModulePlan(name, info.shape, info.dtype, quantized))
    if not any(m.quantized for m in modules):
        raise InputError(f"{ckpt.path} has no Linear weight left to quantize.",
                         hint="Check --ignore: it excludes every layer.")
    # compressed-tensors matches its ignore list itself (names and re: patterns); bitsandbytes' and AWQ's skip
    # lists are matched by name, so they get the module names the patterns excluded (GPTQ instead lists the
    # modules it keeps, io/gptq.quantization_config).
    ignore = patterns if options.format == "compressed-tensors" else ALWAYS_IGNORED + tuple(skipped)
    return IntPlan(ckpt.path, options, tuple(modules), ignore)
