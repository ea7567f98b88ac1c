"""How quantcli and llama.cpp's quantizer scale from one thread to two, and the serial part that limits quantcli.

With t(n) = S + P / gain(n), two thread counts give the serial part S. A 2-core VM does not double a fully
parallel job (its second vCPU is a hyperthread or shares the host), so gain(2) is measured rather than assumed:
llama-quantize is parallel over rows from start to end, so its own t1 / t2 is the machine's gain e, and
S = (e * t2 - t1) / (e - 1) for quantcli.

`make bench` writes the table into docs/benchmarks.md with the rest; on its own:

    python -m benchmarks.scaling [--models models] [--repeats 3] [--only bench-llama-1b]
                                 [--llama-quantize PATH] [--doc docs/benchmarks.md]

prints the section (with the date and the load average, which on a shared machine says how far to trust the
seconds) and with --doc replaces what is between the file's scaling markers (benchmarks/doc_section.py), keeping
the prose around them.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Callable

from quantcli.quant.mixes import MIXES

from .doc_section import replace_section
from .measure import measure, run_once
from .peer import quantize_command

SCALING_TYPE = "Q4_K_M"
SECTION = "scaling"     # the marker name of this table's section in docs/benchmarks.md


def serial_part(t1: float, t2: float, gain: float) -> float:
    """The serial seconds S of t = S + P/gain fitted through t(1) = t1 and t(2) = t2.

    >>> round(serial_part(22.8, 16.0, 1.75), 1)
    6.9
    """
    return (gain * t2 - t1) / (gain - 1.0)


PeerCommand = Callable[[Path, Path, int, int], list[str]]


def binary_quantize_command(binary: Path) -> PeerCommand:
    """llama.cpp's own llama-quantize executable instead of llama-cpp-python's binding of the same function."""
    def command(src: Path, dst: Path, ftype: int, threads: int) -> list[str]:
        return [str(binary), str(src), str(dst), str(ftype), str(threads)]
    return command


def _timed(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one run of `cmd`, whose output `out` is deleted after it."""
    try:
        return run_once(cmd, env).seconds
    finally:
        out.unlink(missing_ok=True)   # one output on disk at a time: a shared disk may not hold four


def scaling_rows(models: list[Path], f16: dict[str, Path], work: Path, repeats: int,
                 quantcli_cmd, env_ours: dict[str, str],  # type: ignore[no-untyped-def]
                 peer_cmd: PeerCommand = quantize_command) -> list[dict]:
    """Per model and repeat: llama-quantize (from the F16 GGUF) at 1 and 2 threads, then quantcli convert (from HF)
    at 1 and 2 threads, one after the other, and S fitted from that repeat's four times.

    Each repeat is its own quadruple because the machine drifts: a 2-vCPU VM's second core gives more or less
    depending on its neighbours, and the same command's 2-thread time moved by 20 % over ten minutes here. Running
    all 1-thread repeats of one tool before all its 2-thread repeats put that drift into e and S; pairing them
    within a minute keeps a drift out of each quadruple, and the medians of the per-repeat figures are reported.
    """
    rows = []
    ftype = int(MIXES[SCALING_TYPE].ftype)
    for model in models:
        runs = []
        for _ in range(repeats):
            t = {f"peer{n}": _timed(peer_cmd(f16[model.name], work / f"scale-peer-{n}.gguf", ftype, n),
                                    work / f"scale-peer-{n}.gguf") for n in (1, 2)}
            t.update({f"ours{n}": _timed(quantcli_cmd(model, work / f"scale-ours-{n}.gguf", SCALING_TYPE, n),
                                         work / f"scale-ours-{n}.gguf", env_ours) for n in (1, 2)})
            t["e"] = t["peer1"] / t["peer2"]
            t["S"] = serial_part(t["ours1"], t["ours2"], t["e"])
            runs.append(t)
            print(json.dumps({"model": model.name, **{k: round(v, 2) for k, v in t.items()}}), flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        s_all = sorted(r["S"] for r in runs)
        rows.append({"model": model.name, "llama.cpp 1t s": round(med["peer1"], 2),
                     "llama.cpp 2t s": round(med["peer2"], 2), "e (llama.cpp t1/t2)": round(med["e"], 2),
                     "quantcli 1t s": round(med["ours1"], 2), "quantcli 2t s": round(med["ours2"], 2),
                     "quantcli serial S s": round(med["S"], 2),
                     "S per repeat, low..high": f"{s_all[0]:.2f}..{s_all[-1]:.2f}",
                     "S / quantcli 1t": round(med["S"] / med["ours1"], 3),
                     "ratio 1t": round(med["ours1"] / med["peer1"], 3),
                     "ratio 2t": round(med["ours2"] / med["peer2"], 3)})
        print(json.dumps(rows[-1]), flush=True)
        for p in work.glob("scale-*.gguf"):   # the outputs, not the F16 inputs
            p.unlink()
    return rows


def scaling_report(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    return [f"## Scaling: {SCALING_TYPE}, 1 and 2 threads", "",
            "quantcli converts from the HF folder; llama-quantize starts from the F16 GGUF (its conversion to F16 is",
            "not counted). e is llama-quantize's own gain from the second thread on this machine; S is quantcli's",
            "serial part fitted with that gain (benchmarks/scaling.py). With S small, more cores help quantcli as",
            "much as they help the peer. Each repeat runs the four commands back to back and fits its own e and S;",
            "the columns are the medians over the repeats (S's own median, not S of the median times).", "",
            "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)]


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    from .run import machine, quantcli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("QUANTCLI_MODELS", "models")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", action="append", help="A model folder name (repeatable); default both bench models.")
    ap.add_argument("--llama-quantize", type=Path, help="llama.cpp's llama-quantize executable (default: "
                                                          "llama-cpp-python's binding of the same quantizer).")
    ap.add_argument("--doc", type=Path, help="Replace the scaling section of this file (docs/benchmarks.md).")
    args = ap.parse_args()
    names = args.only or ["bench-llama-168m", "bench-llama-1b"]
    chosen = [args.models / n for n in names if (args.models / n).is_dir()]
    if not chosen:
        raise SystemExit(f"none of {', '.join(names)} is under {args.models}")
    env_ours = {"QUANTCLI_NO_PROGRESS": "1"}
    peer_cmd = binary_quantize_command(args.llama_quantize) if args.llama_quantize else quantize_command
    work = Path(tempfile.mkdtemp(prefix="quantcli-scaling-"))
    try:
        f16 = {}
        for model in chosen:
            f16[model.name] = work / f"f16-{model.name}.gguf"
            measure("f16", quantcli(model, f16[model.name], "F16", 2), 1, env_ours)
        load_before = load_average()
        rows = scaling_rows(chosen, f16, work, args.repeats, quantcli, env_ours, peer_cmd)
        peer = f"llama.cpp's llama-quantize ({args.llama_quantize})" if args.llama_quantize else \
            "llama.cpp's quantizer through llama-cpp-python"
        section = scaling_report(rows) + [
            "", f"Measured {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine()}; peer: "
                f"{peer}; medians of {args.repeats} repeats; load average (1, 5, 15 min) {load_before} before and "
                f"{load_average()} after the runs."]
        print("\n".join(section))
        if args.doc:
            replace_section(args.doc, SECTION, "\n".join(section))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
