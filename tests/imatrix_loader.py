"""llama.cpp's own imatrix reader (common/imatrix-loader.cpp, what llama-quantize and llama-imatrix load files
with), compiled from the pinned sdist into a small program that prints what it read as JSON.

llama-cpp-python does not export the loader (it lives in llama.cpp's `common` library), so the loader's source is
built here against the ggml library the wheel ships, with two tiny stand-ins for the parts of common.h and log.h it
uses. Needs a C++17 compiler; build once per session.

    >>> read = llama_cpp_imatrix_reader(tmp_path)                          # doctest: +SKIP
    >>> read(Path("imatrix.gguf"))["chunk_count"]                           # doctest: +SKIP
    100
"""
from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Callable

from tests.fixtures.llama_cpp_sdist import TREE, sdist

MEMBERS = ("common/imatrix-loader.cpp", "common/imatrix-loader.h", "ggml/include/ggml.h", "ggml/include/gguf.h")

# What imatrix-loader.cpp takes from llama.cpp's common.h and log.h (stand-ins with the same behaviour).
COMMON_H = """#pragma once
#include <string>
#include <string_view>
inline bool string_remove_suffix(std::string & str, std::string_view suffix) {
    if (str.size() >= suffix.size() && str.compare(str.size() - suffix.size(), suffix.size(), suffix) == 0) {
        str.resize(str.size() - suffix.size());
        return true;
    }
    return false;
}
"""
LOG_H = """#pragma once
#include <cstdio>
#define LOG_ERR(...) std::fprintf(stderr, __VA_ARGS__)
"""
MAIN_CPP = r"""#include "imatrix-loader.h"
#include <cstdio>
#include <string>
static void str(const std::string & s) {
    std::putchar('"');
    for (char c : s) { if (c == '"' || c == '\\') std::putchar('\\'); std::putchar(c); }
    std::putchar('"');
}
int main(int argc, char ** argv) {
    common_imatrix m;
    if (argc != 2 || !common_imatrix_load(argv[1], m)) { return 1; }
    std::printf("{\"is_legacy\": %s, \"has_metadata\": %s, \"chunk_count\": %d, \"chunk_size\": %d, \"datasets\": [",
                m.is_legacy ? "true" : "false", m.has_metadata ? "true" : "false", m.chunk_count, m.chunk_size);
    for (size_t i = 0; i < m.datasets.size(); ++i) { if (i) std::printf(", "); str(m.datasets[i]); }
    std::printf("], \"entries\": {");
    bool first = true;
    for (const auto & [name, e] : m.entries) {
        if (!first) std::printf(", ");
        first = false;
        str(name);
        std::printf(": {\"sums\": [");
        for (size_t i = 0; i < e.sums.size(); ++i) std::printf(i ? ", %.9g" : "%.9g", e.sums[i]);
        std::printf("], \"counts\": [");
        for (size_t i = 0; i < e.counts.size(); ++i) std::printf(i ? ", %lld" : "%lld", (long long) e.counts[i]);
        std::printf("]}");
    }
    std::printf("}}\n");
    return 0;
}
"""


def llama_cpp_imatrix_reader(work: Path) -> Callable[[Path], dict[str, Any]]:
    """Build the reader in `work`; returns a function reading one imatrix file the way llama.cpp does."""
    import llama_cpp

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("a C++ compiler (g++) is needed to build llama.cpp's imatrix loader")
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist()) as archive:
        for name in MEMBERS:
            member = archive.getmember(TREE + name)
            (src / Path(name).name).write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    (src / "common.h").write_text(COMMON_H)
    (src / "log.h").write_text(LOG_H)
    (src / "main.cpp").write_text(MAIN_CPP)
    lib = Path(llama_cpp.__file__).parent / "lib"
    exe = work / "imatrix-read"
    subprocess.run([compiler, "-std=c++17", "-O1", "-o", str(exe), str(src / "main.cpp"), str(src / "imatrix-loader.cpp"),
                    f"-I{src}", f"-L{lib}", "-lggml-base", f"-Wl,-rpath,{lib}"], check=True, capture_output=True)

    def read(path: Path) -> dict[str, Any]:
        done = subprocess.run([str(exe), str(path)], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    return read
