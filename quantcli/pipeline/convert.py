"""convert: source -> plan -> quantize+pack -> verify, for every output of a recipe, from one read of the source.

With `cache_dir` set, each output is looked up in the stage cache first (pipeline/cache.py): outputs already
made from the same inputs and parameters are re-hashed and skipped, the rest are written together from one
read. With `manifest` set, a run manifest is written beside the outputs (pipeline/manifest.py). The CLI sets
both; library callers get neither unless they ask.

    result = convert(ConvertRequest(model="./SmolLM2-135M-Instruct", recipe=recipe_from_type("Q8_0"),
                                    output=Path("out/")))
    result.outputs[0].path
    # -> PosixPath('out/SmolLM2-135M-Instruct-Q8_0.gguf')
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from gguf import GGMLQuantizationType

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..plan import FLOAT_TYPES, Plan, QuantOptions, SourceModel, TensorPlan, make_plan
from ..quant.mixes import MixOptions
from ..recipe.schema import OutputSpec, Recipe
from ..stages.download import Snapshot
from .calibrate import calibrate_first, calibration_target
from .outputs import OutputLayout, output_target, resolve_layout

if TYPE_CHECKING:
    from ..quant.imatrix import ImportanceMatrix
    from .cache import CacheHit, StageCache, StageKey
    from .calibrate import CalibrationOutcome
    from ..stages.gptq_gguf import GPTQResult

VERIFY_LEVELS = ("none", "structure", "full")


@dataclass(frozen=True)
class ConvertRequest:
    model: str
    recipe: Recipe
    output: Path | None = None          # a file (one output) or a folder; default: the current folder
    threads: int = 0                    # 0: all cores
    dry_run: bool = False
    verify: str = "structure"
    imatrix: Path | None = None
    calibrate_data: str | None = None   # compute the imatrix from this text first (the recipe's calibrate section
                                        # gives ctx and chunks; without one, the defaults)
    method: str | None = None           # "gptq": GPTQ error compensation on the K-quant matrices, calibrated on
                                        # calibrate_data (stages/gptq_gguf.py) instead of an imatrix
    # The pipeline's services, off by default for library callers; the CLI turns them on.
    cache_dir: Path | None = None       # stage cache root (pipeline.cache); None: no caching
    force: bool = False                 # redo every stage even when the cache holds it
    manifest: bool = False              # write the run manifest beside the outputs
    hub_cache_dir: Path | None = None   # where hub ids are downloaded (default: HF_HUB_CACHE)
    download_progress: bool = False     # huggingface_hub's progress bars while downloading
    local_only: bool = False            # refuse hub ids (the quantize stage alone works on a local snapshot)


@dataclass
class OutputResult:
    path: Path
    type: str
    plan: Plan
    verify: dict | None = None
    seconds: float = 0.0
    sha256: str | None = None
    cached: bool = False                # the file was already there, made from the same inputs (re-hashed)
    verify_cached: bool = False         # the verify report came from the cache


@dataclass
class ConvertResult:
    source: Path
    arch: str
    outputs: list[OutputResult] = field(default_factory=list)
    seconds: float = 0.0
    snapshot: Snapshot | None = None
    manifest: Path | None = None
    calibration: CalibrationOutcome | None = None
    gptq: list[dict] = field(default_factory=list)   # per written output, what the GPTQ pass did


def recipe_from_type(mix: str | None, *, output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                     pure: bool = False, tensor_types: tuple[tuple[str, str], ...] = (),
                     pre_tokenizer: str | None = None, file: str | None = None) -> Recipe | None:
    """The one-output recipe that command-line flags describe; None when no type was given (the default)."""
    spec = OutputSpec(type=(mix or "AUTO").upper(), output_tensor_type=output_tensor_type,
                      token_embedding_type=token_embedding_type, pure=pure, tensor_types=tensor_types,
                      pre_tokenizer=pre_tokenizer, **({"file": file} if file else {}))
    return Recipe(name=(mix or "auto").lower(), outputs=(spec,), source="<command line>")


def parse_tensor_type(arg: str) -> tuple[str, str]:
    """`attn_v=Q8_0` -> ("attn_v", "Q8_0"), read exactly as llama-quantize reads --tensor-type."""
    from ..quant.mixes import parse_tensor_type_option

    pattern, qtype = parse_tensor_type_option(arg)
    return pattern, qtype.name


def _ggml(name: str | None) -> GGMLQuantizationType | None:
    return None if name is None else GGMLQuantizationType[name.upper()]


def quant_options(spec: OutputSpec, imatrix: Path | None) -> QuantOptions:
    mix_options = MixOptions(output_tensor_type=_ggml(spec.output_tensor_type),
                             token_embedding_type=_ggml(spec.token_embedding_type), pure=spec.pure,
                             tensor_types=tuple((p, GGMLQuantizationType[t]) for p, t in spec.tensor_types))
    return QuantOptions(mix=None if spec.type == "AUTO" else spec.type, mix_options=mix_options,
                        pre_tokenizer=spec.pre_tokenizer, imatrix=imatrix)


def resolve_snapshot(model: str, *, hub_cache_dir: Path | None = None, progress: bool = False,
                     local_only: bool = False) -> Snapshot:
    """A local folder as is (recognising hub-cache snapshot folders); a hub id `org/name[@rev]` via download."""
    from ..stages.download import HubRef, download, snapshot_of_folder

    path = Path(model).expanduser()
    if path.exists():
        return snapshot_of_folder(path)
    ref = HubRef.parse(model) if not model.startswith((".", "/", "~")) else None
    if ref is not None and local_only:
        raise InputError(f"{model} is not a local folder.",
                         hint=f"Fetch it first (quantcli download {model}) and pass the printed folder, "
                              "or use quantcli convert, which downloads.")
    if ref is not None:
        return download(ref, cache_dir=hub_cache_dir, progress=progress)
    raise InputError(f"{model} is neither a local folder nor a hub id (org/name).",
                     hint="Pass the path of a Hugging Face model folder or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct.")


def resolve_source(model: str) -> Path:
    """A local folder as is; anything else must be a hub id, fetched (or found in the hub cache) by download."""
    return resolve_snapshot(model).path


def output_names(recipe: Recipe, plans: Sequence[Plan | None], model_name: str) -> list[str]:
    """The file name of every output: its `file:` template with the model, the type (AUTO: the chosen mix) and
    the recipe filled in. `plans` may hold None where the mix is not known yet (batch files are checked before
    any model is read); AUTO then stays AUTO."""
    return [spec.file.format(model=model_name, recipe=recipe.name,
                             type=plan.mix if (spec.type == "AUTO" and plan is not None) else spec.type)
            for spec, plan in zip(recipe.outputs, plans)]


def output_labels(recipe: Recipe) -> list[str]:
    return [f"output {i + 1} of recipe {recipe.name!r} (file: {spec.file!r}, type {spec.type})"
            for i, spec in enumerate(recipe.outputs)]


def output_layout(request: ConvertRequest, plans: Sequence[Plan | None], model_name: str) -> OutputLayout:
    """Every path this request writes (GGUFs and manifest), checked: see pipeline/outputs.py."""
    names = output_names(request.recipe, plans, model_name)
    return resolve_layout(request.output, names, model=model_name, recipe=request.recipe.name,
                          labels=output_labels(request.recipe))


def _default_warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def convert(request: ConvertRequest, progress: Callable[[TensorPlan, int], None] | None = None,
            on_plan: Callable[[list[tuple[Plan, Path]]], None] | None = None, *,
            on_write: Callable[[list[tuple[Plan, Path]]], None] | None = None,
            warn: Callable[[str], None] | None = None) -> ConvertResult:
    """Plan every output of the recipe, write the ones the cache does not hold (one read), verify, record.

    `on_plan` sees every (plan, path); `on_write` only those about to be written (after cache hits are
    taken out); `warn` receives cache warnings (a corrupt entry, an output changed since it was made).
    """
    from ..io.atomic import sweep_partials
    from ..io.locks import output_locks
    from ..quant.imatrix import load_imatrix

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    if request.recipe.folders:
        # folder outputs are written by pipeline/convert_int.py; `quantcli convert --recipe` runs both kinds
        raise InputError(f"recipe {request.recipe.name!r} has safetensors folder outputs, which this run cannot write.",
                         hint=f"Run `quantcli convert MODEL --recipe {request.recipe.name}` for it.")
    output_target(request.output, len(request.recipe.outputs))   # the -o rule, before any download or read
    started = time.perf_counter()
    snapshot = resolve_snapshot(request.model, hub_cache_dir=request.hub_cache_dir, progress=request.download_progress,
                                local_only=request.local_only)
    ckpt = Checkpoint.open(snapshot.path)
    if request.method is not None:
        check_method(request)
    calibration = None if request.method else calibrate_first(request, snapshot, warn or _default_warn)
    if calibration is not None:
        request = replace(request, imatrix=calibration.path)
    imatrix = load_imatrix(request.imatrix) if request.imatrix else None
    source_model = SourceModel.open(ckpt)
    if imatrix is not None:
        from ..stages.calibrate import check_imatrix_fits

        check_imatrix_fits(imatrix.path, imatrix.weights, source_model.specs)
    # a dry run computes no imatrix but plans as if it had one: some mix rules depend on it
    # GPTQ plans as with an imatrix too: its calibration text plays that part, and the mix must be the same
    planned = request.imatrix or (calibration_target(request, snapshot) if request.dry_run or request.method else None)
    plans = [make_plan(source_model, quant_options(spec, planned), extra_metadata=imatrix.metadata() if imatrix else None)
             for spec in request.recipe.outputs]
    if imatrix is not None:
        note = imatrix.check_coverage(imatrix_targets(plans))
        if note is not None:
            (warn or _default_warn)(note)
    layout = output_layout(request, plans, snapshot.name)      # every path checked before any byte is written
    paths = list(layout.files)
    result = ConvertResult(snapshot.path, plans[0].arch, snapshot=snapshot, calibration=calibration)
    pairs = list(zip(plans, paths))
    if on_plan is not None:
        on_plan(pairs)
    if request.dry_run:
        result.outputs = [OutputResult(p, plan.mix, plan) for plan, p in pairs]
        return result
    warn = warn or _default_warn
    # One run at a time per final name, from the cache lookup to the manifest: the manifest then always
    # describes the files beside it (io/locks.py).
    with output_locks(layout.all_paths if request.manifest else layout.files,
                      on_wait=lambda p: warn(f"another quantcli run is writing {p}; waiting for it to finish.")):
        sweep_partials(layout.folder)
        _convert_locked(request, result, layout, pairs, ckpt, imatrix, snapshot, started,
                        progress=progress, on_write=on_write, warn=warn)
    return result


def _convert_locked(request: ConvertRequest, result: ConvertResult, layout: OutputLayout,
                    pairs: list[tuple[Plan, Path]], ckpt: Checkpoint, imatrix: ImportanceMatrix | None, snapshot: Snapshot,
                    started: float, *, progress: Callable[[TensorPlan, int], None] | None,
                    on_write: Callable[[list[tuple[Plan, Path]]], None] | None, warn: Callable[[str], None]) -> None:
    """Look up, write, verify, record and describe the outputs; the caller holds their locks."""
    from .cache import StageCache, fingerprint_folder
    from .keys import imatrix_identity, quantize_key

    plans = [plan for plan, _ in pairs]
    paths = [path for _, path in pairs]
    source = snapshot.path
    threads = request.threads or os.cpu_count() or 1
    backend = _backend_name()
    # GPTQ outputs depend on the calibration text and the method, which the quantize key does not hold: not cached
    cache = StageCache(request.cache_dir, warn=warn) if request.cache_dir is not None and not request.method else None
    fingerprint = fingerprint_folder(source, snapshot.files, snapshot.commit) if cache or request.manifest else {}
    im_sha = imatrix_identity(request.imatrix) if cache or request.manifest else None
    keys = [quantize_key(plan, fingerprint, backend=backend, imatrix_sha256=im_sha) for plan in plans]
    entries = [OutputResult(path, plan.mix, plan) for plan, path in pairs]
    hits: dict[int, CacheHit] = {}
    if cache is not None and not request.force:
        hits = {i: hit for i, (key, path) in enumerate(zip(keys, paths)) if (hit := cache.lookup(key, path)) is not None}
    todo = [i for i in range(len(pairs)) if i not in hits]
    if todo:
        from ..stages.quantize import write_ggufs

        writing = [pairs[i] for i in todo]
        if on_write is not None:
            on_write(writing)
        t0 = time.perf_counter()
        overrides = _gptq_overrides(request, source, writing, threads) if request.method else None
        if overrides is not None:
            result.gptq = [r.manifest() for r in overrides]
        if overrides:   # the block matrices GPTQ leaves to the quantize stage take the walk's importance weights
            imatrix = _walk_importance(overrides[0], request)
        digests = write_ggufs(writing, ckpt, threads=threads, imatrix=imatrix, progress=progress,
                              overrides=[r.overrides for r in overrides] if overrides is not None else None)
        spent = (time.perf_counter() - t0) / len(todo)
        for i, digest in zip(todo, digests):
            entries[i].seconds = spent
            entries[i].sha256 = digest
    for i, hit in hits.items():
        entries[i].cached, entries[i].sha256 = True, hit.sha256
    failures, broken = _verify_outputs(request, entries, keys, hits, cache, source, fingerprint)
    for i in broken:
        # A file that fails the structure check is not a model: it leaves its final name and the cache.
        paths[i].unlink(missing_ok=True)
        if cache is not None:
            cache.forget(keys[i], paths[i])
    if cache is not None:
        for i in todo:
            report = entries[i].verify
            if i not in broken and not (isinstance(report, dict) and report.get("ok") is True):
                # Unverified (--verify none) or below a threshold: cached as made, verified again on every run.
                cache.store(keys[i], paths[i], sha256=entries[i].sha256 or "", extra={"verify": {}})
    result.outputs = entries
    result.seconds = time.perf_counter() - started
    if request.manifest:
        result.manifest = _write_manifest(request, result, layout, keys, fingerprint, threads, backend, im_sha,
                                          skip=set(broken))
    if failures:
        raise failures[0]


METHODS = ("gptq",)


def check_method(request: ConvertRequest) -> None:
    """--method on GGUF output: only gptq, with calibration text, no --imatrix, and K-quant mixes."""
    from ..stages.gptq_gguf import check_gptq_mix

    if request.method not in METHODS:
        raise InputError(f"--method {request.method} does not apply to GGUF output.",
                         hint="Use --method gptq with a K-quant --type, or a folder --format for other methods.")
    if request.imatrix is not None:
        raise InputError("--method gptq cannot be combined with --imatrix: it computes its own statistics.",
                         hint="Give the calibration text with --calibrate instead.")
    if request.calibrate_data is None and request.recipe.calibrate is None:
        raise InputError("--method gptq needs calibration text.",
                         hint="Add --calibrate FILE (or --calibrate builtin:calibration).")
    for spec in request.recipe.outputs:
        check_gptq_mix(spec.type)


def _gptq_overrides(request: ConvertRequest, source: Path, writing: list[tuple[Plan, Path]],
                    threads: int) -> list[GPTQResult]:
    """The GPTQ pass of every output about to be written (one walk over the blocks each: their types differ)."""
    from ..recipe.schema import CalibrateSpec
    from ..stages.calibrate import CalibrateOptions
    from ..stages.calibration_data import load_calibration_text
    from ..stages.gptq_gguf import gptq_overrides

    spec = request.recipe.calibrate or CalibrateSpec()
    if request.calibrate_data is not None:
        spec = replace(spec, data=request.calibrate_data)
    data = load_calibration_text(spec.data, field=spec.field)
    options = CalibrateOptions(ctx=spec.ctx, chunks=spec.chunks, threads=threads)
    return [gptq_overrides(source, plan, data, options) for plan, _ in writing]


def _walk_importance(result: GPTQResult, request: ConvertRequest) -> ImportanceMatrix:
    from ..quant.imatrix import ImportanceMatrix

    return ImportanceMatrix(Path(f"gptq:{request.calibrate_data or 'recipe calibrate data'}"), result.importance,
                            (), result.chunks)


def imatrix_targets(plans: list[Plan]) -> list[str]:
    """The tensors some output encodes in a block type: those an importance matrix weights."""
    names = {t.name for plan in plans for t in plan.tensors if t.qtype not in FLOAT_TYPES}
    return [t.name for t in plans[0].tensors if t.name in names]


def _backend_name() -> str:
    from ..quant.backend import get_backend

    return get_backend().name


def _verify_outputs(request: ConvertRequest, entries: list[OutputResult], keys: list[StageKey],
                    hits: dict[int, CacheHit], cache: StageCache | None, source: Path,
                    fingerprint: dict) -> tuple[list[VerifyError], list[int]]:
    """Verify each output (or take the cached report).

    Returns one VerifyError per failed file, and the indices of the files that are broken (a structural
    problem, or not readable as GGUF at all), as opposed to whole files whose error is above a threshold.
    """
    from ..stages.verify import failure_line, verify_file
    from .keys import verify_key

    if request.verify == "none":
        return [], []
    v = request.recipe.verify
    failures: list[VerifyError] = []
    broken: list[int] = []
    for i, entry in enumerate(entries):
        vkey = verify_key(entry.sha256 or "", level=request.verify, min_snr_db=v.min_snr_db, max_rmse=v.max_rmse,
                          source=fingerprint if request.verify == "full" else None).digest
        stored = hits[i].extra.get("verify", {}) if i in hits else {}
        report = stored.get(vkey) if isinstance(stored, dict) and not request.force else None
        if isinstance(report, dict) and report.get("ok") is True:
            entry.verify, entry.verify_cached = report, True
            continue
        try:
            checked = verify_file(entry.path, source if request.verify == "full" else None,
                                  min_snr_db=v.min_snr_db, max_rmse=v.max_rmse)
        except VerifyError as exc:       # not even readable as GGUF
            entry.verify = {"ok": False, "problems": [str(exc.args[0])]}
            broken.append(i)
            failures.append(VerifyError(f"{exc.args[0]}; it was removed, not left under its final name.",
                                        hint="This is a bug in quantcli; please report it with QUANTCLI_DEBUG=1 output."))
            continue
        entry.verify = checked.to_json()
        if checked.problems:
            broken.append(i)
            failures.append(VerifyError(f"{entry.path} failed verification and was removed: {failure_line(entry.verify)}.",
                                        hint="Run the same command with --verify none and `quantcli verify` the file "
                                             "for the full list; the model may hold a tensor quantcli cannot convert."))
        elif not checked.ok:
            failures.append(VerifyError(f"{entry.path} failed verification: {failure_line(entry.verify)}.",
                                        hint="`quantcli verify FILE --source MODEL --all` lists every tensor."))
        elif cache is not None and entry.sha256:
            # Only passing reports are cached: a failure is re-checked (and re-reported) on every run.
            cache.store(keys[i], entry.path, sha256=entry.sha256, extra={"verify": {**(stored or {}), vkey: entry.verify}})
    return failures, broken


def _write_manifest(request: ConvertRequest, result: ConvertResult, layout: OutputLayout, keys: list[StageKey],
                    fingerprint: dict, threads: int, backend: str, im_sha: str | None, *, skip: set[int]) -> Path:
    """The manifest at the layout's manifest path, describing every output still on disk (not those in `skip`)."""
    from .manifest import build_manifest, verify_summary, write_manifest

    snap = result.snapshot
    path = layout.manifest
    outputs = []
    for i, (entry, key) in enumerate(zip(result.outputs, keys)):
        if i in skip:
            continue
        rel = os.path.relpath(entry.path, path.parent)
        outputs.append({"file": rel, "type": entry.type, "bytes": entry.path.stat().st_size, "sha256": entry.sha256,
                        "tensors": len(entry.plan.tensors), "parameters": entry.plan.n_params,
                        "cache": "hit" if entry.cached else "written", "key": key.digest,
                        "verify_level": request.verify, "verify_summary": verify_summary(entry.verify)})
    source = {"model": request.model, "path": str(Path(result.source).resolve()),
              "repo_id": snap.repo_id if snap else None, "revision": snap.revision if snap else None,
              "commit": snap.commit if snap else None, "fingerprint": fingerprint}
    manifest = build_manifest(command=None, source=source, recipe=request.recipe.canonical(), backend=backend,
                              threads=threads, outputs=outputs, seconds=result.seconds,
                              imatrix={"path": str(request.imatrix), "sha256": im_sha} if request.imatrix else None)
    if result.calibration is not None:
        manifest["calibration"] = result.calibration.manifest()
    if result.gptq:
        manifest["gptq"] = result.gptq
    return write_manifest(path, manifest)


def source_name(path: Path) -> str:
    return Path(path).resolve().name
