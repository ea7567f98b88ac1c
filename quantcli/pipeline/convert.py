"""convert: source -> plan -> quantize+pack -> verify, for every output of a recipe, from one read of the source.

With `cache_dir` set, each output is looked up in the stage cache first (pipeline/cache.py): outputs already
made from the same inputs and parameters are re-hashed and skipped, the rest are written together from one
read. With `manifest` set, a run manifest is written beside the outputs (pipeline/manifest.py). The CLI sets
both; library callers get neither unless they ask.

    >>> result = convert(ConvertRequest(model="./SmolLM2-135M-Instruct", recipe=recipe_from_type("Q8_0"),
    ...                                 output=Path("out/")))
    >>> result.outputs[0].path
    PosixPath('out/SmolLM2-135M-Instruct-Q8_0.gguf')
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gguf import GGMLQuantizationType

from ..errors import InputError, VerifyError
from ..io.checkpoint import Checkpoint
from ..plan import FLOAT_TYPES, Plan, QuantOptions, SourceModel, TensorPlan, make_plan
from ..quant.mixes import MixOptions
from ..recipe.schema import OutputSpec, Recipe
from ..stages.download import Snapshot

if TYPE_CHECKING:
    from .cache import CacheHit, StageCache, StageKey

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


def output_paths(request: ConvertRequest, ckpt: Checkpoint, plans: list[Plan], model_name: str | None = None) -> list[Path]:
    model_name = model_name or ckpt.path.resolve().name
    out = request.output
    specs = request.recipe.outputs
    if out is not None and (out.suffix == ".gguf") and not out.is_dir():
        if len(plans) != 1:
            raise InputError(f"-o {out} names one file but the recipe has {len(plans)} outputs.",
                             hint="Give a folder with -o, or a recipe with one output.")
        return [out]
    folder = out if out is not None else Path(".")
    return [folder / spec.filename(model_name, request.recipe.name).replace("AUTO", plan.mix)
            for spec, plan in zip(specs, plans)]


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
    from ..quant.imatrix import load_imatrix
    from .cache import StageCache, file_sha256, fingerprint_folder
    from .keys import imatrix_identity, quantize_key

    if request.verify not in VERIFY_LEVELS:
        raise InputError(f"--verify {request.verify!r} is not a level.", hint=f"Use one of: {', '.join(VERIFY_LEVELS)}.")
    started = time.perf_counter()
    snapshot = resolve_snapshot(request.model, hub_cache_dir=request.hub_cache_dir, progress=request.download_progress,
                                local_only=request.local_only)
    source = snapshot.path
    ckpt = Checkpoint.open(source)
    imatrix = load_imatrix(request.imatrix) if request.imatrix else None
    source_model = SourceModel.open(ckpt)
    plans = [make_plan(source_model, quant_options(spec, request.imatrix), extra_metadata=imatrix.metadata() if imatrix else None)
             for spec in request.recipe.outputs]
    if imatrix is not None:
        note = imatrix.check_coverage(imatrix_targets(plans))
        if note is not None:
            (warn or _default_warn)(note)
    paths = output_paths(request, ckpt, plans, snapshot.name)
    result = ConvertResult(source, plans[0].arch, snapshot=snapshot)
    pairs = list(zip(plans, paths))
    if on_plan is not None:
        on_plan(pairs)
    if request.dry_run:
        result.outputs = [OutputResult(p, plan.mix, plan) for plan, p in pairs]
        return result
    threads = request.threads or os.cpu_count() or 1
    backend = _backend_name()
    warn = warn or _default_warn
    cache = StageCache(request.cache_dir, warn=warn) if request.cache_dir is not None else None
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
        write_ggufs(writing, ckpt, threads=threads, imatrix=imatrix, progress=progress)
        spent = (time.perf_counter() - t0) / len(todo)
        for i in todo:
            entries[i].seconds = spent
            if cache is not None or request.manifest:
                entries[i].sha256 = file_sha256(paths[i])
            if cache is not None:
                cache.store(keys[i], paths[i], sha256=entries[i].sha256 or "", extra={"verify": {}})
    for i, hit in hits.items():
        entries[i].cached, entries[i].sha256 = True, hit.sha256
    failures = _verify_outputs(request, entries, keys, hits, cache, source, fingerprint)
    result.outputs = entries
    result.seconds = time.perf_counter() - started
    if request.manifest:
        result.manifest = _write_manifest(request, result, keys, fingerprint, threads, backend, im_sha)
    if failures:
        raise failures[0]
    return result


def imatrix_targets(plans: list[Plan]) -> list[str]:
    """The tensors some output encodes in a block type: those an importance matrix weights."""
    names = {t.name for plan in plans for t in plan.tensors if t.qtype not in FLOAT_TYPES}
    return [t.name for t in plans[0].tensors if t.name in names]


def _backend_name() -> str:
    from ..quant.backend import get_backend

    return get_backend().name


def _verify_outputs(request: ConvertRequest, entries: list[OutputResult], keys: list[StageKey],
                    hits: dict[int, CacheHit], cache: StageCache | None, source: Path,
                    fingerprint: dict) -> list[VerifyError]:
    """Verify each output (or take the cached report); returns one VerifyError per failed file."""
    from ..stages.verify import verify_file
    from .keys import verify_key

    if request.verify == "none":
        return []
    v = request.recipe.verify
    failures: list[VerifyError] = []
    for i, entry in enumerate(entries):
        vkey = verify_key(entry.sha256 or "", level=request.verify, min_snr_db=v.min_snr_db, max_rmse=v.max_rmse,
                          source=fingerprint if request.verify == "full" else None).digest
        stored = hits[i].extra.get("verify", {}) if i in hits else {}
        report = stored.get(vkey) if isinstance(stored, dict) and not request.force else None
        if isinstance(report, dict) and report.get("ok") is True:
            entry.verify, entry.verify_cached = report, True
            continue
        checked = verify_file(entry.path, source if request.verify == "full" else None,
                              min_snr_db=v.min_snr_db, max_rmse=v.max_rmse)
        entry.verify = checked.to_json()
        if not checked.ok:
            failures.append(VerifyError(f"{entry.path} failed verification: " + "; ".join(
                checked.problems[:3] + [f"{t.name} SNR {t.snr_db:.1f} dB < {t.min_snr_db}" for t in checked.tensors if not t.ok][:3]),
                hint="Run `quantcli verify` on it for the full table."))
        elif cache is not None and entry.sha256:
            # Only passing reports are cached: a failure is re-checked (and re-reported) on every run.
            cache.store(keys[i], entry.path, sha256=entry.sha256, extra={"verify": {**(stored or {}), vkey: entry.verify}})
    return failures


def _write_manifest(request: ConvertRequest, result: ConvertResult, keys: list[StageKey], fingerprint: dict,
                    threads: int, backend: str, im_sha: str | None) -> Path:
    from .manifest import build_manifest, manifest_path, verify_summary, write_manifest

    snap = result.snapshot
    single = result.outputs[0].path if (request.output is not None and request.output.suffix == ".gguf"
                                        and len(result.outputs) == 1 and result.outputs[0].path == request.output) else None
    folder = result.outputs[0].path.parent
    path = manifest_path(folder, model=snap.name if snap else source_name(result.source), recipe=request.recipe.name,
                         single_file=single)
    outputs = []
    for entry, key in zip(result.outputs, keys):
        rel = os.path.relpath(entry.path, path.parent)
        outputs.append({"file": rel, "type": entry.type, "bytes": entry.path.stat().st_size, "sha256": entry.sha256,
                        "tensors": len(entry.plan.tensors), "parameters": entry.plan.n_params,
                        "cache": "hit" if entry.cached else "written", "key": key.digest,
                        "verify_level": request.verify, "verify_summary": verify_summary(entry.verify),
                        "verify": entry.verify})
    source = {"model": request.model, "path": str(Path(result.source).resolve()),
              "repo_id": snap.repo_id if snap else None, "revision": snap.revision if snap else None,
              "commit": snap.commit if snap else None, "fingerprint": fingerprint}
    manifest = build_manifest(command=None, source=source, recipe=request.recipe.canonical(), backend=backend,
                              threads=threads, outputs=outputs, seconds=result.seconds,
                              imatrix={"path": str(request.imatrix), "sha256": im_sha} if request.imatrix else None)
    return write_manifest(path, manifest)


def source_name(path: Path) -> str:
    return Path(path).resolve().name
