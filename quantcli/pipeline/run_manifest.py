"""The record stage of a run: the run manifest (pipeline/manifest.py) with every output still on disk, GGUF files
and folders, their sha256s (per file of a folder, and one over them), the stages that made them with their
timings and cache keys, and their verify figures. docs/pipeline.md lists the fields.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .convert import ConvertResult
    from .outputs import OutputLayout
    from .runner import Run


def write_run_manifest(run: Run, result: ConvertResult, layout: OutputLayout, keys: list[Any], folder_keys: list[Any],
                    fingerprint: dict[str, Any], im_sha: str | None, *, skip: set[int]) -> Path:
    """The manifest at the layout's manifest path: every output still on disk (not those in `skip`), GGUF files
    and folders, with their sha256s, the stages that made them and their figures."""
    from .manifest import build_manifest, verify_summary, write_manifest

    request = run.request
    snap = result.snapshot
    path = layout.manifest
    by_output: dict[str, list[dict[str, Any]]] = {}
    for s in run.stages:
        if s.output is not None:
            by_output.setdefault(s.output, []).append(s.to_json())
    outputs = []
    for i, (entry, key) in enumerate(zip(result.outputs, keys)):
        if i in skip:
            continue
        outputs.append({"file": os.path.relpath(entry.path, path.parent), "kind": "gguf", "type": entry.type,
                        "bytes": entry.path.stat().st_size, "sha256": entry.sha256,
                        "tensors": len(entry.plan.tensors), "parameters": entry.plan.n_params,
                        "cache": "hit" if entry.cached else "written", "key": key.digest,
                        "verify_level": request.verify, "verify_summary": verify_summary(entry.verify),
                        "model_verify": entry.model_verify, "stages": by_output.get(str(entry.path), [])})
    for f, key in zip(result.folders, folder_keys):
        report = f.report.to_json() if f.report is not None else None
        if report is not None:
            report.pop("weights", None)     # the per-weight table: `quantcli verify FOLDER --source --json`
        outputs.append({"file": os.path.relpath(f.path, path.parent), "kind": "folder", "format": f.format,
                        "type": f.kind, "method": f.method, "options": dict(f.method_options or {}),
                        "bytes": sum((f.path / n).stat().st_size for n in f.files), "sha256": f.sha256,
                        "files": f.files, "tensors": len(f.plan.modules), "parameters": f.plan.n_params,
                        "quantized": sum(m.quantized for m in f.plan.modules),
                        "cache": "hit" if f.cached else "written", "key": key.digest, "calibration": f.calibration,
                        "verify_level": request.verify, "verify_summary": report, "model_verify": f.model_verify,
                        "stages": by_output.get(str(f.path), [])})
    source = {"model": request.model, "path": str(Path(result.source).resolve()),
              "repo_id": snap.repo_id if snap else None, "revision": snap.revision if snap else None,
              "commit": snap.commit if snap else None, "fingerprint": fingerprint}
    from ..quant.backend import get_backend

    manifest = build_manifest(command=None, source=source, recipe=request.recipe.canonical(),
                              backend=get_backend().name, threads=run.threads, outputs=outputs,
                              seconds=result.seconds,
                              imatrix={"path": str(request.imatrix), "sha256": im_sha} if request.imatrix else None)
    if result.calibration is not None:
        manifest["calibration"] = result.calibration.manifest()
    if result.gptq:
        manifest["gptq"] = result.gptq
    manifest["stages"] = [s.to_json() for s in run.stages if s.output is None or s.stage == "calibrate"]
    return write_manifest(path, manifest)
