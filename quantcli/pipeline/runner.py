"""The convert pipeline as a runner of stages: download -> calibrate -> pack (quantize inside the writer loop)
-> verify -> verify_model -> record, for every output of a request, GGUF files and safetensors folders alike.

One run opens the source once (one snapshot, one Checkpoint), loads and tokenizes each calibration text once
for every output that needs it, and writes each output to its own file or folder under a partial name, renamed
into place when complete. The stage cache (pipeline/cache.py, keys in pipeline/keys.py) is consulted around
every stage that has a key:

| stage | runs | key (pipeline/keys.py) |
|---|---|---|
| download | once | none: the hub cache is the cache of this stage |
| calibrate | once: the GGUF imatrix (file beside the outputs); token chunks for calibrated folder outputs, shared | `calibrate_key` for the imatrix |
| pack | the GGUF outputs and the calibration-free folders together from one read of the source (pipeline/pack.py); outputs with a calibrated walk (GGUF --method gptq, GPTQ/AWQ folders) on their own | `quantize_key` per GGUF, `pack_folder_key` per folder |
| verify | per output: structure, or full (error against the source) | `verify_key` (GGUF) |
| verify_model | per output, when the recipe sets verify.max_kld or verify.max_ppl_ratio | `verify_model_key` |
| record | once: the run manifest, every output with its sha256s, stages, timings and figures | none |
| publish | once, when asked (`--publish`, a recipe's `publish.on_convert`) and every stage before passed: every output of the manifest to one hub repo (publish_stage.py) | none |

`StageRecord`s say what each stage did (ran, hit, written, skipped), for which output, in how many seconds; the
manifest keeps them. The stages' bodies live beside the runner: GGUF outputs in convert.py, integer folders in
convert_int.py, SplitQuantV2 in convert_split.py, the model-level verify in model_verify.py and the manifest in
run_manifest.py. Library callers get neither cache nor manifest unless the request asks.

    result = run_convert(ConvertRequest(model="./tiny-llama", recipe=resolve_recipe("release"), output=Path("out")))
    [s.stage for s in result.stages][:2]
    # -> ['download', 'calibrate']
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, VerifyError
from ..recipe.schema import FolderOutputSpec, Recipe

if TYPE_CHECKING:
    from ..io.checkpoint import Checkpoint
    from ..plan.gguf import Plan, TensorPlan
    from ..plan.safetensors import ModulePlan
    from ..stages.download import Snapshot
    from .convert import ConvertRequest, ConvertResult
    from .convert_int import FolderJob, IntConvertRequest
    from .convert_split import SplitJob
    from .outputs import OutputLayout

STAGES = ("download", "calibrate", "pack", "verify", "verify_model", "record", "publish")


@dataclass
class RunHooks:
    """How a caller follows a run; every hook is optional."""

    progress: Callable[[TensorPlan, int], None] | None = None       # GGUF bytes written, per tensor
    on_plan: Callable[[list[tuple[Plan, Path]]], None] | None = None   # every GGUF (plan, path), before writing
    on_write: Callable[[list[tuple[Plan, Path]]], None] | None = None  # the GGUFs about to be written (cache misses)
    warn: Callable[[str], None] | None = None                      # cache warnings, imatrix coverage notes
    folder_progress: Callable[[ModulePlan], None] | None = None    # folder tensors written
    on_block: Callable[[str, int, int], None] | None = None        # a calibrated walk: (method, block i, of n)


@dataclass
class StageRecord:
    """What one stage did for one output (or for the run: `output` None)."""

    stage: str
    output: str | None
    status: str = "ran"          # ran | written | hit | skipped
    seconds: float = 0.0
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "output": self.output, "status": self.status,
                "seconds": round(self.seconds, 3), "key": self.key}


def _default_warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def folder_recipe(request: IntConvertRequest) -> Recipe:
    """The one-output recipe a `convert --format` command line describes (recorded in the manifest)."""
    spec = FolderOutputSpec(format=request.format, scheme=request.scheme, bits=request.bits,
                            group_size=None if request.group_size == -1 else request.group_size,
                            symmetric=request.symmetric, method=request.method, options=request.method_options,
                            ignore=request.ignore, double_quant=request.double_quant)
    return Recipe(name=request.format, folders=(spec,), source="<command line>")


def folder_requests_of(request: ConvertRequest) -> tuple[IntConvertRequest, ...]:
    """The folder outputs of a request: given explicitly (`convert --format`), else the recipe's."""
    if request.folders:
        return tuple(request.folders)
    if not request.recipe.folders:
        return ()
    # the INT machinery (schemes, methods, folder formats) is imported only for a run that writes folders
    from .convert_int import folder_requests

    return tuple(folder_requests(request.recipe, request.model, request.output, threads=request.threads,
                                 verify=request.verify, dry_run=request.dry_run, calibrate=request.calibrate_data))


class Run:
    """The state one run carries from stage to stage."""

    def __init__(self, request: ConvertRequest, hooks: RunHooks) -> None:
        self.request = request
        self.hooks = hooks
        self.warn = hooks.warn or _default_warn
        self.stages: list[StageRecord] = []
        self.threads = request.threads or os.cpu_count() or 1
        self.texts: dict[Any, Any] = {}       # loaded calibration texts and their token chunks, by setting

    @contextmanager
    def stage(self, name: str, output: Path | str | None = None, key: str | None = None) -> Iterator[StageRecord]:
        record = StageRecord(name, None if output is None else str(output), key=key)
        started = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - started
            self.stages.append(record)


def run_convert(request: ConvertRequest, hooks: RunHooks | None = None) -> ConvertResult:
    """Run every stage of `request` (module docstring) and return what each output became."""
    from ..io.checkpoint import Checkpoint
    from .convert import VERIFY_LEVELS, ConvertResult, check_method, resolve_snapshot
    from .outputs import output_target

    run = Run(request, hooks or RunHooks())
    recipe = request.recipe
    # Every refusal that needs no file comes first: nothing is downloaded or read for a bad command line.
    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    folder_reqs = folder_requests_of(request)
    for f in folder_reqs:
        _check_folder(f)
    if recipe.outputs:
        output_target(request.output, len(recipe.outputs))   # the -o rule, before any download or read
    if not recipe.outputs and not folder_reqs:
        raise InputError(f"recipe {recipe.name!r} has no outputs.", hint="List at least one output in the recipe.")
    if request.method is not None:
        check_method(request)
    from .publish_stage import check_publish, publish_outputs

    publishing = check_publish(request)     # the repo id, offline mode, a token: refused before any work
    if publishing is not None and not request.manifest:
        request = run.request = replace(request, manifest=True)    # publishing reads the run manifest
    started = time.perf_counter()

    with run.stage("download"):
        snapshot = resolve_snapshot(request.model, hub_cache_dir=request.hub_cache_dir,
                                    progress=request.download_progress, local_only=request.local_only)
        ckpt = Checkpoint.open(snapshot.path)
    jobs = [_plan_folder(f, snapshot.path, ckpt) for f in folder_reqs]   # metadata only: refusals before writing

    calibration = None
    with run.stage("calibrate") as rec:
        from .calibrate import calibrate_first

        if recipe.outputs and not request.method:
            calibration = calibrate_first(request, snapshot, run.warn)
        if calibration is not None:
            request = replace(request, imatrix=calibration.path)
            run.request = request
            rec.status, rec.output = ("hit" if calibration.cached else "written"), str(calibration.path)
        for job in jobs:
            if job.calibrated:
                from .convert_int import prepare_calibration

                prepare_calibration(job, run.texts, run.threads)
        if calibration is None and not any(job.calibrated for job in jobs):
            rec.status = "skipped"

    gguf = _plan_ggufs(run, snapshot, ckpt) if recipe.outputs else None
    result = ConvertResult(snapshot.path, gguf.plans[0].arch if gguf else _arch(ckpt), snapshot=snapshot,
                           calibration=calibration)
    result.folders = [job.result for job in jobs]
    layout = _layout(request, gguf, jobs, snapshot)
    if gguf is not None:
        pairs = list(zip(gguf.plans, layout.files))
        if run.hooks.on_plan is not None:
            run.hooks.on_plan(pairs)
        result.outputs = [_output_result(plan, path) for plan, path in pairs]
    if request.dry_run:
        result.stages = run.stages
        if publishing is not None:      # what a real run would do at its end; nothing is sent
            result.publish = publishing.record("planned")
        return result
    _run_locked(run, result, layout, gguf, jobs, ckpt, snapshot, started)    # raises when a stage failed
    if publishing is not None:
        publish_outputs(run, result, publishing)
    return result


def _check_folder(request: Any) -> None:
    """The refusals a folder output gets before anything is read (an integer format, or SplitQuantV2)."""
    from .convert_int import check_folder_request
    from .convert_split import SplitConvertRequest, resolve_split_scheme

    if isinstance(request, SplitConvertRequest):
        resolve_split_scheme(request)
    else:
        check_folder_request(request)


def _plan_folder(request: Any, source: Path, ckpt: Checkpoint) -> Any:
    from .convert_int import plan_folder
    from .convert_split import SplitConvertRequest, plan_split

    if isinstance(request, SplitConvertRequest):
        return plan_split(request, source, ckpt)
    return plan_folder(request, source, ckpt)


def _arch(ckpt: Checkpoint) -> str:
    archs = ckpt.config.get("architectures") or ["?"]
    return str(archs[0])


def _output_result(plan: Plan, path: Path) -> Any:
    from .convert import OutputResult

    return OutputResult(path, plan.mix, plan)


@dataclass
class _GGUFs:
    plans: list[Any]
    imatrix: Any          # quant.imatrix.ImportanceMatrix | None


def _plan_ggufs(run: Run, snapshot: Snapshot, ckpt: Checkpoint) -> _GGUFs:
    """The GGUF plans (metadata only), with the imatrix they are quantized with, checked against the model."""
    from ..plan.gguf import SourceModel, make_plan
    from ..quant.imatrix import load_imatrix
    from .calibrate import calibration_target
    from .convert import imatrix_targets, quant_options

    request = run.request
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
            run.warn(note)
    return _GGUFs(plans, imatrix)


def _layout(request: ConvertRequest, gguf: _GGUFs | None, jobs: list[FolderJob | SplitJob], snapshot: Snapshot) -> OutputLayout:
    """Every path the run writes, checked before any byte is written: the GGUF files and the manifest
    (pipeline/outputs.py), and the folders, none of which may be another output's path."""
    from .convert import output_labels, output_layout
    from .outputs import OutputLayout, refuse_collisions

    if gguf is not None or request.output is not None or not request.folders:
        layout = output_layout(request, gguf.plans if gguf else [], snapshot.name)
    else:
        # `convert --format -o DIR` (or its default name): the manifest goes beside the one folder
        folder = jobs[0].result.path
        layout = OutputLayout(folder.parent, (), folder.with_name(folder.name + ".manifest.json"), False)
    entries = [(label, Path(os.path.realpath(p))) for label, p in
               zip([*output_labels(request.recipe), "the run manifest"] if gguf else ["the run manifest"],
                   layout.all_paths)]
    entries += [(f"folder output {job.result.path}", Path(os.path.realpath(job.result.path))) for job in jobs]
    refuse_collisions(entries, hint="Give each output its own `file:` or `dir:` template.")
    return layout


def _run_locked(run: Run, result: ConvertResult, layout: OutputLayout, gguf: _GGUFs | None, jobs: list[FolderJob | SplitJob],
                ckpt: Checkpoint, snapshot: Snapshot, started: float) -> None:
    """pack -> verify -> verify_model -> record, holding a lock on every final name (io/locks.py): the manifest
    then always describes the outputs beside it."""
    from ..io.atomic import sweep_partials
    from ..io.locks import output_locks
    from .cache import StageCache, fingerprint_folder
    from .keys import imatrix_identity
    from .model_verify import verify_models
    from .pack import pack_outputs
    from .run_manifest import write_run_manifest

    request = run.request
    paths = [*layout.files, *(job.result.path for job in jobs)]
    if request.manifest:
        paths.append(layout.manifest)
    with output_locks(paths, on_wait=lambda p: run.warn(f"another quantcli run is writing {p}; waiting for it to finish.")):
        for folder in {Path(p).parent for p in paths}:
            sweep_partials(folder)
        # GGUF-GPTQ outputs depend on the calibration text and the method, which the quantize key does not hold
        cache = StageCache(request.cache_dir, warn=run.warn) if request.cache_dir is not None else None
        fingerprint = fingerprint_folder(snapshot.path, snapshot.files, snapshot.commit) if cache or request.manifest else {}
        im_sha = imatrix_identity(request.imatrix) if cache or request.manifest else None
        failures: list[VerifyError] = []
        broken: set[int] = set()
        # pack: every output's cache lookup, then the calibration-free misses from one read (pipeline/pack.py)
        packed = pack_outputs(run, result, gguf, layout, jobs, ckpt, cache, fingerprint, im_sha)
        keys, folder_keys = packed.keys, packed.folder_keys
        if gguf is not None:
            from .convert import verify_ggufs

            gcache = None if request.method else cache
            fails, bad = verify_ggufs(run, result, keys, packed.hits, packed.todo, gcache, fingerprint)
            failures += fails
            broken |= set(bad)
        for job in jobs:
            with run.stage("verify", job.result.path) as rec:
                from .convert_int import folder_failure

                report = job.check()
                if report is None:
                    rec.status = "skipped"
                elif not report.ok:
                    failures.append(folder_failure(job))
        failures += verify_models(run, result, cache, fingerprint, skip=broken)
        result.seconds = time.perf_counter() - started
        if request.manifest:
            with run.stage("record", layout.manifest):
                result.stages = run.stages
                result.manifest = write_run_manifest(run, result, layout, keys, folder_keys, fingerprint, im_sha,
                                                     skip=broken)
        result.stages = run.stages
    if failures:
        raise failures[0]
