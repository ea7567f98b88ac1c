"""Folder outputs (--format compressed-tensors|bnb-nf4|gptq|awq, or a recipe's folder outputs): the stages the
runner (pipeline/runner.py) calls for each: check the options, plan, calibrate, pack, check the folder.

Every bad combination is refused while planning, before anything is written.

With a calibrated method (--method gptq|awq, quant/algorithms/registry.py) the calibration text is loaded and
tokenized first, then, inside the output's partial folder, the engine walks the blocks with the method
(stages/calibrated.py), its choices are spooled to disk and the pack stage writes them; the spool is deleted
before the folder is renamed into place, and an error or Ctrl-C removes everything. Without --calibrate a
calibrated method uses the built-in calibration text (`builtin:calibration`), as a recipe's calibrate section does.

    result = convert_int(IntConvertRequest(model="./SmolLM2-135M-Instruct", scheme="W4A16", group_size=64))
    result.path        # PosixPath('SmolLM2-135M-Instruct-W4A16')
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..quant.algorithms.registry import CALIBRATED, is_calibrated, method_options
from ..io.int_scheme import SCHEMES, IntScheme, scheme_named
from ..recipe.schema import Recipe
from ..plan.safetensors import (
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
    # what the stage runner adds: the folder's files and their sha256s, one sha256 over them, the cache
    files: dict[str, str] = field(default_factory=dict)
    sha256: str | None = None
    cached: bool = False
    model_verify: dict[str, Any] | None = None     # model-level figures (recipe verify.max_kld / max_ppl_ratio)

    @property
    def kind(self) -> str:
        """The output's type as convert prints it: NF4 for bnb-nf4, else the scheme's name."""
        return "NF4" if self.plan.options.format == "bnb-nf4" else self.plan.options.scheme.name

    @property
    def format(self) -> str:
        return self.plan.options.format

    @property
    def method(self) -> str:
        return self.plan.options.method

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


def check_folder_request(request: IntConvertRequest) -> tuple[IntScheme, dict[str, Any], str | None]:
    """Every refusal a folder output can get without reading a file: the verify level, the scheme and the
    method's options. Returns (scheme, checked method options, the act-order to record)."""
    from .convert import VERIFY_LEVELS

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    scheme = resolve_scheme(request)
    options, actorder = resolve_method(request)
    return scheme, options, actorder


@dataclass
class FolderJob:
    """One folder output as the stage runner carries it: planned, then calibrated (a calibrated method gets the
    run's shared token chunks), then packed and checked."""

    request: IntConvertRequest
    result: IntConvertResult
    scheme: IntScheme
    options: dict[str, Any]
    actorder: str | None
    method: Any = None                  # the calibrated method (quant/algorithms/base.BlockMethod), built once
    tokens: Any = None                  # np.ndarray [chunks, ctx] of calibration tokens, shared across outputs
    data: Any = None                    # stages.calibration_data.CalibrationText

    @property
    def calibrated(self) -> bool:
        return is_calibrated(self.request.method)

    def write(self, ckpt: Checkpoint, threads: int, progress: Callable[[ModulePlan], None] | None = None,
              on_block: Callable[[int, int], None] | None = None) -> None:
        write_folder(self, ckpt, threads, progress, on_block)

    def check(self) -> FolderReport | None:
        return check_written(self)

    def calibration_setting(self) -> tuple[str, str, int | None, int | None]:
        """What the token chunks depend on: outputs with the same setting share one tokenization."""
        r = self.request
        return (r.calibrate or DEFAULT_CALIBRATION, r.calibrate_field, r.ctx, r.chunks)


def plan_folder(request: IntConvertRequest, source: Path, ckpt: Checkpoint) -> FolderJob:
    """Plan one folder output from the opened checkpoint (metadata only) and place it; refuses a file name and
    the source folder itself as the output."""
    scheme, options, actorder = check_folder_request(request)
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
    return FolderJob(request, IntConvertResult(source, out, plan, method_options=options), scheme, options, actorder)


def prepare_calibration(job: FolderJob, texts: dict[Any, Any], threads: int) -> None:
    """The calibrate stage of a calibrated folder output: load the text and cut it into token chunks (once per
    setting for the whole run: `texts` is the run's store), and build the method. Every refusal of the data or
    the method happens here, before anything is written."""
    from ..engine import Engine
    from ..quant.algorithms.registry import make_method
    from ..stages.calibrated import CalibratedOptions, calibration_tokens
    from ..stages.calibration_data import load_calibration_text
    from ..stages.pack_safetensors import scale_dtype

    request, plan = job.request, job.result.plan
    name, field_name, ctx, chunks = job.calibration_setting()
    if ("text", name, field_name) not in texts:
        texts[("text", name, field_name)] = load_calibration_text(name, field=field_name)
    data = texts[("text", name, field_name)]
    job.method = make_method(request.method, job.options, context={
        "scale_dtype": {m.source: scale_dtype(m, plan.options.format) for m in plan.modules if m.quantized},
        "threads": threads})
    setting = job.calibration_setting()
    if setting not in texts:
        engine = Engine.from_hf(plan.source)       # refuses an architecture the engine cannot run, before writing
        n_ctx_train = engine.n_ctx_train
        engine.close()
        texts[setting] = calibration_tokens(plan.source, data, CalibratedOptions(ctx, chunks), n_ctx_train)
    job.tokens, job.data = texts[setting], data
    job.result.calibration = {"data": data.name, "data_sha256": data.sha256, "ctx": int(job.tokens.shape[1]),
                              "chunks": int(job.tokens.shape[0]), "tokens": int(job.tokens.size)}


def write_folder(job: FolderJob, ckpt: Checkpoint, threads: int, progress: Callable[[ModulePlan], None] | None = None,
                 on_block: Callable[[int, int], None] | None = None) -> None:
    """The pack stage of one folder output. A calibrated method walks the blocks inside the output's partial
    folder first, its choices spooled to disk and packed from there; the spool is deleted before the folder is
    renamed into place, and an error or Ctrl-C removes everything."""
    from ..io.safetensors_writer import atomic_folder
    from ..stages.calibrated import run_calibrated
    from ..stages.pack_safetensors import fill_int_folder, write_int_folder
    from ..stages.spool import SPOOL_DIR, ChoiceSpool

    plan, out = job.result.plan, job.result.path
    if not job.calibrated:
        write_int_folder(plan, ckpt, out, threads=threads, progress=progress)
        return
    with atomic_folder(out) as tmp:
        spool = ChoiceSpool(tmp / SPOOL_DIR)
        try:
            summary = run_calibrated(plan, job.method, job.tokens, spool, job.data, threads=job.request.threads,
                                     progress=on_block)
            fill_int_folder(plan, ckpt, tmp, threads=threads, progress=progress, choices=spool,
                            actorder=job.actorder)
        finally:
            spool.remove()
    job.result.calibration = summary.record()


def check_written(job: FolderJob) -> FolderReport | None:
    """The verify stage of one folder output (structure, or with --verify full the error of every weight)."""
    request, result = job.request, job.result
    if request.verify == "none":
        return None
    report = check_folder(result.path, result.source if request.verify == "full" else None)
    result.report = report
    return report


def folder_failure(job: FolderJob) -> VerifyError:
    out, report = job.result.path, job.result.report
    problems = report.problems if report is not None else []
    return VerifyError(f"{out} failed verification: " + "; ".join(problems[:3]),
                       hint="Run the conversion again; if it fails again, report it with QUANTCLI_DEBUG=1.")


def convert_int(request: IntConvertRequest, progress: Callable[[ModulePlan], None] | None = None,
                on_block: Callable[[int, int], None] | None = None) -> IntConvertResult:
    """One folder output through the stage runner (pipeline/runner.py), without the cache or a manifest."""
    from .runner import RunHooks, folder_recipe, run_convert
    from .convert import ConvertRequest

    check_folder_request(request)
    converted = run_convert(ConvertRequest(model=request.model, recipe=folder_recipe(request), threads=request.threads,
                                           dry_run=request.dry_run, verify=request.verify, folders=(request,)),
                            RunHooks(folder_progress=progress,
                                     on_block=None if on_block is None else (lambda _m, d, t: on_block(d, t))))
    return converted.folders[0]
