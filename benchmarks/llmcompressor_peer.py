"""quantcli's compressed-tensors writers against llm-compressor on the same machine, data and threads, with the KL
divergence of every SmolLM2 folder next to its time.

    python -m benchmarks.llmcompressor_peer --models models --out docs/int-benchmarks.md \
        [--threads 2] [--gptq-chunks 128] [--ctx 512] [--eval-chunks 4] [--peer-timeout 2400]

Rows, each pair run back to back (quantcli first, then the peer) so both see about the same load:
- W4A16 and W8A16 round to nearest (min-max), symmetric, every Linear but lm_head, on bench-llama-168m (groups of
  128) and SmolLM2-135M-Instruct (groups of 64: 128 does not divide its 576 columns):
  `quantcli convert --format compressed-tensors --scheme S --group-size G` against llm-compressor's oneshot with a
  QuantizationModifier of the same scheme (benchmarks/llmcompressor_job.py).
- GPTQ W4A16 g64 on SmolLM2 over --gptq-chunks sequences of --ctx tokens of `builtin:calibration`, cut by quantcli's
  own calibration_tokens and saved to an .npy that the peer reads, so both calibrate on the same token ids:
  `quantcli convert ... --method gptq --act-order` against llm-compressor's GPTQModifier with its defaults (blocks of
  128 columns, dampening 0.01, static act-order, which is what quantcli's --act-order does). The peer's GPTQ is
  stopped after --peer-timeout seconds (40 minutes by default; on a shared 2-core machine it needs about 3 minutes
  per layer of SmolLM2 even at 8 sequences) and is then reported as a lower bound, the ratio as an upper bound.
Every SmolLM2 folder, ours and the peer's, is scored after its pair (outside the timing) by `quantcli verify FOLDER --source MODEL --data
builtin:eval` (a text not used for calibration), and the two folders of a pair are compared tensor by tensor. bench-llama-168m has random weights, so it is timed only.

The peer runs in its own venv (benchmarks/peer_venv.py, `make peers`). Each command is its own process, measured
by benchmarks/measure.py (wall time, the child's own peak RSS). The section between this module's markers in
--out is rewritten; the rest of the file is left alone.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .doc_section import replace_section
from .measure import TimedOut, measure
from .peer_venv import LLMCOMPRESSOR_VERSION
from .peer_venv import python as peer_python
from .run import machine

SECTION = "llmcompressor-peer"
JOB = Path(__file__).with_name("llmcompressor_job.py")
QUALITY_MODEL = "SmolLM2-135M-Instruct"
# (model, group size): 128 does not divide SmolLM2's 576-wide rows, so it takes 64 there
MODELS = (("bench-llama-168m", 128), (QUALITY_MODEL, 64))
SCHEMES = (("W4A16", 4), ("W8A16", 8))

EXPORT_TOKENS = """
import json, sys
from pathlib import Path
import numpy as np
from quantcli.stages.calibrated import CalibratedOptions, calibration_tokens
from quantcli.stages.calibration_data import load_calibration_text
src, ctx, chunks, out = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n_ctx = json.loads((src / "config.json").read_text())["max_position_embeddings"]
tokens = calibration_tokens(src, load_calibration_text("builtin:calibration"), CalibratedOptions(ctx=ctx, chunks=chunks), n_ctx)
np.save(out, tokens)
print(tokens.shape[0])
"""

SAME_TENSORS = """
import sys
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file
def tensors(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
same = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
print("yes" if same else "no")
"""


@dataclass
class Row:
    model: str
    what: str             # "W4A16 g64 RTN", "W4A16 g64 GPTQ 16x512"
    writer: str           # "quantcli" or "llm-compressor"
    seconds: float
    peak_rss_mb: float
    load: float           # 1-minute load average when the pair started
    folder: Path
    phases: dict[str, float] = field(default_factory=dict)   # the peer's own import/load/quantize/save seconds
    quality: dict[str, float] = field(default_factory=dict)  # verify --json's figures
    same_tensors: str = ""  # on the peer's row: "yes" when both folders hold the same tensors, bit for bit
    stopped: bool = False   # ran past --peer-timeout and was killed: seconds is a lower bound, no folder


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def ours(src: Path, out: Path, scheme: str, group: int, threads: int, env: dict[str, str],
         gptq: tuple[int, int] | None = None) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "quantcli.cli.app", "convert", str(src), "--format", "compressed-tensors",
           "--scheme", scheme, "--group-size", str(group), "--verify", "none", "--threads", str(threads),
           "--force", "-o", str(out)]
    if gptq:
        cmd += ["--method", "gptq", "--act-order", "--ctx", str(gptq[1]), "--chunks", str(gptq[0])]
    m = measure("quantcli", cmd, 1, env)
    return m.seconds, m.peak_rss_mb


def peer(src: Path, out: Path, bits: int, group: int, threads: int, env: dict[str, str],
         tokens: Path | None = None, timeout: float | None = None) -> tuple[float, float, dict[str, float]]:
    """(seconds, peak RSS MB, the job's phases); past `timeout` the job is killed and (timeout, 0, {}) returned."""
    times = out.with_name(out.name + ".times.json")
    cmd = [str(peer_python()), str(JOB), str(src), str(out), "--bits", str(bits), "--group", str(group),
           "--threads", str(threads), "--times", str(times)]
    if tokens:
        cmd += ["--gptq", str(tokens)]
    try:
        m = measure("llm-compressor", cmd, 1, env, timeout)
    except TimedOut:
        return float(timeout or 0), 0.0, {}
    return m.seconds, m.peak_rss_mb, json.loads(times.read_text(encoding="utf-8"))


def quality(folder: Path, src: Path, eval_chunks: int, ctx: int, threads: int, env: dict[str, str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "quantcli.cli.app", "verify", str(folder), "--source", str(src), "--data",
           "builtin:eval", "--ctx", str(ctx), "--chunks", str(eval_chunks), "--threads", str(threads), "--json"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode not in (0, 1):  # 1: a threshold failed, the figures are still there
        raise RuntimeError(f"{' '.join(cmd)} failed with {res.returncode}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout)


def same_tensors(a: Path, b: Path, env: dict[str, str]) -> str:
    """"yes" when two folders hold the same tensor names, dtypes and bytes; in a child, as export_tokens."""
    res = subprocess.run([sys.executable, "-c", SAME_TENSORS, str(a), str(b)], env=env, capture_output=True,
                         text=True, check=True)
    return res.stdout.strip()


def export_tokens(src: Path, ctx: int, chunks: int, out: Path, env: dict[str, str]) -> int:
    """quantcli's calibration chunks as an .npy, in a child (a parent that tokenized would pass its peak RSS on
    to every process it starts afterwards)."""
    res = subprocess.run([sys.executable, "-c", EXPORT_TOKENS, str(src), str(ctx), str(chunks), str(out)],
                         env=env, capture_output=True, text=True, check=True)
    return int(res.stdout.strip())


def pair(rows: list[Row], model: str, what: str, run_ours: object, run_peer: object, tmp: Path) -> None:
    """Run quantcli then the peer on the same input, appending both rows."""
    load = os.getloadavg()[0]
    slug = what.replace(" ", "-")
    log(f"{model} {what}: quantcli (load {load:.1f})")
    a = tmp / f"{model}-{slug}-quantcli"
    s, r = run_ours(a)  # type: ignore[operator]
    rows.append(Row(model, what, "quantcli", s, r, load, a))
    log(f"  {s:.1f} s; llm-compressor")
    b = tmp / f"{model}-{slug}-llmcompressor"
    s, r, phases = run_peer(b)  # type: ignore[operator]
    stopped = not phases  # a finished job always writes its phases; a stopped one has none
    rows.append(Row(model, what, f"llm-compressor {LLMCOMPRESSOR_VERSION}", s, r, load, b, phases, stopped=stopped))
    log(f"  {s:.1f} s{' (stopped: --peer-timeout)' if stopped else ''}")


def fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def report(rows: list[Row], args: argparse.Namespace, gptq_chunks: int, loads: tuple[float, float]) -> str:
    lines = [f"## quantcli against llm-compressor ({dt.date.today()})", "",
             f"Written by `python -m benchmarks.llmcompressor_peer` (`make bench`). Machine: {machine()}; "
             f"{args.threads} threads for both (`--threads` and torch.set_num_threads, OMP_NUM_THREADS); one run "
             f"each, quantcli then the peer, back to back. Load average (1 min) at the start of each pair in the "
             f"table; {loads[0]:.1f} at the start of the run and {loads[1]:.1f} when this table was written. The peer is "
             f"llm-compressor {LLMCOMPRESSOR_VERSION} in its own venv (`make peers`), oneshot with a "
             "QuantizationModifier (RTN) or a GPTQModifier; its phases are its own timers (import, load, "
             "quantize, save). KLD: `quantcli verify FOLDER --source MODEL --data builtin:eval "
             f"--ctx {args.ctx} --chunks {args.eval_chunks}` on both folders (the evaluation text is not the "
             "calibration text); bench-llama-168m has random weights and is timed only.", "",
             "| model | scheme | writer | seconds | ratio | peak RSS MB | load | KLD mean | KLD 99% | PPL | same top-1 "
             "| same tensors | peer phases (s) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        for row in (a, b):
            q = row.quality
            ratio = f"{'< ' if b.stopped else ''}{a.seconds / b.seconds:.2f}x" if row is a else ""
            seconds = f"> {row.seconds:.0f} (stopped)" if row.stopped else f"{row.seconds:.1f}"
            rss = "" if row.stopped else f"{row.peak_rss_mb:.0f}"
            phases = " / ".join(f"{row.phases[k]:.0f}" for k in ("import", "load", "quantize", "save")) if row.phases else ""
            lines.append(f"| {row.model} | {row.what} | {row.writer} | {seconds} | {ratio} | "
                         f"{rss} | {row.load:.1f} | {fmt(q.get('kld_mean'), '.4f')} | "
                         f"{fmt(q.get('kld_p99'), '.3f')} | {fmt(q.get('ppl'), '.2f')} | "
                         f"{fmt(100 * q['same_top1'] if 'same_top1' in q else None, '.1f')}{' %' if q else ''} | "
                         f"{row.same_tensors} | {phases} |")
    gptq = [r for r in rows if "GPTQ" in r.what]
    if len(gptq) == 2 and gptq[1].stopped:
        lines += ["", f"llm-compressor's GPTQ ran past --peer-timeout ({gptq[1].seconds:.0f} s) and was stopped: its "
                      "time is a lower bound and the ratio an upper bound."]
    elif len(gptq) == 2:
        tokens = gptq_chunks * args.ctx
        a, b = gptq
        lines += ["", f"GPTQ calibrated on {gptq_chunks} x {args.ctx} = {tokens} tokens of `builtin:calibration` "
                      f"(the same ids for both): quantcli {1000 * a.seconds / tokens:.2f} ms per token, "
                      f"llm-compressor {1000 * b.seconds / tokens:.2f} ms per token (whole process; the peer's "
                      f"GPTQ alone {1000 * b.phases.get('quantize', 0) / tokens:.2f} ms per token). "
                      f"Ratio quantcli / peer: {a.seconds / b.seconds:.2f}x."]
        if gptq_chunks != 128:
            lines += ["", f"The issue asks for 128 sequences of 512 tokens; this run used {gptq_chunks} to fit the "
                          "time on the shared machine (`--gptq-chunks 128` runs the full size)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("docs/int-benchmarks.md"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gptq-chunks", type=int, default=128, help="Calibration sequences for GPTQ (0: no GPTQ rows).")
    ap.add_argument("--ctx", type=int, default=512, help="Tokens per calibration and evaluation sequence.")
    ap.add_argument("--eval-chunks", type=int, default=4, help="Chunks of builtin:eval that verify scores.")
    ap.add_argument("--skip-rtn", action="store_true", help="Only the GPTQ pair.")
    ap.add_argument("--peer-timeout", type=float, default=2400,
                    help="Stop the peer's GPTQ after this many seconds and report a lower bound (0: no limit).")
    args = ap.parse_args()
    os.environ["QUANTCLI_MODELS"] = str(args.models)
    peer_python()  # fail now, with the fix, rather than after the first quantcli runs
    threads = str(args.threads)
    env = {**os.environ, "QUANTCLI_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    start_load = os.getloadavg()[0]
    rows: list[Row] = []
    state = {"gptq_chunks": 0}

    def write() -> None:
        # after every step, so a run cut short still leaves what it measured
        replace_section(args.out, SECTION, report(rows, args, state["gptq_chunks"], (start_load, os.getloadavg()[0])))

    def score_last_pair() -> None:
        # right after the pair, outside its timing, so each pair's KLD is on the page as soon as it is known
        if not rows[-1].stopped:
            rows[-1].same_tensors = same_tensors(rows[-2].folder, rows[-1].folder, env)
        for row in rows[-2:]:
            if row.model == QUALITY_MODEL and not row.stopped:
                log(f"verify {row.folder.name}")
                row.quality = quality(row.folder, args.models / row.model, args.eval_chunks, args.ctx,
                                      args.threads, env)
        write()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_rtn:
            for model, group in MODELS:
                src = args.models / model
                for scheme, bits in SCHEMES:
                    pair(rows, model, f"{scheme} g{group} RTN",
                         lambda o, s=scheme, g=group, src=src: ours(src, o, s, g, args.threads, env),
                         lambda o, b=bits, g=group, src=src: peer(src, o, b, g, args.threads, env), tmp)
                    score_last_pair()
        if args.gptq_chunks:
            src = args.models / QUALITY_MODEL
            tokens = tmp / "calibration-tokens.npy"
            n = state["gptq_chunks"] = export_tokens(src, args.ctx, args.gptq_chunks, tokens, env)
            pair(rows, QUALITY_MODEL, f"W4A16 g64 GPTQ {n}x{args.ctx}",
                 lambda o: ours(src, o, "W4A16", 64, args.threads, env, (n, args.ctx)),
                 lambda o: peer(src, o, 4, 64, args.threads, env, tokens, args.peer_timeout or None), tmp)
            score_last_pair()
    print(report(rows, args, state["gptq_chunks"], (start_load, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
