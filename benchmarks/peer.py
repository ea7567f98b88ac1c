"""The peer: llama.cpp's own converter and quantizer from the llama-cpp-python release we test against."""
from __future__ import annotations

import sys
from pathlib import Path

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


def llama_cpp_source() -> Path:
    """llama.cpp's converter tree from the llama-cpp-python sdist, the one the tests use (models/.cache/)."""
    from tests.fixtures.llama_cpp_sdist import converter_tree

    return converter_tree()


def convert_command(tree: Path, model: Path, out: Path, outtype: str) -> list[str]:
    return [sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outfile", str(out), "--outtype", outtype]


def convert_env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree / "gguf-py"), "NO_LOCAL_GGUF": ""}


def quantize_command(src: Path, dst: Path, ftype: int, threads: int) -> list[str]:
    return [sys.executable, "-c", QUANTIZE_SCRIPT, str(src), str(dst), str(ftype), str(threads)]
