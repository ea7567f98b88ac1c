"""convert --format compressed-tensors|bnb-nf4|gptq|awq: source -> int plan -> encode + pack (one read) -> check, for a folder output.

The GGUF path (pipeline/convert.py) is untouched; the CLI sends a request here when --format names a safetensors
folder format. Every bad combination is refused while planning, before anything is written.

With a calibrated method (--method gptq|awq, quant/algorithms/registry.py) the calibration text is loaded and
tokenized first, then, inside the output's partial folder, the engine walks the blocks with the method
(stages/calibrated.py), its choices are spooled to disk and the pack stage writes them; the spool is deleted
before the folder is renamed into place, and an error or Ctrl-C removes everything. Without --calibrate a
calibrated method uses the built-in calibration text (`builtin:calibration`), as a recipe's calibrate section does.

    result = convert_int(IntConvertRequest(model="./SmolLM2-135M-Instruct", scheme="W4A16", group_size=64))
    result.path        # PosixPath('SmolLM2-135M-Instruct-W4A16')
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..quant.algorithms.registry import CALIBRATED, is_calibrated, method_options
from ..quant.int.scheme import SCHEMES, IntScheme, scheme_named
from ..recipe.schema import Recipe
from ..safetensors_plan import (
    FORMATS,
    PACKED_FORMATS,
    IntOptions,
    IntPlan,
    ModulePlan,
    make_int_plan,
)
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
    # calibrated methods (gptq, awq): the data, its chunking and the method's options (name, value) as given
    calibrate: str | None = None        # stages.calibration_data spec; None: builtin:calibration
    calibrate_field: str = "text"
    ctx: int | None = None
    chunks: int | None = None
    method_options: tuple[tuple[str, Any], ...] = ()
    # recipes: the folder goes inside `parent` under the `dir` template (when `output` is not given)
    parent: Path | None = None
    dir_template: str | None = None
    recipe_name: str = ""


@dataclass
class IntConvertResult:
    source: Path
    path: Path
    plan: IntPlan
    seconds: float = 0.0
    report: FolderReport | None = None
    method_options: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None     # CalibratedSummary.record(), or data name/sha on a dry run

    def method_record(self) -> dict[str, Any]:
        """What the JSON output says about how the values were chosen."""
        return {"method": self.plan.options.method, "options": dict(self.method_options or {}),
                "calibration": self.calibration}


DEFAULT_CALIBRATION = "builtin:calibration"


def gathered_method_options(pairs: tuple[str, ...] | list[str], **flags: Any) -> tuple[tuple[str, Any], ...]:
    """--method-option KEY=VALUE strings plus the dedicated flags (--damp, --act-order) that were set (None: not
    set), as (name, value) pairs; the registry checks names and types against the chosen method."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--method-option {pair!r} is not KEY=VALUE.", hint="e.g. --method-option block_size=64")
        out[key.strip().replace("-", "_")] = value.strip()
    for key, value in flags.items():
        if value is None:
            continue
        if key in out:
            raise InputError(f"{key} is given twice (--{key.replace('_', '-')} and --method-option {key}=...).",
                             hint="Give it once.")
        out[key] = value
    return tuple(out.items())


def resolve_method(request: IntConvertRequest) -> tuple[dict[str, Any], str | None]:
    """The method's checked options and the compressed-tensors actorder to record; refuses every combination of
    method, data and options that cannot work, before anything is read or written."""
    method = request.method
    if not is_calibrated(method):
        given = [flag for flag, v in (("--calibrate", request.calibrate), ("--ctx", request.ctx),
                                      ("--chunks", request.chunks)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} applies to calibrated methods; --method {method} uses no data.",
                             hint=f"Add --method {' or --method '.join(CALIBRATED)}, or drop {given[0]}.")
        return method_options(method, dict(request.method_options)), None
    if request.format == "bnb-nf4":
        raise InputError(f"--method {method} does not apply to bnb-nf4 (its codes are fixed by absmax).",
                         hint="Use --format compressed-tensors for a calibrated method, or drop --method.")
    options = method_options(method, dict(request.method_options))
    actorder = None
    if options.get("act_order") and request.format == "gptq":
        # GPTQ folders store g_idx: the columns' groups may follow the act-order permutation (desc_act)
        actorder = "desc_act"
    elif options.get("act_order"):
        if options.get("static_groups") is False:
            raise InputError(f"{request.format} cannot store act-order with reordered groups (static_groups off).",
                             hint="Drop static_groups=false: act-order then keeps each group's columns together.")
        # compressed-tensors 0.20 has no g_idx: act-order must keep groups contiguous, which static groups do
        options["static_groups"] = True
        actorder = "weight"
    return options, actorder


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


def default_output(source: Path, scheme: IntScheme, method: str, fmt: str, parent: Path | None = None,
                   template: str | None = None, recipe: str = "") -> Path:
    """`{model}-{scheme}[-{method}]` (NF4 for bnb-nf4) in the current folder, or `template` in `parent`."""
    name = "NF4" if fmt == "bnb-nf4" else scheme.name
    model = source.resolve().name
    if template is not None:
        folder = template.format(model=model, scheme=name, method=method, recipe=recipe)
    else:
        folder = f"{model}-{name}" + ("" if method == "minmax" or fmt == "bnb-nf4" else f"-{method}")
    return (Path(".") if parent is None else Path(parent)) / folder


def folder_requests(recipe: Recipe, model: str, output: Path | None, *, threads: int = 0, verify: str = "structure",
                    dry_run: bool = False, calibrate: str | None = None) -> list[IntConvertRequest]:
    """The folder outputs of a recipe as requests: each inside the -o folder (default: the current one); the
    recipe's calibrate section (or --calibrate) feeds the outputs whose method is calibrated."""
    if output is not None and Path(output).suffix.lower() in (".gguf", ".safetensors"):
        raise InputError(f"-o {output} names a file, but recipe {recipe.name!r} writes folder outputs.",
                         hint="Give a folder with -o; every output of the recipe is written inside it.")
    cal = recipe.calibrate
    out = []
    for f in recipe.folders:
        calibrated = is_calibrated(f.method)
        out.append(IntConvertRequest(
            model=model, format=f.format, scheme=f.scheme, method=f.method, bits=f.bits,
            group_size=-1 if f.group_size is None else f.group_size, symmetric=f.symmetric, ignore=f.ignore,
            threads=threads, dry_run=dry_run, verify=verify, double_quant=f.double_quant,
            calibrate=(calibrate or (cal.data if cal else None)) if calibrated else None,
            calibrate_field=cal.field if cal and calibrated else "text",
            ctx=cal.ctx if cal and calibrated else None, chunks=cal.chunks if cal and calibrated else None,
            method_options=f.options, parent=output, dir_template=f.dir, recipe_name=recipe.name))
    return out


def convert_int(request: IntConvertRequest, progress: Callable[[ModulePlan], None] | None = None,
                on_block: Callable[[int, int], None] | None = None) -> IntConvertResult:
    from ..stages.pack_safetensors import write_int_folder
    from .convert import VERIFY_LEVELS, resolve_snapshot

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    scheme = resolve_scheme(request)
    options, actorder = resolve_method(request)
    started = time.perf_counter()
    source = resolve_snapshot(request.model).path
    ckpt = Checkpoint.open(source)
    plan = make_int_plan(ckpt, IntOptions(scheme=scheme, method=request.method, ignore=request.ignore,
                                          format=request.format, max_shard_bytes=request.max_shard_bytes,
                                          double_quant=request.double_quant))
    out = request.output if request.output is not None else default_output(
        source, scheme, request.method, request.format, request.parent, request.dir_template, request.recipe_name)
    if out.suffix in (".gguf", ".safetensors"):
        raise InputError(f"-o {out} names a file, but {request.format} writes a folder.",
                         hint="Give a folder name with -o, e.g. -o model-W4A16/.")
    if out.resolve() == source.resolve():
        raise InputError(f"-o {out} is the source folder.", hint="Write the quantized model to another folder.")
    result = IntConvertResult(source, out, plan, method_options=options)
    threads = request.threads or os.cpu_count() or 1
    if is_calibrated(request.method):
        _calibrated(request, plan, ckpt, out, result, options, actorder, threads, progress, on_block)
    elif not request.dry_run:
        write_int_folder(plan, ckpt, out, threads=threads, progress=progress)
    if request.dry_run:
        return result
    if request.verify != "none":
        result.report = check_folder(out, source if request.verify == "full" else None)
        if not result.report.ok:
            raise VerifyError(f"{out} failed verification: " + "; ".join(result.report.problems[:3]),
                              hint="Run the conversion again; if it fails again, report it with QUANTCLI_DEBUG=1.")
    result.seconds = time.perf_counter() - started
    return result


def _calibrated(request: IntConvertRequest, plan: IntPlan, ckpt: Checkpoint, out: Path, result: IntConvertResult,
                options: dict[str, Any], actorder: str | None, threads: int,
                progress: Callable[[ModulePlan], None] | None, on_block: Callable[[int, int], None] | None) -> None:
    """Load and tokenize the data and build the method (every refusal happens here, before writing), then walk
    the blocks and pack, all inside the output's partial folder."""
    from ..engine import Engine
    from ..io.safetensors_writer import atomic_folder
    from ..quant.algorithms.registry import make_method
    from ..stages.calibrated import (
        CalibratedOptions,
        calibration_tokens,
        run_calibrated,
    )
    from ..stages.calibration_data import load_calibration_text
    from ..stages.pack_safetensors import fill_int_folder
    from ..stages.spool import SPOOL_DIR, ChoiceSpool

    data = load_calibration_text(request.calibrate or DEFAULT_CALIBRATION, field=request.calibrate_field)
    from ..stages.pack_safetensors import scale_dtype

    method = make_method(request.method, options, context={
        "scale_dtype": {m.source: scale_dtype(m, plan.options.format) for m in plan.modules if m.quantized}, "threads": threads})
    engine = Engine.from_hf(plan.source)       # refuses an architecture the engine cannot run, before writing
    n_ctx_train = engine.n_ctx_train
    engine.close()
    tokens = calibration_tokens(plan.source, data, CalibratedOptions(request.ctx, request.chunks), n_ctx_train)
    result.calibration = {"data": data.name, "data_sha256": data.sha256, "ctx": int(tokens.shape[1]),
                          "chunks": int(tokens.shape[0]), "tokens": int(tokens.size)}
    if request.dry_run:
        return
    with atomic_folder(out) as tmp:
        spool = ChoiceSpool(tmp / SPOOL_DIR)
        try:
            summary = run_calibrated(plan, method, tokens, spool, data, threads=request.threads, progress=on_block)
            fill_int_folder(plan, ckpt, tmp, threads=threads, progress=progress, choices=spool, actorder=actorder)
        finally:
            spool.remove()
    result.calibration = summary.record()
