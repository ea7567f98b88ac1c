"""The peer's own virtual environment: llm-compressor, with the torch the rest of the project uses.

    python -m benchmarks.peer_venv [--models models]     # creates models/.cache/peers/llmcompressor-<version>

`make peers` runs this and `make bench` depends on it; `make test` does not (no test needs llm-compressor).
llm-compressor pins transformers (5.15 to 5.17) and compressed-tensors (0.19) to versions other than the test
venv's, so it cannot share that venv. torch is held at the project's version by a constraints file: any other
torch release resolves to the CUDA wheels (gigabytes of nvidia-* packages and triton), which this CPU cannot use.
Before installing, pip's dry-run report is read and the install is refused if it would download any nvidia-*
CUDA library or triton (nvidia-ml-py, a small pure-Python NVML binding that llm-compressor imports, is allowed).

Idempotent: a stamp file naming the pinned versions marks a finished install; a second run does nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

LLMCOMPRESSOR_VERSION = "0.14.0.1"
TORCH_VERSION = "2.13.0"
CACHE_FOLDER = "peers"
STAMP = ".complete"
# Distributions that would mean the resolver picked a CUDA torch stack; nvidia-ml-py is only an NVML binding.
REFUSED_PREFIXES = ("nvidia-", "triton")
ALLOWED = frozenset({"nvidia-ml-py"})


def venv_dir(version: str = LLMCOMPRESSOR_VERSION) -> Path:
    from tests.fixtures.paths import models_dir

    return models_dir() / ".cache" / CACHE_FOLDER / f"llmcompressor-{version}"


def python(version: str = LLMCOMPRESSOR_VERSION) -> Path:
    """The peer venv's interpreter; a clear error saying how to create it when it is not there."""
    folder = venv_dir(version)
    exe = folder / "bin" / "python"
    if not (folder / STAMP).is_file() or not exe.is_file():
        raise FileNotFoundError(f"llm-compressor {version} venv not found at {folder}; run `make peers` "
                                f"(or python -m benchmarks.peer_venv --models MODELS)")
    return exe


def refused(report: dict) -> list[str]:
    """The name==version of every CUDA-only distribution a pip --dry-run --report would install."""
    bad = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name = str(meta.get("name", "")).lower().replace("_", "-")
        if name.startswith(REFUSED_PREFIXES) and name not in ALLOWED:
            bad.append(f"{name}=={meta.get('version')}")
    return bad


def create(target: Path, version: str = LLMCOMPRESSOR_VERSION, torch: str = TORCH_VERSION) -> Path:
    """Make the venv at target with llmcompressor==version and torch==torch; return its interpreter."""
    stamp_text = f"llmcompressor=={version}\ntorch=={torch}\n"
    exe = target / "bin" / "python"
    if (target / STAMP).is_file() and (target / STAMP).read_text(encoding="utf-8") == stamp_text and exe.is_file():
        return exe
    if target.exists():
        shutil.rmtree(target)  # a half-made or differently pinned venv: start again rather than patch it
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
    pip = [str(exe), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip"], check=True)
    constraints = target / "constraints.txt"
    constraints.write_text(f"torch=={torch}\n", encoding="utf-8")
    wanted = ["-c", str(constraints), f"llmcompressor=={version}"]
    plan = target / "install-plan.json"
    subprocess.run([*pip, "install", "-q", "--dry-run", "--report", str(plan), *wanted], check=True)
    bad = refused(json.loads(plan.read_text(encoding="utf-8")))
    if bad:
        raise SystemExit(f"refusing to install llmcompressor=={version}: it would download CUDA packages "
                         f"({', '.join(bad)}); pin a torch whose CPU wheel exists here")
    subprocess.run([*pip, "install", "-q", *wanted], check=True)
    (target / STAMP).write_text(stamp_text, encoding="utf-8")
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="The models folder (its .cache/peers/ holds the venv).")
    ap.add_argument("--version", default=LLMCOMPRESSOR_VERSION)
    ap.add_argument("--torch", default=TORCH_VERSION)
    args = ap.parse_args()
    if args.models:
        os.environ["QUANTCLI_MODELS"] = str(args.models)
    print(create(venv_dir(args.version), args.version, args.torch))


if __name__ == "__main__":
    main()
