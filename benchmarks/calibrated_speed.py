"""Wall time and peak RSS of the calibrated conversions on SmolLM2-135M: GPTQ W4A16, AWQ and SplitQuantV2.

    python -m benchmarks.calibrated_speed --models /work/main/models --out docs/int-benchmarks.md \
        [--chunks 128] [--ctx 512] [--threads 2] [--group 64] [--only gptq,awq,splitquant]

Issue 9's measurement: GPTQ W4A16 on 128 sequences of 512 tokens of `builtin:calibration` on 2 threads, with AWQ
and SplitQuantV2 beside it. Group 64, since 128 does not divide SmolLM2's 576 input columns. Each conversion is
one `quantcli convert` child process (benchmarks/measure.py: wall time, and the child's peak RSS from wait4),
with `--verify none`, writing to a temporary folder. The load average is read before and after each run and
printed with the figures, since a shared machine slows every row. Only the part of --out between the two marker
lines is rewritten (appended when absent).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from .doc_section import replace_between, section_of
from .measure import run_once
from .run import machine

MODEL = "SmolLM2-135M-Instruct"
BEGIN, END = "<!-- calibrated-speed:begin (benchmarks/calibrated_speed.py) -->", "<!-- calibrated-speed:end -->"


def commands(source: Path, out: Path, chunks: int, ctx: int, threads: int, group: int) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "quantcli.cli.app", "convert", str(source)]
    calib = ["--calibrate", "builtin:calibration", "--ctx", str(ctx), "--chunks", str(chunks)]
    common = ["--threads", str(threads), "--verify", "none"]
    return {
        "gptq": cli + ["--format", "compressed-tensors", "--scheme", "W4A16", "--group-size", str(group),
                       "--method", "gptq", *calib, *common, "-o", str(out / "gptq")],
        "awq": cli + ["--format", "awq", "--group-size", str(group), "--method", "awq", *calib, *common,
                      "-o", str(out / "awq")],
        "splitquant": cli + ["--method", "splitquant", "--scheme", "W4A16", *common, "-o", str(out / "splitquant")],
    }


LABELS = {"gptq": "GPTQ W4A16 g{group}", "awq": "AWQ W4 g{group} (AWQ GEMM)",
          "splitquant": "SplitQuantV2 W4A16 per channel (no calibration)"}


HEADER = "| conversion | data | wall s | peak RSS MB | load before → after | measured (UTC) |"


def table(rows: list[str], chunks: int, ctx: int, threads: int) -> str:
    lines = [BEGIN, "", f"### Calibrated conversions: time and memory ({MODEL})", "",
             f"{chunks} sequences of {ctx} tokens of `builtin:calibration` where the method calibrates, "
             f"`--threads {threads}`, `--verify none`; {machine()}. Load average (1 min) before and after "
             "each run: other jobs on the machine slow every figure.", "",
             HEADER, "|---|---|---:|---:|---|---|", *rows,
             "", "Written by `python -m benchmarks.calibrated_speed` (part of `make bench`); a run with `--only` "
             "replaces its own rows and keeps the others.", "", END]
    return "\n".join(lines)


def earlier_rows(path: Path) -> dict[str, str]:
    """The table rows already in the page, by conversion label (a run with --only keeps the rows it skips)."""
    rows = {}
    for line in section_of(path, BEGIN, END).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and line != HEADER and len(cells) == HEADER.count("|") - 1:
            rows[cells[0]] = line
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/int-benchmarks.md"))
    ap.add_argument("--chunks", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--only", default="gptq,awq,splitquant")
    args = ap.parse_args(argv)
    source = args.models / MODEL
    rows = {label: line for label, line in earlier_rows(args.out).items() if label in
            {LABELS[k].format(group=args.group) for k in LABELS}}
    with tempfile.TemporaryDirectory(prefix="calibrated-speed-") as tmp:
        cmds = commands(source, Path(tmp), args.chunks, args.ctx, args.threads, args.group)
        for key in args.only.split(","):
            before = os.getloadavg()[0]
            sample = run_once(cmds[key])
            after = os.getloadavg()[0]
            data = "none" if key == "splitquant" else f"{args.chunks} x {args.ctx}"
            label = LABELS[key].format(group=args.group)
            when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
            rows[label] = (f"| {label} | {data} | {sample.seconds:.1f} | {sample.peak_rss_mb:.0f} | "
                           f"{before:.1f} → {after:.1f} | {when} |")
            print(f"{label}: {sample.seconds:.1f} s, {sample.peak_rss_mb:.0f} MB (load {before:.1f} -> {after:.1f})",
                  file=sys.stderr, flush=True)
            # after every row, so an interrupted run still leaves the rows it measured
            ordered = [rows[LABELS[k].format(group=args.group)] for k in LABELS
                       if LABELS[k].format(group=args.group) in rows]
            replace_between(args.out, BEGIN, END, table(ordered, args.chunks, args.ctx, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
