"""convert: the request and result types, and the GGUF outputs' stages (plan, pack, verify) that the stage
runner (pipeline/runner.py) calls; the folder outputs' stages are in pipeline/convert_int.py.

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

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from gguf import GGMLQuantizationType

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..plan.gguf import FLOAT_TYPES, Plan, QuantOptions, TensorPlan
from ..quant.mixes import MixOptions
from ..recipe.schema import OutputSpec, Recipe
from ..stages.download import Snapshot
from .outputs import OutputLayout, resolve_layout

if TYPE_CHECKING:
    from ..quant.imatrix import ImportanceMatrix
    from .cache import CacheHit, StageCache, StageKey
    from .calibrate import CalibrationOutcome
    from ..quant.algorithms.gptq_kquant import KGPTQOptions
    from ..stages.gptq_gguf import GPTQResult
    from .convert_int import IntConvertRequest, IntConvertResult
    from .convert_split import SplitConvertRequest, SplitConvertResult
    from .publish_stage import PublishRequest
    from .runner import Run, StageRecord

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
    gptq: KGPTQOptions | None = None    # that pass's options (block types, dampening, ...); None: its defaults
    # The pipeline's services, off by default for library callers; the CLI turns them on.
    cache_dir: Path | None = None       # stage cache root (pipeline.cache); None: no caching
    force: bool = False                 # redo every stage even when the cache holds it
    manifest: bool = False              # write the run manifest beside the outputs
    hub_cache_dir: Path | None = None   # where hub ids are downloaded (default: HF_HUB_CACHE)
    download_progress: bool = False     # huggingface_hub's progress bars while downloading
    local_only: bool = False            # refuse hub ids (the quantize stage alone works on a local snapshot)
    # Folder outputs given on their own (`convert --format`, or a SplitConvertRequest for --method splitquant);
    # without them, the recipe's folder outputs are written inside `output` (pipeline/convert_int.folder_requests).
    folders: tuple[IntConvertRequest | SplitConvertRequest, ...] = ()
    publish: PublishRequest | None = None   # upload the outputs when every stage passed (pipeline/publish_stage.py)


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
    model_verify: dict | None = None    # model-level figures (recipe verify.max_kld / max_ppl_ratio)


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
    folders: list[IntConvertResult | SplitConvertResult] = field(default_factory=list)   # in recipe order
    stages: list[StageRecord] = field(default_factory=list)         # what every stage did (pipeline/runner.py)
    publish: dict[str, Any] | None = None   # the publish stage: repo, url, commit, files (pipeline/publish_stage.py)


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


def convert(request: ConvertRequest, progress: Callable[[TensorPlan, int], None] | None = None,
            on_plan: Callable[[list[tuple[Plan, Path]]], None] | None = None, *,
            on_write: Callable[[list[tuple[Plan, Path]]], None] | None = None,
            warn: Callable[[str], None] | None = None,
            folder_progress: Callable[[Any], None] | None = None,
            on_block: Callable[[str, int, int], None] | None = None) -> ConvertResult:
    """Run every stage for every output of the request (GGUF files and folders) through the stage runner
    (pipeline/runner.py): plan, write what the cache does not hold (the GGUFs from one read), verify, record.

    `on_plan` sees every GGUF (plan, path); `on_write` only those about to be written (after cache hits are
    taken out); `warn` receives cache warnings (a corrupt entry, an output changed since it was made).
    """
    from .runner import RunHooks, run_convert

    return run_convert(request, RunHooks(progress=progress, on_plan=on_plan, on_write=on_write, warn=warn,
                                         folder_progress=folder_progress, on_block=on_block))


def pack_ggufs(run: Run, result: ConvertResult, gguf: Any, layout: OutputLayout, ckpt: Checkpoint,
               cache: StageCache | None, fingerprint: dict, im_sha: str | None
               ) -> tuple[list[StageKey], dict[int, CacheHit], list[int]]:
    """The pack stage of the GGUF outputs: look each up in the cache, then write the misses together from one
    read of the source (quantize runs inside the writer loop, tensor by tensor). Returns the keys, the hits and
    the indices written."""
    keys, hits, todo = lookup_ggufs(run, result, gguf, layout, cache, fingerprint, im_sha)
    if todo:
        write_gguf_misses(run, result, gguf, layout, ckpt, keys, todo)
    return keys, hits, todo


def lookup_ggufs(run: Run, result: ConvertResult, gguf: Any, layout: OutputLayout, cache: StageCache | None,
                 fingerprint: dict, im_sha: str | None) -> tuple[list[StageKey], dict[int, CacheHit], list[int]]:
    """Each GGUF output's key and cache lookup (a hit is recorded); returns the keys, the hits and the misses."""
    from .keys import quantize_key

    request = run.request
    paths = list(layout.files)
    backend = _backend_name()
    keys = [quantize_key(plan, fingerprint, backend=backend, imatrix_sha256=im_sha) for plan in gguf.plans]
    entries = result.outputs
    hits: dict[int, CacheHit] = {}
    for i, (key, path) in enumerate(zip(keys, paths)):
        if cache is None or request.force:
            continue
        t0 = time.perf_counter()
        hit = cache.lookup(key, path)
        if hit is not None:     # a miss is recorded by the write below
            hits[i] = hit
            entries[i].cached, entries[i].sha256 = True, hit.sha256
            run.stages.append(_stage_record("pack", path, "hit", time.perf_counter() - t0, key.digest))
    return keys, hits, [i for i in range(len(paths)) if i not in hits]


def gguf_written(run: Run, result: ConvertResult, layout: OutputLayout, keys: list[StageKey], todo: list[int],
                 digests: list[str], seconds: float) -> None:
    """Record the GGUF misses a pass wrote: their sha256s, and each an equal share of the pass's seconds."""
    paths = list(layout.files)
    for i, digest in zip(todo, digests):
        result.outputs[i].seconds = seconds
        result.outputs[i].sha256 = digest
        run.stages.append(_stage_record("pack", paths[i], "written", seconds, keys[i].digest))


def write_gguf_misses(run: Run, result: ConvertResult, gguf: Any, layout: OutputLayout, ckpt: Checkpoint,
                      keys: list[StageKey], todo: list[int]) -> None:
    """Write the GGUF misses together from one read of the source (with --method gptq after its walks)."""
    from ..stages.quantize import write_ggufs

    request = run.request
    pairs = list(zip(gguf.plans, layout.files))
    writing = [pairs[i] for i in todo]
    if run.hooks.on_write is not None:
        run.hooks.on_write(writing)
    t0 = time.perf_counter()
    imatrix = gguf.imatrix
    overrides = _gptq_overrides(request, result.source, writing, run.threads) if request.method else None
    if overrides is not None:
        result.gptq = [r.manifest() for r in overrides]
    if overrides:   # the block matrices GPTQ leaves to the quantize stage take the walk's importance weights
        imatrix = _walk_importance(overrides[0], request)
    digests = write_ggufs(writing, ckpt, threads=run.threads, imatrix=imatrix, progress=run.hooks.progress,
                          overrides=[r.overrides for r in overrides] if overrides is not None else None)
    # the outputs are written together: each is given an equal share of the one pass
    gguf_written(run, result, layout, keys, todo, digests, (time.perf_counter() - t0) / len(todo))


def verify_ggufs(run: Run, result: ConvertResult, keys: list[StageKey], hits: dict[int, CacheHit], todo: list[int],
                 cache: StageCache | None, fingerprint: dict) -> tuple[list[VerifyError], list[int]]:
    """The verify stage of the GGUF outputs; a file that fails the structure check leaves its final name and
    the cache. Returns the failures and the indices of the broken files."""
    entries = result.outputs
    failures, broken = _verify_outputs(run, entries, keys, hits, cache, result.source, fingerprint)
    for i in broken:
        # A file that fails the structure check is not a model: it leaves its final name and the cache.
        entries[i].path.unlink(missing_ok=True)
        if cache is not None:
            cache.forget(keys[i], entries[i].path)
    if cache is not None:
        for i in todo:
            report = entries[i].verify
            if i not in broken and not (isinstance(report, dict) and report.get("ok") is True):
                # Unverified (--verify none) or below a threshold: cached as made, verified again on every run.
                cache.store(keys[i], entries[i].path, sha256=entries[i].sha256 or "", extra={"verify": {}})
    return failures, broken


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
    return [gptq_overrides(source, plan, data, options, method=request.gptq) for plan, _ in writing]


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


def _verify_outputs(run: Run, entries: list[OutputResult], keys: list[StageKey],
                    hits: dict[int, CacheHit], cache: StageCache | None, source: Path,
                    fingerprint: dict) -> tuple[list[VerifyError], list[int]]:
    """Verify each output (or take the cached report).

    Returns one VerifyError per failed file, and the indices of the files that are broken (a structural
    problem, or not readable as GGUF at all), as opposed to whole files whose error is above a threshold.
    """
    from ..stages.verify import failure_line
    from .keys import verify_key

    request = run.request
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
            run.stages.append(_stage_record("verify", entry.path, "hit", 0.0, vkey))
            continue
        try:
            t0 = time.perf_counter()
            checked = _verify_file(entry.path, source if request.verify == "full" else None, v)
            run.stages.append(_stage_record("verify", entry.path, "ran", time.perf_counter() - t0, vkey))
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


def _stage_record(stage: str, path: Path, status: str, seconds: float, key: str) -> Any:
    from .runner import StageRecord

    return StageRecord(stage, str(path), status, seconds, key)


def _verify_file(path: Path, source: Path | None, v: Any) -> Any:
    from ..stages.verify import verify_file

    return verify_file(path, source, min_snr_db=v.min_snr_db, max_rmse=v.max_rmse)


def source_name(path: Path) -> str:
    return Path(path).resolve().name
