"""Benchmark quantcli against llama.cpp in one run and write docs/benchmarks.md.

    python -m benchmarks.run --models models --out docs/benchmarks.md [--repeats 3] [--threads 2]

Peer and quantcli run as separate processes on the same input, threads and machine, one after the other, so the
ratios are what matters (these machines are noisy). Peak RSS is each process's own maximum resident set.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from .doc_section import markers
from .measure import Measurement, measure
from .peer import convert_command, convert_env, llama_cpp_source, quantize_command
from .scaling import SECTION as SCALING_SECTION
from .scaling import scaling_report, scaling_rows

QUANT_TYPES = ("Q8_0", "Q4_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS")
CONVERT_TYPES = {"F16": "f16", "Q8_0": "q8_0"}


#: Instruction sets that change which kernels numpy's BLAS, llama.cpp and the loaders pick, in the order shown.
ISA_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"))


def machine() -> str:
    """The CPU (and the instruction sets that decide the kernels), cores, OS and Python of this machine."""
    cpu, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):          # the first processor's: its model name came just before
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = " ".join(name for flag, name in ISA_FLAGS if flag in flags)
    cpu = f"{cpu} ({isa})" if isa else cpu
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


COMPARE_SCRIPT = """
import sys
from benchmarks.run import compare_tensors
print(compare_tensors(sys.argv[1], sys.argv[2]))
"""


def same_tensors(a: Path, b: Path) -> str:
    """Compare in a child process: Linux keeps a process's peak RSS across exec, so a parent that read two model
    files would hand its own peak to every command measured after it."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", COMPARE_SCRIPT, str(a), str(b)], capture_output=True, text=True, check=True)
    return res.stdout.strip()


def compare_tensors(a: str, b: str) -> str:
    """'identical' when every tensor has the same name, type and bytes in both files; else what differs."""
    from tests.gguf_files import stored_tensors

    ta, tb = stored_tensors(Path(a)), stored_tensors(Path(b))
    if set(ta) != set(tb):
        return f"different tensor sets ({len(ta)} vs {len(tb)})"
    diff = [n for n in ta if (ta[n].qtype, ta[n].data) != (tb[n].qtype, tb[n].data)]
    return "identical" if not diff else f"{len(diff)} of {len(ta)} tensors differ (first {diff[0]})"


def quantcli(model: Path, out: Path, qtype: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "quantcli.cli.app", "convert", str(model), "--type", qtype, "-o", str(out),
            "--verify", "none", "--threads", str(threads), "--force"]   # --force: a repeat is a conversion, not a cache hit


def row(label: str, peer: Measurement, ours: Measurement, check: str = "", peer_before: Measurement | None = None) -> dict:
    """One table row. With peer_before (llama.cpp's F16 conversion, which must run before llama-quantize), the
    row also gives the end-to-end time ratio: quantcli's one command against both of llama.cpp's steps. RSS is
    always set against `peer` alone (for a quantized type, llama-quantize's own peak: the stricter comparison)."""
    before_s = peer_before.seconds if peer_before else 0.0
    return {"step": label, "llama.cpp s": round(peer.seconds, 3), "quantcli s": round(ours.seconds, 3),
            "time ratio": round(ours.seconds / peer.seconds, 3),
            "end-to-end ratio": round(ours.seconds / (peer.seconds + before_s), 3),
            "llama.cpp RSS MB": round(peer.peak_rss_mb), "quantcli RSS MB": round(ours.peak_rss_mb),
            "RSS ratio": round(ours.peak_rss_mb / peer.peak_rss_mb, 3),
            "bytes": check}


def run(models: Path, repeats: int, threads: int, work: Path, quick: bool) -> list[dict]:
    from quantcli.quant.mixes import MIXES

    tree = llama_cpp_source()
    env_peer = convert_env(tree)
    env_ours = {"QUANTCLI_NO_PROGRESS": "1"}
    rows: list[dict] = []
    convert_f16: dict[str, Measurement] = {}
    bench_models = [models / "bench-llama-168m"] + ([] if quick else [models / "SmolLM2-135M-Instruct"])
    for model in bench_models:
        for qtype, outtype in CONVERT_TYPES.items():
            peer_out, our_out = work / f"peer-{model.name}-{qtype}.gguf", work / f"ours-{model.name}-{qtype}.gguf"
            peer = measure("peer", convert_command(tree, model, peer_out, outtype), repeats, env_peer)
            ours = measure("ours", quantcli(model, our_out, qtype, threads), repeats, env_ours)
            if qtype == "F16":
                convert_f16[model.name] = peer
            rows.append(row(f"{model.name}: HF -> {qtype} (convert_hf_to_gguf.py vs quantcli convert)", peer, ours,
                            same_tensors(peer_out, our_out) if qtype == "F16" else ""))
            print(json.dumps(rows[-1]), flush=True)
    model = bench_models[0]
    f16 = work / f"peer-{model.name}-F16.gguf"
    for qtype in QUANT_TYPES[:3] if quick else QUANT_TYPES:
        peer_out, our_out = work / f"peer-q-{qtype}.gguf", work / f"ours-q-{qtype}.gguf"
        peer = measure("peer", quantize_command(f16, peer_out, int(MIXES[qtype].ftype), threads), repeats)
        ours = measure("ours", quantcli(model, our_out, qtype, threads), repeats, env_ours)
        rows.append(row(f"{model.name}: {qtype} (llama-quantize from the F16 GGUF vs quantcli convert from HF)",
                        peer, ours, same_tensors(peer_out, our_out), peer_before=convert_f16[model.name]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_scaling(models: Path, repeats: int, work: Path) -> list[dict]:
    """The scaling table on the 168M and the 1.1B bench models. llama-quantize's input is quantcli's F16 file:
    the table above shows it identical to convert_hf_to_gguf.py's, which takes a minute on the 1.1B model."""
    env_ours = {"QUANTCLI_NO_PROGRESS": "1"}
    chosen = [m for m in (models / "bench-llama-168m", models / "bench-llama-1b") if m.is_dir()]
    f16 = {}
    for model in chosen:
        f16[model.name] = work / f"f16-{model.name}.gguf"
        measure("f16", quantcli(model, f16[model.name], "F16", 2), 1, env_ours)
    return scaling_rows(chosen, f16, work, repeats, quantcli, env_ours)


def write_report(rows: list[dict], out: Path, repeats: int, threads: int, scaling: list[dict] | None = None) -> None:
    from quantcli import __version__

    cols = list(rows[0])
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/run.py); every figure below comes from one run in which llama.cpp and",
        "quantcli ran one after the other on the same machine, input (page cache warm) and thread count.",
        "Times are medians; RSS is the process's peak resident set. Ratios are quantcli / llama.cpp: below 1 is",
        "better for quantcli. The 'bytes' column compares every tensor's type and bytes between the two outputs.",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- threads: {threads}; repeats: {repeats} (median)",
        f"- quantcli {__version__} (backend: C kernels); peer: llama.cpp vendored by llama-cpp-python 0.3.36",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    quant = [r for r in rows if "llama-quantize" in r["step"]]
    if quant:
        def span(key: str) -> str:
            values = sorted(r[key] for r in quant)
            return f"{values[0]:.2f}–{values[-1]:.2f}×"

        lines += ["", "'time ratio' sets quantcli's whole conversion from the HF folder against llama-quantize alone;",
                  "'end-to-end ratio' against what a llama.cpp user runs (convert_hf_to_gguf.py to F16, then",
                  "llama-quantize). 'RSS ratio' is against llama-quantize's own peak, not the converter's larger one.",
                  "",
                  f"Over the {len(quant)} quantized types: time ratio {span('time ratio')}, end-to-end ratio "
                  f"{span('end-to-end ratio')}, RSS ratio {span('RSS ratio')}; identical tensor bytes in "
                  f"{sum(r['bytes'] == 'identical' for r in quant)} of {len(quant)}."]
    if scaling:
        begin, end = markers(SCALING_SECTION)
        lines += ["", begin, *scaling_report(scaling), end]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="One model and three types (a smoke run).")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="quantcli-bench-"))
    try:
        rows = run(args.models, args.repeats, args.threads, work, args.quick)
        scaling = [] if args.quick else run_scaling(args.models, args.repeats, work)
        write_report(rows, args.out, args.repeats, args.threads, scaling)
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
