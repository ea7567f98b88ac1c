"""SplitQuantV2 against per-channel INT4 RTN, and HQQ against RTN min-max and RTN-MSE, on SmolLM2-135M-Instruct:
weight error, time, and PPL/KLD on builtin:eval with quantcli's engine.

    python -m benchmarks.splitquant_hqq --models /work/main/models [--chunks 4] [--ctx 512] [--work DIR]

Every variant is written as a dense folder of dequantized weights (stages/pack_split.write_dense_folder: the same
values a loader reconstructs from the quantized folder; SplitQuantV2's own dense output is exactly that), so the
engine scores them all the same way (Engine.from_hf); the three-branch SplitQuantV2 folder is scored too, through
engine/split_weights.py. Quantization time is the method alone over the 210 Linear weights, already in memory, on
2 threads; the SplitQuantV2 conversion is also timed end to end. When the `hqq` package is installed, its own
quantizer (float zero points, range without 0) is run on the same weights for comparison. Prints Markdown.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .run import machine

MODEL = "SmolLM2-135M-Instruct"
THREADS = 2


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def variants() -> dict[str, tuple[str, int, bool]]:
    """label -> (method, group size (0: per channel), symmetric)."""
    return {
        "INT4 per-channel RTN min-max (sym)": ("minmax", 0, True),
        "SplitQuantV2 (3 x INT4 per-channel, sym)": ("splitquant", 0, True),
        "W4A16_ASYM g64 RTN min-max": ("minmax", 64, False),
        "W4A16_ASYM g64 RTN-MSE": ("mse", 64, False),
        "W4A16_ASYM g64 HQQ": ("hqq", 64, False),
    }


def dense_fn(method: str, group: int, sym: bool):  # type: ignore[no-untyped-def]
    from quantcli.quant.algorithms.splitquant import split_linear
    from quantcli.quant.backend import get_backend
    from quantcli.io.int_scheme import scheme_named
    from quantcli.quant.int.encode import encode_weight

    scheme = scheme_named("W4A16").with_options(group_size=group, symmetric=sym)
    backend = get_backend()
    if method == "splitquant":
        return lambda w, b: split_linear(w, scheme, "F32", backend, b, THREADS).dense()
    return lambda w, b: encode_weight(w, scheme, "F32", method, backend, THREADS)[0].dequantize("F32", scheme.group_size)


class Measured:
    """Wraps a dense function: sums the squared error and the signal over the weights it sees, and its time."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        self.fn, self.err, self.signal, self.seconds = fn, 0.0, 0.0, 0.0

    def __call__(self, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        started = time.perf_counter()
        dense = self.fn(w, bias)
        self.seconds += time.perf_counter() - started
        self.err += float(np.sum((dense - w).astype(np.float64) ** 2))
        self.signal += float(np.sum(w.astype(np.float64) ** 2))
        return dense

    @property
    def snr(self) -> float:
        return 10 * np.log10(self.signal / self.err)


def snr_on(weights: list[np.ndarray], fn) -> float:  # type: ignore[no-untyped-def]
    m = Measured(fn)
    for w in weights:
        m(w, None)
    return m.snr


def hqq_package(weights: list[np.ndarray]) -> dict[str, float] | None:
    """SNR (dB) of the hqq package's own 4-bit g64 quantizer on these weights: float zeros, and rounded."""
    try:
        import torch
        from hqq.core.quantize import Quantizer
    except ImportError:
        return None
    signal = err_float = err_round = 0.0
    for w in weights:
        q, meta = Quantizer.quantize(torch.from_numpy(w), nbits=4, group_size=64, optimize=True, axis=1,
                                     bitpack=False, device="cpu")
        q = q.float().reshape(-1, 64)
        scale, zero = meta["scale"].float(), meta["zero"].float()
        dense = ((q - zero) * scale).reshape(w.shape).numpy()
        zr = torch.round(zero)
        dense_r = ((torch.clamp(torch.round(torch.from_numpy(w).reshape(-1, 64) / scale + zr), 0, 15) - zr) * scale)
        signal += float(np.sum(w.astype(np.float64) ** 2))
        err_float += float(np.sum((dense - w).astype(np.float64) ** 2))
        err_round += float(np.sum((dense_r.reshape(w.shape).numpy() - w).astype(np.float64) ** 2))
    import hqq

    return {"version": getattr(hqq, "__version__", "?"), "float": 10 * np.log10(signal / err_float),
            "rounded": 10 * np.log10(signal / err_round)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    source = args.models / MODEL
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="splitquant-bench-"))

    from quantcli.engine import Engine
    from quantcli.engine.split_weights import SplitWeights
    from quantcli.io.checkpoint import Checkpoint
    from quantcli.pipeline.convert_split import SplitConvertRequest, convert_split
    from quantcli.io.int_scheme import scheme_named
    from quantcli.plan.safetensors import IntOptions, make_int_plan
    from quantcli.stages.calibration_data import builtin_text
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.perplexity import chunk_tokens
    from quantcli.stages.verify import open_layout
    from quantcli.stages.pack_split import write_dense_folder
    from quantcli.stages.verify_model import score_outputs

    ckpt = Checkpoint.open(source)
    folders: dict[str, Path] = {}
    figures: dict[str, tuple[float, float]] = {}
    names: list[str] = []
    for i, (label, (method, group, sym)) in enumerate(variants().items()):
        folder = work / f"v{i}"
        scheme = scheme_named("W4A16").with_options(group_size=group, symmetric=sym)
        plan = make_int_plan(ckpt, IntOptions(scheme=scheme))
        names = [m.source for m in plan.modules if m.quantized]
        measured = Measured(dense_fn(method, group, sym))
        write_dense_folder(plan, ckpt, folder, measured, card=f"# {label}\n")
        figures[label] = (measured.snr, measured.seconds)
        folders[label] = folder
        log(f"{label}: SNR {measured.snr:.2f} dB, {measured.seconds:.1f} s")
    # the hqq package is slow on the CPU: it and ours are compared on every 10th Linear weight
    sample = [ckpt.read_f32(n) for n in names[::10]]
    peer = hqq_package(sample)
    ours = {m: snr_on(sample, dense_fn(m, 64, False)) for m in ("minmax", "mse", "hqq")} if peer else {}
    t0 = time.perf_counter()
    convert_split(SplitConvertRequest(model=str(source), output=work / "split-dense", threads=THREADS))
    split_dense_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    convert_split(SplitConvertRequest(model=str(source), output=work / "split-branches", branches=True, threads=THREADS))
    split_branch_s = time.perf_counter() - t0
    log(f"splitquant conversions: dense {split_dense_s:.1f} s, branches {split_branch_s:.1f} s")

    special = SpecialIds.from_metadata(open_layout(args.models / f"{MODEL}.Q4_1.gguf").values)
    chunks = chunk_tokens(text_tokens(source, builtin_text("eval").text, special), args.ctx, args.chunks)
    src = Engine.from_hf(source, threads=THREADS)
    engines = {label: Engine.from_hf(folder, threads=THREADS) for label, folder in folders.items()}
    engines["SplitQuantV2, three-branch folder (engine)"] = Engine(SplitWeights.open(work / "split-branches"), threads=THREADS)
    results = score_outputs(src, list(engines.values()), chunks, special.bos, batch=2,
                            progress=lambda done, total: log(f"scored {done}/{total} chunks"))
    first = results[0]
    lines = [f"{MODEL} (float32 checkpoint), `builtin:eval`, ctx {args.ctx}, {first.n_chunks} chunks "
             f"({first.n_scored} scored tokens). Source PPL **{first.ppl_source:.4f}**. Quantization time: the method "
             f"alone over the 210 Linear weights (in memory), {THREADS} threads.", "",
             "| variant | weight SNR dB | PPL | KLD mean | KLD 99% | same top-1 | quantization time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for (label, _), r in zip(engines.items(), results):
        snr, secs = figures.get(label, figures["SplitQuantV2 (3 x INT4 per-channel, sym)"])
        lines.append(f"| {label} | {snr:.2f} | {r.ppl:.4f} | {r.kld_mean:.5f} | {r.kld_p99:.5f} | "
                     f"{100 * r.same_top1:.2f} % | {secs:.1f} s |")
    lines += ["", f"SplitQuantV2 end to end (`quantcli convert --method splitquant`, read + split + write): dense folder "
              f"{split_dense_s:.1f} s, three-branch folder {split_branch_s:.1f} s."]
    if peer is not None:
        lines += ["", f"hqq package {peer['version']} against ours on every 10th Linear weight ({len(sample)} "
                  f"weights), 4-bit g64, weight SNR dB: hqq package (float zero points, range [min, max] without 0, "
                  f"its defaults) {peer['float']:.2f}; the same with its zero points rounded to integers (what "
                  f"compressed-tensors stores) {peer['rounded']:.2f}; quantcli W4A16_ASYM min-max {ours['minmax']:.2f}, "
                  f"RTN-MSE {ours['mse']:.2f}, HQQ {ours['hqq']:.2f}."]
    lines += ["", f"Measured {dt.date.today()} on {machine()}, in {(time.perf_counter() - started) / 60:.0f} min "
              "(other work on the machine slows the run, never changes a figure)."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
