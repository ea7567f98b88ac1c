"""llama.cpp's command-line tools (llama-perplexity, llama-imatrix, llama-quantize), built once from the pinned sdist.

    python -m benchmarks.llama_tools [--models models]        # builds into models/.cache/llama-tools/bin

`make llama-tools` runs this; `make bench` and `make quality` depend on it, `make test` does not (a cold build
takes 6 to 17 minutes on 2 cores). The tools come from the same llama.cpp tree the tests' oracle is built from
(llama-cpp-python's vendored copy, commit 0c1e570), configured portably: GGML_NATIVE=OFF with AVX2/FMA/F16C on and
no AVX-512 or AMX, so the binaries run on any x86-64 with AVX2 (docs/testing notes: a native build on a Xeon
VM compiled AMX code that died with SIGILL). Release, CPU only, static libraries, only the three targets.

Set QUANTCLI_LLAMA_TOOLS to a folder holding the three binaries to use them instead of building.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOOLS = ("llama-perplexity", "llama-imatrix", "llama-quantize")
TOOLS_ENV = "QUANTCLI_LLAMA_TOOLS"
CACHE_FOLDER = "llama-tools"
STAMP = ".complete"
# Portable x86-64 + AVX2 (the Makefile's CMAKE_ARGS for llama-cpp-python say the same), CPU only, no network
# code, static so the binaries do not need the build tree's shared libraries at run time.
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON",
)
BUILD_JOBS = "2"


def cache_dir() -> Path:
    from tests.fixtures.paths import models_dir

    return models_dir() / ".cache" / CACHE_FOLDER


def tools_dir() -> Path:
    """The folder holding the three binaries: $QUANTCLI_LLAMA_TOOLS, else the cache (which must be built)."""
    override = os.environ.get(TOOLS_ENV)
    folder = Path(override) if override else cache_dir() / "bin"
    missing = [t for t in TOOLS if not (folder / t).is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found in {folder}; run `make llama-tools` "
                                f"(or set {TOOLS_ENV} to a folder with llama.cpp's binaries)")
    return folder


def tool(name: str) -> str:
    return str(tools_dir() / name)


def _cmake() -> str:
    """cmake from PATH, else the one pip installs next to this interpreter (the Makefile installs it if missing)."""
    found = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("cmake not found; `pip install cmake` (make llama-tools does this)")
    return found


def build(target: Path, log: Path | None = None) -> Path:
    """Extract llama.cpp from the sdist, configure and build the three tools, copy them to target/bin."""
    from tests.fixtures.llama_cpp_sdist import SDIST_ROOT, sdist

    if (target / STAMP).is_file() and all((target / "bin" / t).is_file() for t in TOOLS):
        return target / "bin"
    target.mkdir(parents=True, exist_ok=True)
    src = target / "src"
    if not (src / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory(dir=target) as tmp, tarfile.open(sdist()) as archive:
            prefix = f"{SDIST_ROOT}/vendor/llama.cpp/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            archive.extractall(tmp, members=members, filter="data")
            shutil.rmtree(src, ignore_errors=True)
            os.replace(Path(tmp) / prefix, src)
    build_dir = target / "build"
    ninja = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    out = open(log, "w") if log else None
    try:
        subprocess.run([_cmake(), "-S", str(src), "-B", str(build_dir), *generator, *CMAKE_OPTIONS],
                       check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
        subprocess.run([_cmake(), "--build", str(build_dir), "-j", BUILD_JOBS, "--target", *TOOLS],
                       check=True, stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()
    bin_dir = target / "bin"
    bin_dir.mkdir(exist_ok=True)
    for t in TOOLS:
        # llama.cpp sets its own runtime output folder (build/bin); copy so the cache's layout does not depend on it
        shutil.copy2(build_dir / "bin" / t, bin_dir / t)
    (target / STAMP).write_text("ok\n", encoding="utf-8")
    return bin_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="The models folder (its .cache/ holds the build).")
    ap.add_argument("--log", type=Path, help="Send cmake's output to this file.")
    args = ap.parse_args()
    if args.models:
        os.environ["QUANTCLI_MODELS"] = str(args.models)
    print(build(cache_dir(), args.log))


if __name__ == "__main__":
    main()
