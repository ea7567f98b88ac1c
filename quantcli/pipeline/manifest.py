"""The run manifest: a JSON file beside the outputs saying what was made, from what, by what, and how well.

It records the inputs (hub id, requested revision, resolved commit and per-file blob ids, or the local folder
and its files), the recipe in canonical form, tool and library versions, the backend, and per output file its
sha256, size, type, whether it came from the cache, and a summary of its verify figures (docs/pipeline.md
lists every field). `quantcli publish` reads it to write the model card; a CI job can archive it as the
provenance of a release.

    >>> path = manifest_path(Path("out"), model="SmolLM2-135M-Instruct", recipe="release", single_file=None)
    >>> path.name
    'SmolLM2-135M-Instruct.release.manifest.json'
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..io.manifests import MANIFEST_FORMAT, MANIFEST_SUFFIX
from .cache import atomic_write

VERSIONED_PACKAGES = ("gguf", "numpy", "safetensors", "huggingface_hub", "typer", "rich")


def manifest_path(folder: Path, *, model: str, recipe: str, single_file: Path | None) -> Path:
    """`x.gguf` -> `x.manifest.json` for a one-file output; `<folder>/<model>.<recipe>.manifest.json` otherwise."""
    if single_file is not None:
        return single_file.with_name(single_file.stem + MANIFEST_SUFFIX)
    return Path(folder) / f"{model}.{recipe}{MANIFEST_SUFFIX}"


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    from .. import __version__

    out: dict[str, str | None] = {"quantcli": __version__, "python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def verify_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the manifest keeps of a verify report: ok, counts, worst SNR and RMSE, the problems and the five
    worst tensors (stages.verify.summarize). The per-tensor table is not kept: it was 98% of the manifest
    (45 KB per output for SmolLM2, 372 KB for a four-output recipe), and `quantcli verify FILE --source MODEL
    --json` recomputes it."""
    if report is None:
        return None
    from ..stages.verify import summarize

    return summarize(report)


def build_manifest(*, command: list[str] | None, source: dict[str, Any], recipe: dict[str, Any], backend: str,
                   threads: int, outputs: list[dict[str, Any]], seconds: float,
                   imatrix: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command if command is not None else list(sys.argv),
        "source": source,
        "imatrix": imatrix,
        "recipe": recipe,
        "versions": versions(),
        "backend": backend,
        "threads": threads,
        "outputs": outputs,
        "seconds": round(seconds, 3),
    }


def json_safe(value: Any) -> Any:
    """JSON has no infinities: a perfect SNR (lossless tensor) is written as the string "inf"."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    try:
        atomic_write(Path(path), (json.dumps(json_safe(manifest), indent=2) + "\n").encode("utf-8"))
    except OSError as exc:  # disk full, quota, read-only folder: the outputs are complete, only the report is not
        raise OutputError(f"writing the run manifest {path} failed: {exc.strerror}.",
                          hint="The GGUF files were written and cached; free disk space and run the same command "
                               "again to write the manifest.") from exc
    return Path(path)
