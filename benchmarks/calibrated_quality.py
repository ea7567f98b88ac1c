"""KL divergence of calibrated integer quantization (GPTQ) against round-to-nearest, on SmolLM2, with the engine.

    python -m benchmarks.calibrated_quality --models /work/main/models [--model SmolLM2-135M-Instruct] \
        --out docs/quality.md \
        [--calib-chunks 16] [--calib-ctx 512] [--eval-chunks 8] [--group 64] [--threads 2]

For each scheme (4-bit symmetric, one group size and per channel), every linear of every block is quantized by
RTN min-max, RTN-MSE (quant/int/rtn.py), GPTQ and GPTQ with act-order (quant/algorithms/gptq.py, calibrated on
`builtin:calibration` through Engine.blocks, true-sequential). Until convert writes GPTQ folders, each result is a
"fake-quant" HF folder: the source checkpoint with those weights replaced by their dequantized values (float32,
exactly what a loader computes from the codes and scales). Every folder is then scored against the source on
`builtin:eval` (a different text) at ctx 512 with the engine, llama-perplexity's way (stages/verify_model).

The embeddings and the (tied) output head stay in float32 for every method, as GPTQ recipes leave lm_head alone.
Only the part of --out between the two marker lines is rewritten (appended when absent).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .run import machine

MODEL = "SmolLM2-135M-Instruct"
BEGIN, END = "<!-- calibrated:begin (benchmarks/calibrated_quality.py) -->", "<!-- calibrated:end -->"
LINEAR = re.compile(r"^model\.layers\.\d+\..*_proj\.weight$")
SCALE_BITS = {"F32": 32, "F16": 16, "BF16": 16}


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def tokens_of(source: Path, which: str, ctx: int, chunks: int) -> np.ndarray:
    from quantcli.stages.calibration_data import builtin_text
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.perplexity import chunk_tokens

    # SmolLM2's byte-level BPE vocabulary adds no BOS (llama.cpp's rule in SpecialIds), so none is put in front
    return chunk_tokens(text_tokens(source, builtin_text(which).text, SpecialIds()), ctx, chunks)


def rtn_weights(tensors: dict[str, np.ndarray], scheme: object, method: str, dtype: str,
                threads: int) -> dict[str, np.ndarray]:
    from quantcli.quant.backend import get_backend
    from quantcli.quant.int.encode import encode_weight

    backend = get_backend()
    return {name: encode_weight(w, scheme, dtype, method, backend, threads)[0]  # type: ignore[arg-type]
            .dequantize(dtype, scheme.group_size)  # type: ignore[attr-defined]
            for name, w in tensors.items() if LINEAR.match(name)}


def gptq_weights(source: Path, tokens: np.ndarray, scheme: object, act_order: bool, dtype: str,
                 threads: int) -> tuple[dict[str, np.ndarray], float]:
    from quantcli.engine import Engine
    from quantcli.quant.algorithms.gptq import GPTQ, dequantize

    engine = Engine.from_hf(source, threads=threads)
    method = GPTQ(act_order=act_order, scale_dtype=dtype, threads=threads)
    dense: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    try:
        for step in engine.blocks(tokens):
            targets = {name: scheme for name in step.linears}
            for c in method.process(step, targets):
                dense[c.name] = dequantize(c.codes, scheme, dtype, c.g_idx)  # type: ignore[arg-type]
            log(f"  block {step.index} done, {time.perf_counter() - start:.0f} s")
    finally:
        engine.close()
    return dense, time.perf_counter() - start


def write_folder(source: Path, dest: Path, tensors: dict[str, np.ndarray], replaced: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    save_file({name: replaced.get(name, w) for name, w in tensors.items()}, str(dest / "model.safetensors"))
    return dest


def score(source: Path, folders: dict[str, Path], tokens: np.ndarray, threads: int) -> dict[str, object]:
    from quantcli.engine import Engine
    from quantcli.stages.verify_model import score_outputs

    src = Engine.from_hf(source, threads=threads)
    outs = [Engine.from_hf(path, threads=threads) for path in folders.values()]
    try:
        results = score_outputs(src, outs, tokens, None, batch=2,
                                progress=lambda done, total: log(f"scored {done}/{total} chunks"))
    finally:
        for engine in [src, *outs]:
            engine.close()
    return dict(zip(folders, results))


def render(results: dict[str, object], times: dict[str, float], bpw: dict[str, float], args: argparse.Namespace,
           seconds: float) -> str:
    first = next(iter(results.values()))
    lines = [BEGIN, "",
             f"{args.model}, every block linear 4-bit symmetric, scales in {args.scale_dtype} (the checkpoint's dtype, "
             f"as the pack stage stores them); embeddings and the tied head unquantized. Evaluation: `builtin:eval`, "
             f"ctx {args.ctx}, {first.n_chunks} chunks ({first.n_scored} scored tokens). GPTQ calibration: "
             f"`builtin:calibration`, {args.calib_chunks} x {args.calib_ctx} tokens, damp 0.01, blocks of 128 columns, "
             f"true-sequential. PPL of the source (float32): **{first.ppl_source:.4f}**.", "",
             "| scheme | method | bits/weight | PPL | ln(PPL ratio) | KLD mean | KLD 99% | same top-1 | GPTQ time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        scheme, _, method = key.partition(" / ")
        took = f"{times[key]:.0f} s" if key in times else ""
        lines.append(f"| {scheme} | {method} | {bpw[key]:.2f} | {r.ppl:.4f} | {r.ln_ppl_ratio:.5f} | "
                     f"{r.kld_mean:.5f} | {r.kld_p99:.5f} | {100 * r.same_top1:.2f} % | {took} |")
    lines += ["", f"Measured {dt.date.today()} on {machine()}, {args.threads} threads, in {seconds / 60:.0f} min "
              "(the machine was shared with other jobs: times are upper bounds, the quality figures do not depend "
              "on load).", "", END]
    return "\n".join(lines)


def update(out: Path, table: str) -> None:
    text = out.read_text() if out.is_file() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + table + "\n"
    out.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("/work/main/models"))
    parser.add_argument("--model", default=MODEL,
                        help="folder name under --models (a decoder with model.layers.N.*_proj linears and a "
                             "byte-level BPE tokenizer that adds no BOS, as SmolLM2 and the tiny test models)")
    parser.add_argument("--out", type=Path, default=None, help="the markdown file whose marked section to rewrite")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--calib-chunks", type=int, default=16)
    parser.add_argument("--calib-ctx", type=int, default=512)
    parser.add_argument("--eval-chunks", type=int, default=8)
    parser.add_argument("--group", type=int, default=64, help="group size (SmolLM2's 576-wide rows take 32 or 64)")
    parser.add_argument("--scale-dtype", default="F32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep the fake-quant folders here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = parser.parse_args()

    from safetensors.numpy import load_file

    from quantcli.io.int_scheme import scheme_named

    start = time.perf_counter()
    source = args.models / args.model
    tensors = load_file(str(source / "model.safetensors"))
    calib = tokens_of(source, "calibration", args.calib_ctx, args.calib_chunks)
    evals = tokens_of(source, "eval", args.ctx, args.eval_chunks)
    base = scheme_named("W4A16")
    schemes = {f"W4A16 g{args.group}": base.with_options(group_size=args.group),
               "W4A16 per-channel": base.with_options(group_size=0)}
    work = args.work or Path(tempfile.mkdtemp(prefix="calibrated-quality-"))
    folders: dict[str, Path] = {}
    times: dict[str, float] = {}
    bpw: dict[str, float] = {}
    for label, scheme in schemes.items():
        cols = {name: w.shape[1] for name, w in tensors.items() if LINEAR.match(name)}
        weights = sum(w.size for name, w in tensors.items() if LINEAR.match(name))
        scale_bits = sum(tensors[n].shape[0] * scheme.groups_per_row(c) * SCALE_BITS[args.scale_dtype]
                         for n, c in cols.items())
        methods: dict[str, object] = {
            "RTN min-max": lambda s=scheme: rtn_weights(tensors, s, "minmax", args.scale_dtype, args.threads),
            "RTN-MSE": lambda s=scheme: rtn_weights(tensors, s, "mse", args.scale_dtype, args.threads),
            "GPTQ": lambda s=scheme: gptq_weights(source, calib, s, False, args.scale_dtype, args.threads),
            "GPTQ act-order": lambda s=scheme: gptq_weights(source, calib, s, True, args.scale_dtype, args.threads),
        }
        for method, make in methods.items():
            key = f"{label} / {method}"
            dest = work / f"{label} {method}".replace(" ", "_")
            log(f"{key} ...")
            made = make()  # type: ignore[operator]
            if isinstance(made, tuple):
                made, times[key] = made
                log(f"{key}: GPTQ took {times[key]:.0f} s")
            folders[key] = write_folder(source, dest, tensors, made)
            bpw[key] = scheme.bits + scale_bits / weights
    results = score(source, folders, evals, args.threads)
    seconds = time.perf_counter() - start
    table = render(results, times, bpw, args, seconds)
    print(table)
    if args.out is not None:
        update(args.out, table)
    if args.json is not None:
        from dataclasses import asdict
        args.json.write_text(json.dumps({k: {**asdict(r), "gptq_seconds": times.get(k)}  # type: ignore[call-overload]
                                         for k, r in results.items()}, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
