"""The shared pack pass: GGUF files and calibration-free safetensors folders written together from one read of
the source. Each source tensor is read once (and widened to float32 at most once), then handed to every output
that needs it: the GGUF encoders (stages/quantize.Encoder) and each folder's encoder
(stages/pack_safetensors.source_arrays, as the folder's own pass runs it), so every file has the bytes its
single-output run writes.

Order: the GGUF files are streamed tensor after tensor, so when the group has GGUF outputs the pass follows
their plan, then reads the tensors only folders need, in checkpoint order; without GGUF outputs it is the
checkpoint's order. A folder places each tensor at its planned offset (io/safetensors_writer.PlacedTensorWriter),
so it takes them in any order. Reading runs ahead on one thread and writing behind on another
(stages/overlap.py); the calling thread runs the kernels on all threads.

Memory: one tensor being read and one waiting (depth 1), the tensor being encoded (its mapped stored values,
the transformed copy a permuted GGUF tensor gets unless the kernels take its rows by index, one float32 copy
shared by the folders, and the bytes of the output being encoded), two encoded arrays waiting and one being
written (two: with one, the kernels stalled whenever the writer was still hashing a large tensor): a few
tensors, never the model.

Every output is built under a partial name (GGUF files, and each folder under its hidden partial folder) and
renamed only after every output is complete; an error or Ctrl-C removes them all and touches no final name.

    write_group([(plan_q8, Path("m-Q8_0.gguf"))], [(int_plan, Path("m-W4A16"))], ckpt, threads=2)
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..io.checkpoint import Checkpoint
from ..io.gguf_writer import GGUFStreamWriter
from ..plan.gguf import Plan, TensorPlan
from ..quant.backend import Backend, get_backend
from ..quant.imatrix import ImportanceMatrix
from .overlap import WriteBehind, read_ahead
from .quantize import Encoder, Stored, check_free_space, check_overrides, prepare

if TYPE_CHECKING:
    # the folder side (INT schemes, folder formats, the safetensors writer) is imported only by a group that
    # writes folders: a GGUF-only run starts without it
    from ..io.safetensors_writer import PlacedTensorWriter
    from ..plan.safetensors import IntPlan, ModulePlan

Progress = Callable[[TensorPlan, int], None]
FolderProgress = Callable[["ModulePlan"], None]


@dataclass(frozen=True)
class _Step:
    """One read of the pass: the sources of GGUF tensor `tensor` (None: a tensor only folders need)."""

    tensor: int | None
    sources: tuple[str, ...]


def read_order(ggufs: Sequence[Plan], folders: Sequence[IntPlan], ckpt: Checkpoint) -> list[_Step]:
    """The pass: the GGUF plan's tensors in order, then the folders' other tensors in checkpoint order."""
    steps: list[_Step] = []
    seen: set[str] = set()
    if ggufs:
        for i, t in enumerate(ggufs[0].tensors):
            steps.append(_Step(i, tuple(t.spec.sources)))
            seen.update(t.spec.sources)
    wanted = {m.source for plan in folders for m in plan.modules}
    steps += [_Step(None, (name,)) for name in ckpt.tensors if name in wanted and name not in seen]
    return steps


def write_group(ggufs: Sequence[tuple[Plan, Path]], folders: Sequence[tuple[IntPlan, Path]], ckpt: Checkpoint, *,
                threads: int = 1, backend: Backend | None = None, imatrix: ImportanceMatrix | None = None,
                progress: Progress | None = None, folder_progress: FolderProgress | None = None,
                overrides: Sequence[Mapping[str, np.ndarray] | None] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """Write every GGUF and calibration-free folder of the group from one read of `ckpt`. Returns each GGUF's
    sha256 (computed as it was written) and each folder's file names.

    `overrides`, one mapping per GGUF output (or None), gives already encoded rows for some tensors by GGUF name
    (the GPTQ pass, stages/gptq_gguf.py); they are written as they are, in the planned type and size."""
    names = [t.name for t in ggufs[0][0].tensors] if ggufs else []
    for plan, _ in ggufs[1:]:
        if [t.name for t in plan.tensors] != names:
            raise ValueError("outputs of one run must plan the same tensors in the same order")
    if ggufs:
        check_free_space(ggufs)
    given = [dict(o or {}) for o in (overrides or [None] * len(ggufs))]
    for (plan, _), o in zip(ggufs, given):
        check_overrides(plan, o)
    enc = Encoder(backend or get_backend(), threads, imatrix)
    be = enc.backend
    steps = read_order([p for p, _ in ggufs], [p for p, _ in folders], ckpt)
    first = ggufs[0][0] if ggufs else None
    modules = [{m.source: m for m in plan.modules} for plan, _ in folders]   # each folder's tensors still to feed

    def in_kernels(i: int, t: TensorPlan) -> bool:
        # the kernels check the values as they quantize them when every GGUF output has them quantize this tensor
        return bool(t.source_dtypes) and all(
            enc.quantizes_stored(plan.tensors[i], t.source_dtypes[0]) and t.name not in done
            for (plan, _), done in zip(ggufs, given))

    def read_sources() -> Iterator[tuple[_Step, list[np.ndarray], Stored | None]]:
        for step in steps:
            # mapped, not copied: the kernels read the page cache directly, and the pages go when the arrays do
            raw = [ckpt.map_raw(s) for s in step.sources]
            stored = None
            if step.tensor is not None and first is not None:
                t = first.tensors[step.tensor]
                kernels = in_kernels(step.tensor, t)
                stored = prepare(t, raw, be, threads, scan=not kernels, index_rows=kernels)
            yield step, raw, stored

    def write(job: tuple[object, str, np.ndarray, object]) -> None:
        writer, name, data, done = job
        if isinstance(writer, GGUFStreamWriter):
            writer.write_tensor(name, data)
            if progress is not None:
                progress(done, data.nbytes)     # type: ignore[arg-type]
        else:
            writer.write(name, data)            # type: ignore[attr-defined]

    with ExitStack() as stack:
        gwriters = [stack.enter_context(GGUFStreamWriter(path, plan.metadata, [t.info for t in plan.tensors]))
                    for plan, path in ggufs]
        if folders:
            from ..io.safetensors_writer import PlacedTensorWriter, atomic_folder
            from .pack_safetensors import header_metadata, plan_entries
        tmps = [stack.enter_context(atomic_folder(path)) for _, path in folders]
        fwriters: list[PlacedTensorWriter] = []
        for (plan, _), tmp in zip(folders, tmps):
            w = PlacedTensorWriter(tmp, plan_entries(plan), plan.options.max_shard_bytes, metadata=header_metadata(plan))
            stack.callback(w.abort)            # a no-op once closed
            fwriters.append(w)
        with WriteBehind(write, depth=2) as sink, closing(read_ahead(read_sources(), depth=1)) as sources:
            for step, raw, stored in sources:
                if step.tensor is not None:
                    for (plan, _), writer, done in zip(ggufs, gwriters, given):
                        t = plan.tensors[step.tensor]
                        ready = done.get(t.name)
                        sink.submit((writer, t.name, ready if ready is not None else enc.encode(t, raw, stored), t))
                for source, values in zip(step.sources, raw):
                    _feed_folders(source, values, folders, modules, fwriters, sink, be, threads, folder_progress)
                del raw, stored
        if folders:
            from .pack_safetensors import finish_int_folder
        files = [w.close() + finish_int_folder(plan, ckpt, tmp)
                 for w, (plan, _), tmp in zip(fwriters, folders, tmps)]
        for w in gwriters:
            w.commit()
        digests = [w.sha256 for w in gwriters]
    return digests, files


def _feed_folders(source: str, raw: np.ndarray, folders: Sequence[tuple[IntPlan, Path]],
                  modules: list[dict[str, ModulePlan]], writers: list[PlacedTensorWriter], sink: WriteBehind,
                  backend: Backend, threads: int, progress: FolderProgress | None) -> None:
    """Encode one source tensor for every folder that holds it; the float32 copy is made once, on first need."""
    if not folders:
        return
    from .pack_safetensors import source_arrays

    widened: list[np.ndarray] = []

    def widen(m: ModulePlan) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            if not widened:
                widened.append(backend.to_float32(raw, m.dtype, threads))
            return widened[0]
        return get

    for (plan, _), pending, writer in zip(folders, modules, writers):
        m = pending.pop(source, None)     # a source two GGUF tensors read is fed to a folder once
        if m is None:
            continue
        for name, array in source_arrays(plan, m, raw, widen(m), backend, threads):
            sink.submit((writer, name, array, None))
        if progress is not None:
            progress(m)
