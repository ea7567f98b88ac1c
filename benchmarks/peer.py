"""The peer: llama.cpp's own converter and quantizer from the llama-cpp-python release we test against."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"

# Run in a subprocess so that its peak RSS is measured on its own.
QUANTIZE_SCRIPT = """
import sys, llama_cpp
src, dst, ftype, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = llama_cpp.llama_model_quantize_default_params()
p.nthread = threads
p.ftype = ftype
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
sys.exit(rc)
"""


def llama_cpp_source(cache: Path) -> Path:
    """The vendored llama.cpp tree of the llama-cpp-python sdist (downloaded once into `cache`)."""
    root = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    tree = root / "vendor" / "llama.cpp"
    if (tree / "convert_hf_to_gguf.py").exists():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        # --no-binary only for this package: its build dependencies still come as wheels.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(cache)], check=True)
    with tarfile.open(sdist) as tar:
        tar.extractall(cache, filter="data")
    return tree


def convert_command(tree: Path, model: Path, out: Path, outtype: str) -> list[str]:
    return [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out), "--outtype", outtype]


def convert_env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree / "gguf-py"), "NO_LOCAL_GGUF": ""}


def quantize_command(src: Path, dst: Path, ftype: int, threads: int) -> list[str]:
    return [sys.executable, "-c", QUANTIZE_SCRIPT, str(src), str(dst), str(ftype), str(threads)]
