"""AWQ against round-to-nearest on SmolLM2: KL divergence of fake-quantized dense folders, scored by the engine.

    python -m benchmarks.awq_quality --model models/SmolLM2-135M-Instruct --out docs/quality.md \
        [--group-size 64] [--calib-chunks 16] [--eval-chunks 8] [--max-tokens 2048]

For each weight scheme (4-bit, symmetric and asymmetric), every block linear is quantized three ways: RTN min-max,
RTN with the MSE range search, and AWQ (quant/algorithms/awq.py, run block by block over the built-in calibration
text as the calibrated driver runs it: each block calibrated on the outputs of the quantized earlier ones). Each
result is written as a dense float32 HF folder holding the dequantized weights (and, for AWQ, the norms the scales
were folded into), so the engine scores exactly what a loader of the quantized folder computes. The folders are
scored against the source on the built-in evaluation text (a different text) at ctx 512, llama-perplexity's way
(stages/verify_model.score_outputs).

Only the part of --out between the two marker lines is rewritten.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .run import machine

BEGIN, END = "<!-- awq:begin (benchmarks/awq_quality.py) -->", "<!-- awq:end -->"
LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_out", "ffn_gate", "ffn_up", "ffn_gate_up", "ffn_down")


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def write_folder(source: Path, tensors: Mapping[str, np.ndarray], out: Path) -> Path:
    """A dense float32 HF folder: the source's config and tokenizer files, `tensors` as its weights."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(out / "model.safetensors"))
    return out


def dequantized(w: np.ndarray, scheme: "IntScheme", scale_dtype: str, method: str) -> np.ndarray:  # noqa: F821
    from quantcli.quant.backend import get_backend
    from quantcli.quant.int.encode import encode_weight

    codes, _ = encode_weight(np.asarray(w, np.float32), scheme, scale_dtype, method, get_backend(), threads=2)
    return codes.dequantize(scale_dtype, scheme.group_size)


def rtn(source: Path, tensors: Mapping[str, np.ndarray], linears: list[str], scheme: "IntScheme",  # noqa: F821
        scale_dtype: str, method: str) -> tuple[dict[str, np.ndarray], float]:
    t0 = time.perf_counter()
    out = dict(tensors)
    for name in linears:
        out[name] = dequantized(tensors[name], scheme, scale_dtype, method)
    return out, time.perf_counter() - t0


def awq(source: Path, tensors: Mapping[str, np.ndarray], calib: np.ndarray, scheme: "IntScheme",  # noqa: F821
        scale_dtype: str, max_tokens: int, threads: int) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
    """The calibrated driver's loop: AWQ per block, its choices dequantized and put back before the next block."""
    from quantcli.engine import Engine
    from quantcli.quant.algorithms.awq import AWQ

    t0 = time.perf_counter()
    eng = Engine.from_hf(source, threads=threads)
    offset = np.float32(eng.spec.numerics.norm_weight_offset)
    method = AWQ(max_tokens=max_tokens, scale_dtype=scale_dtype)
    out = dict(tensors)
    for step in eng.blocks(calib):
        targets = {n: scheme for n in step.linears}
        for c in method.process(step, targets):
            assert c.dense is not None
            if c.name in targets:
                value = dequantized(c.dense, scheme, scale_dtype, "minmax")
                step.set_weight(c.name, value)
            else:
                value = c.dense
                factor = c.dense + offset if step.role(c.name).endswith("_norm") else c.dense
                step.set_weight(c.name, factor)
            out[c.name] = value
        log(f"  block {step.index}: {time.perf_counter() - t0:.0f} s")
    return out, time.perf_counter() - t0, dict(method.alphas)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="markdown file with the awq markers to update")
    ap.add_argument("--group-size", type=int, default=64, help="inputs per scale; 0 = one scale per output channel")
    ap.add_argument("--calib-chunks", type=int, default=16)
    ap.add_argument("--eval-chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=2048, help="tokens AWQ's searches run on per block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schemes", default="sym,asym")
    args = ap.parse_args(argv)

    from quantcli.engine import Engine
    from quantcli.models.spec import model_spec
    from quantcli.io.int_scheme import IntScheme
    from quantcli.stages.calibration_data import load_calibration_text
    from quantcli.stages.eval_text import encode
    from quantcli.stages.perplexity import chunk_tokens
    from quantcli.stages.verify_model import score_outputs

    source = args.model
    spec = model_spec(source)
    tensors = load_tensors(source)
    linears = [t.hf_name for t in spec.tensors if t.layer is not None and t.role in LINEAR_ROLES]
    dtype = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}.get(tensors[linears[0]].dtype, "BF16")
    # SmolLM2's byte-level BPE vocabulary adds no BOS (llama.cpp's default for "gpt2" tokenizers)
    calib = chunk_tokens(encode(source, load_calibration_text("builtin:calibration").text), args.ctx,
                         args.calib_chunks)
    evals = chunk_tokens(encode(source, load_calibration_text("builtin:eval").text), args.ctx, args.eval_chunks)
    log(f"{source.name}: {len(linears)} linears, scale dtype {dtype}, calibration {calib.shape}, eval {evals.shape}")

    rows: list[tuple[str, str, float, object]] = []
    with tempfile.TemporaryDirectory(prefix="awq-quality-") as tmp:
        folders: list[Path] = []
        for kind in args.schemes.split(","):
            scheme = IntScheme(f"W4A16_{kind}", bits=4, group_size=args.group_size or None, symmetric=kind == "sym")
            label = f"W4A16 {kind} " + (f"g{args.group_size}" if args.group_size else "per-channel")
            for method in ("rtn-minmax", "rtn-mse", "awq"):
                log(f"{label} {method}")
                if method == "awq":
                    out, seconds, alphas = awq(source, tensors, calib, scheme, dtype, args.max_tokens, args.threads)
                    log(f"  alphas: {sorted(alphas.values())}")
                else:
                    out, seconds = rtn(source, tensors, linears, scheme, dtype, method.split("-")[1])
                folders.append(write_folder(source, out, Path(tmp) / f"{kind}-{method}"))
                rows.append((label, method, seconds, None))
                del out
        log("scoring")
        src = Engine.from_hf(source, threads=args.threads)
        outs = [Engine.from_hf(f, threads=args.threads) for f in folders]
        results = score_outputs(src, outs, evals, None, batch=2,
                                progress=lambda done, total: log(f"  {done}/{total} chunks"))
    table = [f"Measured {dt.date.today():%Y-%m-%d} on {machine()}; {args.calib_chunks} x {args.ctx} calibration tokens "
             f"(builtin:calibration; AWQ's searches on the first {args.max_tokens} per block), {args.eval_chunks} x "
             f"{args.ctx} evaluation tokens (builtin:eval).", "",
             "| scheme | method | PPL | PPL ratio | KLD mean | KLD p99 | same top-1 | time |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (label, method, seconds, _), r in zip(rows, results):
        table.append(f"| {label} | {method} | {r.ppl:.3f} | {r.ppl_ratio:.4f} | {r.kld_mean:.5f} | {r.kld_p99:.4f} | "
                     f"{100 * r.same_top1:.2f}% | {seconds:.0f} s |")
    text = "\n".join(table)
    print(text)
    if args.out is not None:
        doc = args.out.read_text()
        if BEGIN in doc and END in doc:
            head, rest = doc.split(BEGIN, 1)
            doc = head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1]
            args.out.write_text(doc)
        else:
            log(f"{args.out} has no {BEGIN} ... {END} markers; the table is printed only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
