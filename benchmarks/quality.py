"""Measure how good quantcli's quantized SmolLM2 files are and write the tables of docs/quality.md.

    python -m benchmarks.quality --models models --out docs/quality.md [--chunks 20] [--calib-chunks 32]

For each type, without and with an importance matrix (quantcli's calibrate stage on the shipped calibration
text), the file is scored against the source checkpoint on the shipped evaluation text (a different text) at
ctx 512, llama-perplexity's way (quantcli.stages.verify_model). Then llama.cpp's perplexity on a few of the same
files is set beside ours (ctx 128, 4 chunks, as tests/interop/test_perplexity_agreement.py does).

Only the part of --out between the two marker lines is rewritten; the prose around it stays.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from .run import machine

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS")
AGREEMENT_TYPES = ("F32", "F16", "Q8_0", "Q6_K", "Q4_K_M", "Q2_K")
MODEL = "SmolLM2-135M-Instruct"
BEGIN, END = "<!-- quality:begin (benchmarks/quality.py) -->", "<!-- quality:end -->"


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


def write_section(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Quality\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + section + tail, encoding="utf-8")


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
    args = ap.parse_args()
    source = args.models / MODEL
    start = time.monotonic()
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
        write_section(args.out, render(results, [], args.ctx, args.chunks, args.calib_chunks, time.monotonic() - start))
        log(f"wrote {args.out}")
        if not args.no_agreement:
            extra = {t: convert(source, t, work / f"{t}.gguf", None) for t in AGREEMENT_TYPES if t not in files}
            agreement = agreement_rows(source, {t: extra.get(t) or files[t] for t in AGREEMENT_TYPES})
            write_section(args.out, render(results, agreement, args.ctx, args.chunks, args.calib_chunks,
                                           time.monotonic() - start))
            log(f"wrote {args.out} with the agreement table")


if __name__ == "__main__":
    main()
