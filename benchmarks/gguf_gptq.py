"""GPTQ on GGUF K-quants against llama.cpp's own imatrix quantization, same mix, same calibration text.

    python -m benchmarks.gguf_gptq --models models --llama-bin /path/to/llama.cpp/bin [--calib-chunks 16]
        [--eval-chunks 4] [--types Q4_K_M Q3_K_M] [--model SmolLM2-135M-Instruct] [--work DIR]
        [--gptq-types Q2_K,Q3_K,Q4_K,Q4_0,Q4_1 ...] [--gptq-damp 0.1 ...] [--exact-inputs]

For each type: plain (quantcli, byte-identical to llama-quantize without an imatrix), llama.cpp's own file
(llama-imatrix on the calibration text, then llama-quantize --imatrix), and quantcli's --method gptq on the
same calibration chunks. Each file is scored against the F32 source on the shipped evaluation text (a
different text), by quantcli's engine and, when --llama-bin is given, by llama-perplexity --kl-divergence.
Prints a Markdown table; the GPTQ pass's wall time is reported beside it. Each --gptq-types list adds a row made
with GPTQ on those block types only (the experiment behind KGPTQOptions.types' default), each --gptq-damp value a
row with that dampening, and --exact-inputs a row with Hessians from the unrounded inputs (the CLI has none of
these options).
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from gguf import GGMLQuantizationType

from quantcli.quant.algorithms.gptq_kquant import KGPTQOptions

from .run import machine

MODEL = "SmolLM2-135M-Instruct"
CTX = 512


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def quantcli_convert(source: Path, mix: str, out: Path, *, method: str | None = None,
                     calib_chunks: int | None = None, threads: int = 2,
                     gptq_options: KGPTQOptions | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all its threads) of one conversion; `gptq_options`
    replaces the GPTQ pass's defaults (the CLI has no such option)."""
    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
    from quantcli.recipe.schema import CalibrateSpec

    recipe = recipe_from_type(mix)
    if method is not None:
        recipe = replace(recipe, calibrate=CalibrateSpec(data="builtin:calibration", ctx=CTX, chunks=calib_chunks))
    t0, c0 = time.perf_counter(), time.process_time()
    convert(ConvertRequest(model=str(source), recipe=recipe, output=out, threads=threads, verify="none",
                           method=method, gptq=gptq_options))
    return time.perf_counter() - t0, time.process_time() - c0


def write_text(name: str, path: Path) -> Path:
    from quantcli.stages.calibration_data import load_calibration_text

    path.write_text(load_calibration_text(f"builtin:{name}").text, encoding="utf-8")
    return path


def llama_kld(bin_dir: Path, base: Path, model: Path, text: Path, chunks: int, threads: int) -> float:
    cmd = [str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(text), "-c", str(CTX), "--chunks",
           str(chunks), "-t", str(threads), "--kl-divergence-base", str(base), "--kl-divergence"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    match = re.search(r"Mean\s+KLD:\s+([0-9.eE+-]+)", done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"no KLD in llama-perplexity's output:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return float(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--model", default=MODEL, help="folder name under --models")
    ap.add_argument("--llama-bin", type=Path)
    ap.add_argument("--work", type=Path, default=None,
                    help="where files are kept between runs (reused if present; about 1.5 GB for a 135M model "
                         "with 32 evaluation chunks); default /tmp/gguf-gptq-bench/MODEL")
    ap.add_argument("--types", nargs="+", default=["Q4_K_M", "Q3_K_M"])
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--eval-chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gptq-types", action="append", default=[],
                    help="comma-separated block types; adds a GPTQ row encoding only those (repeatable)")
    ap.add_argument("--exact-inputs", action="store_true",
                    help="adds a GPTQ row whose Hessians come from the exact inputs, not llama.cpp's rounded ones")
    ap.add_argument("--gptq-damp", action="append", type=float, default=[],
                    help="adds a GPTQ row with this dampening (fraction of the mean diagonal; repeatable)")
    args = ap.parse_args()

    from quantcli.engine import Engine
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.perplexity import chunk_tokens
    from quantcli.stages.verify_model import gguf_metadata, score_outputs

    source = args.models / args.model
    work = args.work or Path("/tmp/gguf-gptq-bench") / args.model
    work.mkdir(parents=True, exist_ok=True)
    calib, evalt = write_text("calibration", work / "calib.txt"), write_text("eval", work / "eval.txt")
    f32 = work / "f32.gguf"
    if not f32.exists():
        quantcli_convert(source, "F32", f32)
    llama_imatrix = work / "llama-imatrix.gguf"
    if args.llama_bin and not llama_imatrix.exists():
        log("llama-imatrix")
        subprocess.run([str(args.llama_bin / "llama-imatrix"), "-m", str(f32), "-f", str(calib), "-c", str(CTX),
                        "--chunks", str(args.calib_chunks), "-t", str(args.threads), "-o", str(llama_imatrix)],
                       capture_output=True, check=True)
    special = SpecialIds.from_metadata(gguf_metadata(f32))
    chunks = chunk_tokens(text_tokens(source, evalt.read_text(encoding="utf-8"), special), CTX, args.eval_chunks)
    base = work / "base.kld"
    if args.llama_bin and not base.exists():
        log("llama-perplexity base logits")
        subprocess.run([str(args.llama_bin / "llama-perplexity"), "-m", str(f32), "-f", str(evalt), "-c", str(CTX),
                        "--chunks", str(args.eval_chunks), "-t", str(args.threads), "--kl-divergence-base",
                        str(base)], capture_output=True, check=True)
    print(f"Model: {args.model}. Machine: {machine()}; {dt.date.today()}; calibration: builtin:calibration, "
          f"{args.calib_chunks} chunks of {CTX}; evaluation: builtin:eval, {args.eval_chunks} chunks of {CTX}; "
          f"threads {args.threads}.\n")
    print("| type | file | bytes | KLD mean (engine) | KLD p99 (engine) | PPL (engine) | KLD mean (llama-perplexity) "
          "| convert time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for mix in args.types:   # each type is scored as soon as its files exist, so a long run reports as it goes
        rows: list[tuple[str, Path, tuple[float, float] | None]] = []
        plain = work / f"{mix}-plain.gguf"
        if not plain.exists():
            log(f"{mix} plain")
            quantcli_convert(source, mix, plain)
        rows.append(("plain (no imatrix)", plain, None))
        if args.llama_bin:
            own = work / f"{mix}-llama-imatrix.gguf"
            if not own.exists():
                log(f"{mix} llama-quantize --imatrix")
                subprocess.run([str(args.llama_bin / "llama-quantize"), "--imatrix", str(llama_imatrix), str(f32),
                                str(own), mix, str(args.threads)], capture_output=True, check=True)
            rows.append(("llama.cpp imatrix (llama-imatrix + llama-quantize)", own, None))
        gptq = work / f"{mix}-gptq.gguf"
        log(f"{mix} gptq")
        seconds = quantcli_convert(source, mix, gptq, method="gptq", calib_chunks=args.calib_chunks,
                                   threads=args.threads)
        rows.append(("quantcli --method gptq", gptq, seconds))
        variants = [(f"on {listed} only", f"-{listed.replace(',', '-')}",
                     KGPTQOptions(types=tuple(GGMLQuantizationType[t] for t in listed.split(","))))
                    for listed in args.gptq_types]
        variants += [(f"damp {damp:g}", f"-damp{damp:g}", KGPTQOptions(damp=damp)) for damp in args.gptq_damp]
        if args.exact_inputs:
            variants.append(("on exact inputs", "-exact", KGPTQOptions(runtime_inputs=False)))
        for label, suffix, options in variants:
            variant = work / f"{mix}-gptq{suffix}.gguf"
            log(f"{mix} gptq {label}")
            seconds = quantcli_convert(source, mix, variant, method="gptq", calib_chunks=args.calib_chunks,
                                       threads=args.threads, gptq_options=options)
            rows.append((f"quantcli gptq {label}", variant, seconds))
        log(f"{mix} scoring")
        src = Engine.from_hf(source, threads=args.threads)
        outs = [Engine.from_gguf(path, source=source, threads=args.threads) for _, path, _ in rows]
        results = score_outputs(src, outs, chunks, special.bos)
        for (label, path, secs), r in zip(rows, results):
            lk = f"{llama_kld(args.llama_bin, base, path, evalt, args.eval_chunks, args.threads):.5f}" \
                if args.llama_bin else "-"
            t = f"{secs[0]:.0f} s wall, {secs[1]:.0f} s CPU (whole convert)" if secs is not None else "-"
            print(f"| {mix} | {label} | {path.stat().st_size:,} | {r.kld_mean:.5f} | {r.kld_p99:.4f} | {r.ppl:.3f} "
                  f"| {lk} | {t} |", flush=True)
    # the F32 file and llama-perplexity's base logits (0.8 GB for 32 chunks) dominate; kept for the next run
    kept = sum(f.stat().st_size for f in work.iterdir() if f.is_file())
    log(f"{kept / 1e9:.1f} GB kept in {work} for later runs; delete the folder when done")

if __name__ == "__main__":
    main()
