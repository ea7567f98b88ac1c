"""The calibrate stage in the pipeline: resolve the model, read the data, look the result up in the stage cache,
compute and write the importance matrix on a miss, and say what was done (for the CLI and the manifest).

`quantcli calibrate` runs it alone; `convert` runs it first when the recipe has a `calibrate:` section or
`--calibrate DATA` is given, writing `<model>.imatrix.gguf` beside the outputs and quantizing with it.

    done = run_calibration(CalibrationRequest(model="./SmolLM2-135M-Instruct", data="calib.txt",
                                                  output=Path("imatrix.gguf"), chunks=100))
    done.chunks, done.cached
    (100, False)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InputError
from ..io.imatrix import FORMATS
from ..recipe.schema import CalibrateSpec
from ..stages.download import Snapshot

if TYPE_CHECKING:
    from .convert import ConvertRequest

IMATRIX_FILE = "{model}.imatrix.gguf"   # where convert puts the matrix it computes, beside the outputs


@dataclass(frozen=True)
class CalibrationRequest:
    model: str
    output: Path
    data: str | None = None             # see stages.calibration_data.load_calibration_text; None: built-in text
    ctx: int | None = None              # None: 512, or the model's context when shorter
    chunks: int | None = None
    process_output: bool = False
    format: str | None = None           # "gguf" or "dat"; None: from the output's suffix
    field: str = "text"
    threads: int = 0
    cache_dir: Path | None = None       # stage cache root; None: no caching
    force: bool = False


@dataclass
class CalibrationOutcome:
    path: Path
    data_name: str
    data_sha256: str
    ctx: int
    chunks: int
    tokens: int
    process_output: bool
    sha256: str
    cached: bool
    seconds: float
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        """The manifest's `calibration` record."""
        return {"imatrix": str(self.path), "imatrix_sha256": self.sha256, "data": self.data_name,
                "data_sha256": self.data_sha256, "ctx": self.ctx, "chunks": self.chunks, "tokens": self.tokens,
                "process_output": self.process_output, "cache": "hit" if self.cached else "written",
                "tensors": self.summary}


def format_for(output: Path, fmt: str | None) -> str:
    """The file format: as asked, else from the suffix (.dat -> legacy), else GGUF."""
    if fmt is None:
        return "dat" if Path(output).suffix == ".dat" else "gguf"
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not an imatrix format.", hint=f"Use one of: {', '.join(FORMATS)}.")
    return fmt


def run_calibration(request: CalibrationRequest, *, snapshot: Snapshot | None = None,
                    warn: Callable[[str], None] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> CalibrationOutcome:
    """Calibrate `request.model` (or the already resolved `snapshot`) and write the matrix to `request.output`."""
    from ..io.imatrix import write_imatrix
    from ..stages.calibrate import CalibrateOptions, calibrate
    from ..stages.calibration_data import load_calibration_text
    from .cache import StageCache, file_sha256, fingerprint_folder
    from .convert import resolve_snapshot
    from .keys import calibrate_key

    started = time.perf_counter()
    fmt = format_for(request.output, request.format)
    if snapshot is None:
        snapshot = resolve_snapshot(request.model)
    data = load_calibration_text(request.data, field=request.field)
    options = CalibrateOptions(ctx=request.ctx, chunks=request.chunks, process_output=request.process_output,
                               threads=request.threads)
    cache = StageCache(request.cache_dir, warn=warn) if request.cache_dir is not None else None
    key = None
    if cache is not None:
        params = {"ctx": options.ctx, "chunks": options.chunks, "process_output": options.process_output,
                  "format": fmt, "dataset": data.name}
        key = calibrate_key(fingerprint_folder(snapshot.path, snapshot.files, snapshot.commit), data.sha256, params=params)
        hit = None if request.force else cache.lookup(key, request.output)
        if hit is not None and isinstance(hit.extra.get("calibration"), dict):
            rec = hit.extra["calibration"]
            return CalibrationOutcome(request.output, data.name, data.sha256, int(rec.get("ctx", 0)), int(rec.get("chunks", 0)),
                                      int(rec.get("tokens", 0)), options.process_output, hit.sha256, True,
                                      time.perf_counter() - started, rec.get("tensors", {}))
    result = calibrate(snapshot.path, data, options, progress)
    write_imatrix(request.output, result.stats, fmt)
    sha = file_sha256(request.output)
    outcome = CalibrationOutcome(request.output, data.name, data.sha256, result.stats.chunk_size, result.stats.chunk_count,
                                 result.n_tokens, options.process_output, sha, False, time.perf_counter() - started,
                                 result.summary)
    if cache is not None and key is not None:
        cache.store(key, request.output, sha256=sha, extra={"calibration": {
            "ctx": outcome.ctx, "chunks": outcome.chunks, "tokens": outcome.tokens, "tensors": outcome.summary}})
    return outcome


def imatrix_path(output: Path | None, model_name: str) -> Path:
    """Where convert writes the matrix it computes: the outputs' folder (the parent of a single .gguf)."""
    folder = Path(".") if output is None else (output.parent if output.suffix == ".gguf" and not output.is_dir() else output)
    return folder / IMATRIX_FILE.format(model=model_name)


def calibration_target(request: ConvertRequest, snapshot: Snapshot) -> Path | None:
    """Where convert's calibrate stage puts the matrix, None when the request does not calibrate."""
    if request.recipe.calibrate is None and request.calibrate_data is None:
        return None
    return imatrix_path(request.output, snapshot.name)


def calibrate_first(request: ConvertRequest, snapshot: Snapshot, warn: Callable[[str], None]) -> CalibrationOutcome | None:
    """convert's calibrate stage: when the request or its recipe asks for it and no --imatrix was given (and not
    on a dry run), compute `<model>.imatrix.gguf` beside the outputs; the caller quantizes with it."""
    if request.calibrate_data is not None and request.imatrix is not None:
        raise InputError("--calibrate and --imatrix cannot be combined.",
                         hint="Give --imatrix to quantize with an existing matrix, or --calibrate to compute one.")
    spec = request.recipe.calibrate
    if request.calibrate_data is not None:
        spec = replace(spec or CalibrateSpec(), data=request.calibrate_data)
    if spec is None or request.imatrix is not None or request.dry_run:
        return None
    cal = CalibrationRequest(model=request.model, output=imatrix_path(request.output, snapshot.name), data=spec.data,
                             ctx=spec.ctx, chunks=spec.chunks, process_output=spec.process_output, field=spec.field,
                             threads=request.threads, cache_dir=request.cache_dir, force=request.force)
    return run_calibration(cal, snapshot=snapshot, warn=warn)
