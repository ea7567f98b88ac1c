"""Measure how good quantcli's quantized SmolLM2 files are and write the tables of docs/quality.md.

    python -m benchmarks.quality --models models --out docs/quality.md [--chunks 20] [--calib-chunks 32]

For each type, without and with an importance matrix (quantcli's calibrate stage on the shipped calibration
text), the file is scored against the source checkpoint on the shipped evaluation text (a different text) at
ctx 512, llama-perplexity's way (quantcli.stages.verify_model). Then llama.cpp's perplexity on a few of the same
files is set beside ours (ctx 128, 4 chunks, as tests/interop/test_perplexity_agreement.py does).

Only the part of --out between the two marker lines is rewritten; the prose around it stays.

    python -m benchmarks.quality --models models --out docs/quality.md --int-folders [--chunks 4]

scores the integer folders instead (compressed-tensors W4A16 / W4A16_ASYM at group 64 with RTN min-max, RTN-MSE
and HQQ, bitsandbytes NF4, W8A16, W8A8) beside the GGUF Q4_K_M and Q8_0 files of the same model, and rewrites the
int-folders section. Each folder is written by `quantcli convert` (the CLI, in a subprocess) and scored with the
function `quantcli verify FOLDER --source MODEL --data builtin:eval --json` uses (stages.verify_model), the source
run once for all of them; the figures are the ones verify prints for each folder alone.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .doc_section import replace_between
from .run import machine

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS")
AGREEMENT_TYPES = ("F32", "F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")
MODEL = "SmolLM2-135M-Instruct"
BEGIN, END = "<!-- quality:begin (benchmarks/quality.py) -->", "<!-- quality:end -->"
INT_BEGIN, INT_END = "<!-- int-folders:begin (benchmarks/quality.py --int-folders) -->", "<!-- int-folders:end -->"
# label -> quantcli convert arguments of an integer folder. Group 64: 128 does not divide SmolLM2's 576-wide rows.
INT_FOLDERS: dict[str, tuple[str, ...]] = {
    "W4A16 g64, RTN min-max": ("--format", "compressed-tensors", "--scheme", "W4A16", "--group-size", "64"),
    "W4A16 g64, RTN-MSE": ("--format", "compressed-tensors", "--scheme", "W4A16", "--group-size", "64",
                           "--method", "mse"),
    "W4A16_ASYM g64, RTN min-max": ("--format", "compressed-tensors", "--scheme", "W4A16_ASYM", "--group-size", "64"),
    "W4A16_ASYM g64, RTN-MSE": ("--format", "compressed-tensors", "--scheme", "W4A16_ASYM", "--group-size", "64",
                                "--method", "mse"),
    "W4A16_ASYM g64, HQQ": ("--format", "compressed-tensors", "--scheme", "W4A16_ASYM", "--group-size", "64",
                            "--method", "hqq"),
    "bnb-nf4 (blocks of 64, double quant)": ("--format", "bnb-nf4"),
    "W8A16 g64, RTN min-max": ("--format", "compressed-tensors", "--scheme", "W8A16", "--group-size", "64"),
    "W8A8 (per channel, int8 per-token activations)": ("--format", "compressed-tensors", "--scheme", "W8A8"),
}
INT_GGUF = ("Q4_K_M", "Q8_0")
LINEAR_GGUF = re.compile(r"blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight")


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def convert(source: Path, qtype: str, out: Path, imatrix: Path | None) -> Path:
    from quantcli.pipeline.convert import ConvertRequest, convert as run_convert, recipe_from_type

    if out.is_file():   # kept by an earlier run with --work
        return out
    run_convert(ConvertRequest(model=str(source), recipe=recipe_from_type(qtype), output=out, threads=2,
                               verify="none", imatrix=imatrix))
    return out


def make_imatrix(source: Path, dest: Path, ctx: int, chunks: int) -> Path:
    from quantcli.io.imatrix import write_imatrix
    from quantcli.stages.calibrate import CalibrateOptions, calibrate
    from quantcli.stages.calibration_data import builtin_text

    result = calibrate(source, builtin_text("calibration"), CalibrateOptions(ctx=ctx, chunks=chunks, threads=2))
    write_imatrix(dest, result.stats)
    return dest


def quality_rows(source: Path, files: dict[str, Path], ctx: int, chunks: int) -> dict[str, object]:
    """Every file scored against the source on the eval text, the source run once per batch."""
    from quantcli.engine import Engine
    from quantcli.stages.calibration_data import builtin_text
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.chunks import chunk_tokens
    from quantcli.stages.verify import open_layout
    from quantcli.stages.verify_model import score_outputs

    first = next(iter(files.values()))
    special = SpecialIds.from_metadata(open_layout(first).values)
    tokens = text_tokens(source, builtin_text("eval").text, special)
    chunked = chunk_tokens(tokens, ctx, chunks)
    src = Engine.from_hf(source, threads=2)
    outs = [Engine.from_gguf(path, source=source, threads=2) for path in files.values()]
    try:
        results = score_outputs(src, outs, chunked, special.bos, batch=2,
                                progress=lambda done, total: log(f"scored {done}/{total} chunks"))
    finally:
        for engine in [src, *outs]:
            engine.close()
    return dict(zip(files, results))


def agreement_rows(source: Path, files: dict[str, Path]) -> list[tuple[str, float, float]]:
    """(type, our PPL, llama.cpp's PPL) at the agreement test's settings."""
    from tests.interop.test_perplexity_agreement import eval_chunks, llama_cpp_perplexity, our_perplexity

    rows = []
    for qtype, path in files.items():
        chunks, bos = eval_chunks(path)
        rows.append((qtype, our_perplexity(path, chunks, bos).ppl, llama_cpp_perplexity(path, chunks, bos).ppl))
        log(f"agreement {qtype}: ours {rows[-1][1]:.4f}, llama.cpp {rows[-1][2]:.4f}")
    return rows


def render(results: dict[str, object], agreement: list[tuple[str, float, float]], ctx: int, chunks: int,
           calib_chunks: int, seconds: float) -> str:
    first = next(iter(results.values()))
    lines = [BEGIN, "",
             f"{MODEL}, evaluation text `builtin:eval` (not the calibration text), ctx {ctx}, {first.n_chunks} chunks "
             f"({first.n_scored} scored tokens); importance matrix: quantcli calibrate on `builtin:calibration`, "
             f"ctx {ctx}, {calib_chunks} chunks. PPL of the source (float32): **{first.ppl_source:.4f}**.", "",
             "| type | imatrix | PPL | ln(PPL ratio) | KLD mean | KLD median | KLD 99% | KLD max | same top-1 | RMS Δp |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        qtype, _, with_im = key.partition("+")
        lines.append(f"| {qtype} | {'yes' if with_im else 'no'} | {r.ppl:.4f} | {r.ln_ppl_ratio:.5f} | "
                     f"{r.kld_mean:.5f} | {r.kld_median:.5f} | {r.kld_p99:.5f} | {r.kld_max:.4f} | "
                     f"{100 * r.same_top1:.2f} % | {100 * r.rms_dp:.2f} % |")
    if agreement:
        lines += ["", "Agreement with llama.cpp (llama-cpp-python 0.3.36, same file and tokens, ctx 128, 4 chunks, "
                  "default float16 KV cache):", "",
                  "| type | our PPL | llama.cpp PPL | difference |", "|---|---:|---:|---:|"]
        for qtype, ours, theirs in agreement:
            lines.append(f"| {qtype} | {ours:.4f} | {theirs:.4f} | {100 * (ours / theirs - 1):+.3f} % |")
    lines += ["", f"Measured {dt.date.today()} on {machine()}, in {seconds / 60:.0f} min (load from other work on "
              "the machine slows the run, never changes a figure).", "", END]
    return "\n".join(lines)


def convert_folder(source: Path, args: tuple[str, ...], out: Path) -> tuple[Path, float]:
    """An integer folder written by the quantcli CLI (kept when --work already holds it); (path, seconds)."""
    if (out / "config.json").is_file():
        return out, float("nan")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(source), *args, "-o", str(out),
                    "--threads", "2", "--verify", "none"], check=True, stdout=subprocess.DEVNULL)
    return out, time.monotonic() - started


def folder_bits(path: Path) -> float:
    """Bits per weight of a folder's quantized Linear weights, scales and zero points included (as inspect)."""
    from quantcli.io.checkpoint import Checkpoint
    from quantcli.io.quantized_folder import open_folder_reader

    ckpt = Checkpoint.open(path)
    reader = open_folder_reader(ckpt)
    assert reader is not None, path
    stored = sum(m.stored_bytes(ckpt) for m in reader.modules.values())
    return 8.0 * stored / sum(m.shape[0] * m.shape[1] for m in reader.modules.values())


def gguf_bits(path: Path) -> float:
    """Bits per weight of a GGUF file's block Linear weights (the tensors the folders quantize)."""
    from gguf import GGUFReader

    tensors = [t for t in GGUFReader(path).tensors if LINEAR_GGUF.fullmatch(t.name)]
    return 8.0 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)


def int_folder_rows(source: Path, work: Path, ctx: int, chunks: int,
                    only: tuple[str, ...] = ()) -> list[tuple[str, float, float, object]]:
    """(label, bits per weight, convert seconds, PerplexityResult) for every folder and the two GGUF files (or
    only those whose label contains one of `only`)."""
    from quantcli.engine import Engine
    from quantcli.stages.calibration_data import builtin_text
    from quantcli.stages.chunks import chunk_tokens
    from quantcli.stages.eval_text import text_tokens
    from quantcli.stages.perplexity import PerplexityResult
    from quantcli.stages.verify_model import BATCH_CHUNKS, score_outputs, special_ids

    items: list[tuple[str, Path, float, float]] = []
    for i, (label, args) in enumerate(INT_FOLDERS.items()):
        if only and not any(o in label for o in only):
            continue
        path, secs = convert_folder(source, args, work / f"int{i}")
        items.append((f"{label}", path, folder_bits(path), secs))
        log(f"{label}: {items[-1][2]:.3f} bits per weight, written in {secs:.1f} s")
    for qtype in INT_GGUF:
        if only and not any(o in f"GGUF {qtype}" for o in only):
            continue
        path = convert(source, qtype, work / f"{qtype}.gguf", None)
        items.append((f"GGUF {qtype}", path, gguf_bits(path), float("nan")))
    # figures of earlier runs with --work, per output, until that output is written again
    cache_file = work / f"int-results-{ctx}x{chunks}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    for label, _, _, secs in items:
        if not math.isnan(secs):
            cache.pop(label, None)
    todo = [item for item in items if item[0] not in cache]
    if todo:
        special = special_ids(items[0][1], source)
        chunked = chunk_tokens(text_tokens(source, builtin_text("eval").text, special), ctx, chunks)
        src = Engine.from_hf(source, threads=2)
        outs = [Engine.from_hf(p, threads=2) if p.is_dir() else Engine.from_gguf(p, source=source, threads=2)
                for _, p, _, _ in todo]
        try:
            results = score_outputs(src, outs, chunked, special.bos, batch=BATCH_CHUNKS,
                                    progress=lambda done, total: log(f"scored {done}/{total} chunks"))
        finally:
            for engine in [src, *outs]:
                engine.close()
        for (label, _, _, _), r in zip(todo, results):
            cache[label] = asdict(r)
        cache_file.write_text(json.dumps(cache, indent=1))
    return [(label, bits, secs, PerplexityResult(**cache[label])) for label, _, bits, secs in items]


def render_int(rows: list[tuple[str, float, float, object]], ctx: int, seconds: float) -> str:
    first = rows[0][3]
    lines = [INT_BEGIN, "",
             f"{MODEL}, `builtin:eval`, ctx {ctx}, {first.n_chunks} chunks ({first.n_scored} scored tokens). PPL of "  # type: ignore[attr-defined]
             f"the source (float32): **{first.ppl_source:.4f}**. Bits per weight: the quantized Linear weights with "  # type: ignore[attr-defined]
             "their scales and zero points (float32 here, the checkpoint's dtype); for GGUF the same block matrices.",
             "", "| output | bits per weight | PPL | ln(PPL ratio) | KLD mean | KLD median | KLD 99% | KLD max | "
             "same top-1 | RMS Δp |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, bits, _, r in rows:
        lines.append(f"| {label} | {bits:.2f} | {r.ppl:.4f} | {r.ln_ppl_ratio:.5f} | {r.kld_mean:.5f} | "  # type: ignore[attr-defined]
                     f"{r.kld_median:.5f} | {r.kld_p99:.5f} | {r.kld_max:.4f} | {100 * r.same_top1:.2f} % | "  # type: ignore[attr-defined]
                     f"{100 * r.rms_dp:.2f} % |")  # type: ignore[attr-defined]
    lines += ["", f"Measured {dt.date.today()} on {machine()}, in {seconds / 60:.0f} min (load from other work on "
              "the machine slows the run, never changes a figure).", "", INT_END]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("docs/quality.md"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--calib-chunks", type=int, default=32)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--no-imatrix", action="store_true", help="Only the files without an importance matrix.")
    ap.add_argument("--no-agreement", action="store_true", help="Skip the llama.cpp comparison.")
    ap.add_argument("--work", type=Path, help="Keep the files here (an imatrix.gguf already there is reused).")
    ap.add_argument("--int-folders", action="store_true",
                    help="Score the integer folders (and GGUF Q4_K_M, Q8_0) instead of the GGUF types.")
    ap.add_argument("--only", default="", help="--int-folders: only the outputs whose label contains one of these "
                    "comma-separated strings.")
    args = ap.parse_args()
    source = args.models / MODEL
    start = time.monotonic()
    if args.int_folders:
        with tempfile.TemporaryDirectory(prefix="quality-int-") as tmp:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            rows = int_folder_rows(source, work, args.ctx, args.chunks,
                                   tuple(o for o in args.only.split(",") if o))
            for label, bits, _, r in rows:
                log(f"{label}: {bits:.2f} bpw, PPL {r.ppl:.4f} KLD {r.kld_mean:.5f}")  # type: ignore[attr-defined]
            replace_between(args.out, INT_BEGIN, INT_END, render_int(rows, args.ctx, time.monotonic() - start))
            log(f"wrote {args.out}")
        return
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        imatrix = None
        if not args.no_imatrix and (work / "imatrix.gguf").is_file():
            imatrix = work / "imatrix.gguf"
        elif not args.no_imatrix:
            log(f"calibrating ({args.calib_chunks} chunks of {args.ctx})")
            imatrix = make_imatrix(source, work / "imatrix.gguf", args.ctx, args.calib_chunks)
        files: dict[str, Path] = {}
        for qtype in args.types.split(","):
            files[qtype] = convert(source, qtype, work / f"{qtype}.gguf", None)
            if imatrix is not None:
                files[f"{qtype}+imatrix"] = convert(source, qtype, work / f"{qtype}-imatrix.gguf", imatrix)
        log(f"converted {len(files)} files; scoring {args.chunks} chunks of {args.ctx}")
        results = quality_rows(source, files, args.ctx, args.chunks)
        for key, r in results.items():
            log(f"{key}: PPL {r.ppl:.4f} KLD {r.kld_mean:.5f}")
        # written now and again with the agreement table, so a long run leaves its main figures behind
        replace_between(args.out, BEGIN, END, render(results, [], args.ctx, args.chunks, args.calib_chunks, time.monotonic() - start))
        log(f"wrote {args.out}")
        if not args.no_agreement:
            extra = {t: convert(source, t, work / f"{t}.gguf", None) for t in AGREEMENT_TYPES if t not in files}
            agreement = agreement_rows(source, {t: extra.get(t) or files[t] for t in AGREEMENT_TYPES})
            replace_between(args.out, BEGIN, END, render(results, agreement, args.ctx, args.chunks,
                                                         args.calib_chunks, time.monotonic() - start))
            log(f"wrote {args.out} with the agreement table")


if __name__ == "__main__":
    main()
