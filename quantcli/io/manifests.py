"""The run manifest as a file: its name suffix, format number and reader.

The pipeline writes manifests (quantcli.pipeline.manifest); publish reads them to write model cards. Both sit above
io, so the file's name and the reader live here, where either can import them.

    >>> [m["_path"] for m in read_manifests(Path("out"))]      # doctest: +SKIP
    ['out/SmolLM2-135M-Instruct.release.manifest.json']
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = 1
MANIFEST_SUFFIX = ".manifest.json"


def read_manifests(folder: Path) -> list[dict[str, Any]]:
    """Every readable manifest in `folder` (unreadable ones are skipped: a manifest is a report, not an input)."""
    out = []
    for p in sorted(Path(folder).glob(f"*{MANIFEST_SUFFIX}")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
            data["_path"] = str(p)
            out.append(data)
    return out
