"""How quantcli and llama.cpp's quantizer scale from one thread to two, and the serial part that limits quantcli.

With t(n) = S + P / gain(n), two thread counts give the serial part S. A 2-core VM does not double a fully
parallel job (its second vCPU is a hyperthread or shares the host), so gain(2) is measured rather than assumed:
llama-quantize is parallel over rows from start to end, so its own t1 / t2 is the machine's gain e, and
S = (e * t2 - t1) / (e - 1) for quantcli.
"""
from __future__ import annotations

import json
from pathlib import Path

from quantcli.quant.mixes import MIXES

from .measure import measure
from .peer import quantize_command

SCALING_TYPE = "Q4_K_M"


def serial_part(t1: float, t2: float, gain: float) -> float:
    """The serial seconds S of t = S + P/gain fitted through t(1) = t1 and t(2) = t2.

    >>> round(serial_part(22.8, 16.0, 1.75), 1)
    6.9
    """
    return (gain * t2 - t1) / (gain - 1.0)


def scaling_rows(models: list[Path], f16: dict[str, Path], work: Path, repeats: int,
                 quantcli_cmd, env_ours: dict[str, str]) -> list[dict]:  # type: ignore[no-untyped-def]
    """Per model: llama-quantize (from the F16 GGUF) and quantcli convert (from HF) at 1 and 2 threads."""
    rows = []
    ftype = int(MIXES[SCALING_TYPE].ftype)
    for model in models:
        peer = {n: measure("peer", quantize_command(f16[model.name], work / f"scale-peer-{n}.gguf", ftype, n), repeats)
                for n in (1, 2)}
        ours = {n: measure("ours", quantcli_cmd(model, work / f"scale-ours-{n}.gguf", SCALING_TYPE, n), repeats, env_ours)
                for n in (1, 2)}
        gain = peer[1].seconds / peer[2].seconds
        s = serial_part(ours[1].seconds, ours[2].seconds, gain)
        rows.append({"model": model.name, "llama.cpp 1t s": round(peer[1].seconds, 2),
                     "llama.cpp 2t s": round(peer[2].seconds, 2), "e (llama.cpp t1/t2)": round(gain, 2),
                     "quantcli 1t s": round(ours[1].seconds, 2), "quantcli 2t s": round(ours[2].seconds, 2),
                     "quantcli serial S s": round(s, 2), "S / quantcli 1t": round(s / ours[1].seconds, 3),
                     "ratio 1t": round(ours[1].seconds / peer[1].seconds, 3),
                     "ratio 2t": round(ours[2].seconds / peer[2].seconds, 3)})
        print(json.dumps(rows[-1]), flush=True)
        for p in work.glob("scale-*.gguf"):   # the outputs, not the F16 inputs
            p.unlink()
    return rows


def scaling_report(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    return ["", f"## Scaling: {SCALING_TYPE}, 1 and 2 threads", "",
            "quantcli converts from the HF folder; llama-quantize starts from the F16 GGUF (its conversion to F16 is",
            "not counted). e is llama-quantize's own gain from the second thread on this machine; S is quantcli's",
            "serial part fitted with that gain (benchmarks/scaling.py). With S small, more cores help quantcli as",
            "much as they help the peer.", "",
            "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|",
            *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)]
