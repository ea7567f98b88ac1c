"""Cache keys of the pipeline's stages: what each stage's output depends on, resolved and hashable.

Bump a stage's version in STAGE_VERSIONS whenever its code would write different bytes (or different verify
figures) for the same inputs and parameters; every older cache entry then misses. The quantcli version is in
the parameters too, so a release never reuses another release's outputs even if a bump was forgotten.

The backend is a parameter although the bytes do not depend on it (the C kernels and the NumPy reference
agree bit for bit): a run that switches QUANTCLI_BACKEND is usually a run checking exactly that, and a cache
hit would hide the answer. The thread count is not: a batch run with --jobs 2 (one thread per job) and a
re-run of one job (all cores) must share their work.

    key = quantize_key(plan, source_fingerprint, backend="c")
    key.stage, len(key.digest)
    # -> ('quantize', 64)
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..plan.gguf import Plan
from .cache import StageKey, file_sha256, hash_parts

STAGE_VERSIONS: dict[str, int] = {
    "quantize": 1,      # plan -> GGUF bytes
    "verify": 1,        # GGUF (+ source) -> report
    "calibrate": 1,     # source + calibration text -> imatrix file
    "pack_folder": 1,   # int plan (+ calibration tokens and method) -> safetensors folder
    "verify_model": 1,  # output + source + evaluation text -> PPL/KLD figures (thresholds are applied after)
}


def _kv_part(kv: Any) -> list[Any]:
    value = kv.value
    if isinstance(value, (bytes, bytearray)):
        value = value.hex()
    elif not isinstance(value, (str, int, float, bool, list, tuple, type(None))):
        value = repr(value)
    return [kv.key, int(kv.vtype), None if kv.subtype is None else int(kv.subtype), value]


def _transform_part(transform: Any) -> list[Any]:
    fields = asdict(transform) if is_dataclass(transform) else {}
    return [type(transform).__name__, {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}]


def plan_digest(plan: Plan) -> str:
    """sha256 of everything in a plan that reaches the file: metadata, and per tensor sources, transform, type."""
    parts: list[Any] = [["arch", plan.arch, "mix", plan.mix]]
    parts.extend(_kv_part(kv) for kv in plan.metadata)
    for t in plan.tensors:
        parts.append([t.name, list(t.spec.sources), list(t.spec.shape), _transform_part(t.spec.transform),
                      t.qtype.name, list(t.source_dtypes)])
    return hash_parts(parts)


def imatrix_identity(path: Path | None) -> str | None:
    return None if path is None else file_sha256(path)


def quantize_key(plan: Plan, source: dict[str, Any], *, backend: str, imatrix_sha256: str | None = None) -> StageKey:
    """The quantize stage's key for one output file."""
    params = {"quantcli": __version__, "plan": plan_digest(plan), "backend": backend, "imatrix": imatrix_sha256}
    return StageKey("quantize", STAGE_VERSIONS["quantize"], params, {"source": source})


def verify_key(output_sha256: str, *, level: str, min_snr_db: float | None, max_rmse: float | None,
               source: dict[str, Any] | None) -> StageKey:
    """The verify stage's key: the file's bytes, the level and thresholds, and (level full) the source."""
    params = {"quantcli": __version__, "level": level, "min_snr_db": min_snr_db, "max_rmse": max_rmse}
    return StageKey("verify", STAGE_VERSIONS["verify"], params, {"file": output_sha256, "source": source})


def calibrate_key(source: dict[str, Any], data_sha256: str, *, params: dict[str, Any]) -> StageKey:
    """The calibrate stage's key: the source's identity, the text's sha256, and every setting that reaches the
    file (ctx, chunks, process_output, format, the dataset name written into it). The engine is float32 NumPy on
    any backend, so the backend is not part of it."""
    return StageKey("calibrate", STAGE_VERSIONS["calibrate"], {"quantcli": __version__, **params},
                    {"source": source, "data": data_sha256})


def int_plan_digest(plan: Any) -> str:
    """sha256 of what reaches a folder output from its plan: the options (scheme, method, format, ignore, shard
    size, double quant), the config's ignore list and every module (source name, shape, dtype, quantized)."""
    options = plan.options
    parts: list[Any] = [["options", repr(options.scheme), options.method, list(options.ignore), options.format,
                         options.double_quant, options.max_shard_bytes], ["ignore", list(plan.ignore)]]
    parts.extend([m.source, list(m.shape), m.dtype, bool(m.quantized)] for m in plan.modules)
    return hash_parts(parts)


def pack_folder_key(plan: Any, source: dict[str, Any], *, backend: str, method_options: dict[str, Any],
                    calibration: dict[str, Any] | None) -> StageKey:
    """The pack stage's key for one folder output: its plan, the method's options, and for a calibrated method
    the calibration text's sha256 and the token chunks it was cut into (ctx, chunks)."""
    params = {"quantcli": __version__, "plan": int_plan_digest(plan), "backend": backend,
              "method_options": {k: method_options[k] for k in sorted(method_options)}, "calibration": calibration}
    return StageKey("pack_folder", STAGE_VERSIONS["pack_folder"], params, {"source": source})


def verify_model_key(output_sha256: str, *, source: dict[str, Any], data_sha256: str, ctx: int,
                     chunks: int | None) -> StageKey:
    """The model-level verify's key: the output's bytes, the source, the evaluation text and its chunking. The
    thresholds are not in it: the figures do not depend on them, and they are applied to cached figures too."""
    params = {"quantcli": __version__, "ctx": ctx, "chunks": chunks}
    return StageKey("verify_model", STAGE_VERSIONS["verify_model"], params,
                    {"file": output_sha256, "source": source, "data": data_sha256})
