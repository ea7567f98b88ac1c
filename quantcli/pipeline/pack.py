"""The pack stage of a run (pipeline/runner.py): look every output up in the stage cache, then write the misses.

The misses that need no calibrated walk of the model are written together from one read of the source
(stages/pack_group.write_group): the GGUF outputs (with or without an importance matrix) and the folders encoded
per tensor (RTN min-max, RTN-MSE, HQQ, bitsandbytes NF4). The others keep a pass of their own:
- GGUF outputs made with --method gptq: their GPTQ walk comes first and feeds write_ggufs (pipeline/convert.py);
  in such a run the folders are written on their own too;
- calibrated folders (GPTQ, AWQ): the engine walks the blocks, then the folder is packed from its spool;
- SplitQuantV2 (--method splitquant): it encodes a Linear weight with its bias (two tensors at once), and the
  command line never mixes it with other outputs, so there is nothing to share.

An output that hits the cache is not written, and its tensors are not read unless another miss needs them.
The run's stage records get one pack record with no output for the shared read, and one per output (written
with an equal share of the read's seconds, or hit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..io.checkpoint import Checkpoint
    from .cache import CacheHit, StageCache, StageKey
    from .convert import ConvertResult
    from .convert_int import FolderJob
    from .convert_split import SplitJob
    from .outputs import OutputLayout
    from .runner import Run


@dataclass
class Packed:
    """What the pack stage leaves for verify and the manifest."""

    keys: list[StageKey] = field(default_factory=list)       # per GGUF output
    hits: dict[int, CacheHit] = field(default_factory=dict)  # GGUF outputs found in the cache
    todo: list[int] = field(default_factory=list)            # GGUF outputs written
    folder_keys: list[StageKey] = field(default_factory=list)


def shares_read(job: Any) -> bool:
    """Whether a folder output is encoded tensor by tensor from the source (no calibrated walk)."""
    from .convert_int import FolderJob

    return isinstance(job, FolderJob) and not job.calibrated


def pack_outputs(run: Run, result: ConvertResult, gguf: Any, layout: OutputLayout, jobs: list[FolderJob | SplitJob],
                 ckpt: Checkpoint, cache: StageCache | None, fingerprint: dict[str, Any],
                 im_sha: str | None) -> Packed:
    """Every output's pack stage: cache lookups first, then one shared read for the calibration-free misses,
    then the outputs with a walk of their own."""
    from .convert import lookup_ggufs, write_gguf_misses

    request = run.request
    packed = Packed()
    gcache = None if request.method else cache   # GGUF-GPTQ outputs depend on text and method: never cached
    if gguf is not None:
        packed.keys, packed.hits, packed.todo = lookup_ggufs(run, result, gguf, layout, gcache, fingerprint, im_sha)
    packed.folder_keys = [folder_key(run, job, fingerprint) for job in jobs]
    hit = [lookup_folder(run, job, key, cache) for job, key in zip(jobs, packed.folder_keys)]
    shared = [j for j, job in enumerate(jobs) if not hit[j] and shares_read(job) and not request.method]
    if shared:
        _write_shared(run, result, gguf, layout, ckpt, packed, [jobs[j] for j in shared],
                      [packed.folder_keys[j] for j in shared], cache)
    elif packed.todo:      # GGUF outputs alone (or made with --method gptq): their own one read
        write_gguf_misses(run, result, gguf, layout, ckpt, packed.keys, packed.todo)
    for j, job in enumerate(jobs):
        if not hit[j] and j not in shared:
            with run.stage("pack", job.result.path, packed.folder_keys[j].digest) as rec:
                _write_alone(run, job, ckpt)
                _folder_written(job, packed.folder_keys[j], cache)
                rec.status = "written"
    return packed


def _write_shared(run: Run, result: ConvertResult, gguf: Any, layout: OutputLayout, ckpt: Checkpoint,
                  packed: Packed, jobs: list[FolderJob], keys: list[StageKey], cache: StageCache | None) -> None:
    """The GGUF misses and the calibration-free folder misses from one read of the source."""
    from ..stages.pack_group import write_group
    from .convert import gguf_written
    from .runner import StageRecord

    ggufs = [(gguf.plans[i], layout.files[i]) for i in packed.todo] if gguf is not None else []
    if ggufs and run.hooks.on_write is not None:
        run.hooks.on_write(ggufs)
    started = time.perf_counter()
    digests, _ = write_group(ggufs, [(job.result.plan, job.result.path) for job in jobs], ckpt,
                             threads=run.threads, imatrix=gguf.imatrix if gguf is not None else None,
                             progress=run.hooks.progress, folder_progress=run.hooks.folder_progress)
    seconds = time.perf_counter() - started
    # one read for the group; each output is given an equal share of it
    run.stages.append(StageRecord("pack", None, "ran", seconds, None))
    share = seconds / (len(ggufs) + len(jobs))
    if ggufs:
        gguf_written(run, result, layout, packed.keys, packed.todo, digests, share)
    for job, key in zip(jobs, keys):
        job.result.seconds = share
        _folder_written(job, key, cache)
        run.stages.append(StageRecord("pack", str(job.result.path), "written", share, key.digest))


def folder_key(run: Run, job: FolderJob | SplitJob, fingerprint: dict[str, Any]) -> StageKey:
    from ..quant.backend import get_backend
    from .keys import pack_folder_key

    result = job.result
    calibration = None
    if job.calibrated:
        c = result.calibration or {}
        calibration = {"data_sha256": c.get("data_sha256"), "ctx": c.get("ctx"), "chunks": c.get("chunks")}
    return pack_folder_key(result.plan, fingerprint, backend=get_backend().name, method_options=job.options,
                           calibration=calibration)


def lookup_folder(run: Run, job: FolderJob | SplitJob, key: StageKey, cache: StageCache | None) -> bool:
    """A folder output's cache lookup: a hit re-hashes every file of the folder and is recorded."""
    from .cache import folder_files

    if cache is None or run.request.force:
        return False
    result = job.result
    started = time.perf_counter()
    hit = cache.lookup(key, result.path)
    if hit is None:
        return False
    result.cached = True
    result.files = folder_files(result.path)
    result.sha256 = hit.sha256
    if isinstance(hit.extra.get("calibration"), dict):
        result.calibration = hit.extra["calibration"]
    from .runner import StageRecord

    run.stages.append(StageRecord("pack", str(result.path), "hit", time.perf_counter() - started, key.digest))
    return True


def _write_alone(run: Run, job: FolderJob | SplitJob, ckpt: Checkpoint) -> None:
    started = time.perf_counter()
    hook = run.hooks.on_block
    on_block = None if hook is None else (lambda done, total: hook(job.result.method, done, total))
    job.write(ckpt, run.threads, run.hooks.folder_progress, on_block)
    job.result.seconds = time.perf_counter() - started


def _folder_written(job: FolderJob | SplitJob, key: StageKey, cache: StageCache | None) -> None:
    """A folder just written: its files' sha256s, the digest over them, and its cache record."""
    from .cache import files_digest, folder_files

    result = job.result
    result.files = folder_files(result.path)
    result.sha256 = files_digest(result.files)
    if cache is not None:
        cache.store(key, result.path, sha256=result.sha256,
                    extra={"calibration": result.calibration} if result.calibration else {})
