"""convert --format compressed-tensors|bnb-nf4|gptq|awq: source -> int plan -> encode + pack (one read) -> check, for a folder output.

The GGUF path (pipeline/convert.py) is untouched; the CLI sends a request here when --format names a safetensors
folder format. Every bad combination is refused while planning, before anything is written.

    result = convert_int(IntConvertRequest(model="./SmolLM2-135M-Instruct", scheme="W4A16", group_size=64))
    result.path        # PosixPath('SmolLM2-135M-Instruct-W4A16')
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..quant.int.scheme import SCHEMES, IntScheme, scheme_named
from ..safetensors_plan import FORMATS, PACKED_FORMATS, IntOptions, IntPlan, ModulePlan, make_int_plan
from ..stages.check_folder import FolderReport, check_folder

# --bits alone picks the weight-only scheme of that width; other widths have no scheme in the formats we write.
BITS_SCHEMES = {4: "W4A16", 8: "W8A16"}
ALL_FORMATS = ("gguf",) + FORMATS


@dataclass(frozen=True)
class IntConvertRequest:
    model: str
    format: str = "compressed-tensors"
    scheme: str | None = None           # W4A16, W4A16_ASYM, W8A16, W8A8 (default: from --bits, else W4A16)
    method: str = "minmax"              # minmax | mse
    bits: int | None = None
    group_size: int = -1                # -1: the scheme's own; 0: per channel
    symmetric: bool | None = None       # None: the scheme's own
    ignore: tuple[str, ...] = ()
    output: Path | None = None
    threads: int = 0
    dry_run: bool = False
    verify: str = "structure"           # none | structure | full (error against the source)
    max_shard_bytes: int | None = 5 * 10**9
    double_quant: bool = True           # bnb-nf4: quantize the block scales too


@dataclass
class IntConvertResult:
    source: Path
    path: Path
    plan: IntPlan
    seconds: float = 0.0
    report: FolderReport | None = None


def resolve_scheme(request: IntConvertRequest) -> IntScheme:
    if request.format not in FORMATS:
        raise InputError(f"--format {request.format!r} is not available.",
                         hint=f"Use one of: {', '.join(ALL_FORMATS)} (gguf is the default, chosen with --type).")
    if request.format == "bnb-nf4":
        given = [flag for flag, v in (("--scheme", request.scheme), ("--group-size", request.group_size != -1 or None),
                                      ("--asym", request.symmetric is False or None)) if v]
        if given or request.bits not in (None, 4):
            raise InputError(f"bnb-nf4 has one encoding (4-bit NF4, blocks of 64, symmetric); "
                             f"{', '.join(given) or f'--bits {request.bits}'} does not apply.",
                             hint="Drop it, or use --format compressed-tensors for integer schemes.")
        return SCHEMES["W4A16"]   # unused by the NF4 writer; the plan records the format
    if request.format in PACKED_FORMATS:
        return packed_scheme(request)
    if request.bits is not None and request.bits not in BITS_SCHEMES:
        raise InputError(f"--bits {request.bits} is not available in {request.format}.",
                         hint=f"Use --bits {' or '.join(map(str, BITS_SCHEMES))}.")
    name = request.scheme or BITS_SCHEMES.get(request.bits or 4, "W4A16")
    scheme = scheme_named(name)
    if request.bits is not None and scheme.bits != request.bits:
        raise InputError(f"--bits {request.bits} contradicts --scheme {scheme.name} ({scheme.bits}-bit weights).",
                         hint=f"Drop --bits, or use a {request.bits}-bit scheme: "
                              + ", ".join(n for n, s in SCHEMES.items() if s.bits == request.bits) + ".")
    return scheme.with_options(group_size=request.group_size, symmetric=request.symmetric)


def packed_scheme(request: IntConvertRequest) -> IntScheme:
    """gptq/awq: --bits (default 4), --group-size (default 128, 0 per channel), --sym/--asym (gptq defaults to
    symmetric, awq is asymmetric only). The format module refuses what it cannot store (make_int_plan)."""
    if request.scheme is not None:
        raise InputError(f"--scheme does not apply to --format {request.format}.",
                         hint="Use --bits, --group-size and --sym/--asym instead.")
    bits = request.bits or 4
    base = IntScheme(f"{request.format.upper()}-W{bits}", bits=bits, group_size=128,
                     symmetric=request.format == "gptq")
    return base.with_options(group_size=request.group_size, symmetric=request.symmetric)


def default_output(source: Path, scheme: IntScheme, method: str, fmt: str) -> Path:
    suffix = "NF4" if fmt == "bnb-nf4" else scheme.name + ("" if method == "minmax" else f"-{method}")
    return Path(".") / f"{source.resolve().name}-{suffix}"


def convert_int(request: IntConvertRequest, progress: Callable[[ModulePlan], None] | None = None) -> IntConvertResult:
    from ..stages.pack_safetensors import write_int_folder
    from .convert import VERIFY_LEVELS, resolve_snapshot

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    scheme = resolve_scheme(request)
    started = time.perf_counter()
    source = resolve_snapshot(request.model).path
    ckpt = Checkpoint.open(source)
    plan = make_int_plan(ckpt, IntOptions(scheme=scheme, method=request.method, ignore=request.ignore,
                                          format=request.format, max_shard_bytes=request.max_shard_bytes,
                                          double_quant=request.double_quant))
    out = request.output if request.output is not None else default_output(source, scheme, request.method, request.format)
    if out.suffix in (".gguf", ".safetensors"):
        raise InputError(f"-o {out} names a file, but {request.format} writes a folder.",
                         hint="Give a folder name with -o, e.g. -o model-W4A16/.")
    if out.resolve() == source.resolve():
        raise InputError(f"-o {out} is the source folder.", hint="Write the quantized model to another folder.")
    result = IntConvertResult(source, out, plan)
    if request.dry_run:
        return result
    write_int_folder(plan, ckpt, out, threads=request.threads or os.cpu_count() or 1, progress=progress)
    if request.verify != "none":
        result.report = check_folder(out, source if request.verify == "full" else None)
        if not result.report.ok:
            raise VerifyError(f"{out} failed verification: " + "; ".join(result.report.problems[:3]),
                              hint="Run the conversion again; if it fails again, report it with QUANTCLI_DEBUG=1.")
    result.seconds = time.perf_counter() - started
    return result
