"""Time and peak RSS of quantcli writing INT4/INT8 safetensors folders, against the peer that runs here:
bitsandbytes' own NF4 quantization through transformers (load with BitsAndBytesConfig on the CPU, save_pretrained).
llm-compressor's oneshot needs a venv of its own (it pins other transformers/compressed-tensors versions); it is
measured by benchmarks/llmcompressor_peer.py, which owns another section of the same page.

    python -m benchmarks.int_formats --models models --out docs/int-benchmarks.md [--threads 2]

Each command runs once as its own process, one after the other, same threads, same machine. Only the section
between this module's markers in --out is rewritten.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from .doc_section import replace_section
from .measure import measure
from .run import machine

SECTION = "int-formats"
MODELS = ("bench-llama-168m", "SmolLM2-135M-Instruct")
# (label, extra quantcli arguments); SmolLM2's 576-wide rows take groups of 64, not 128.
OUTPUTS = (("W4A16 RTN", ["--format", "compressed-tensors", "--scheme", "W4A16"]),
           ("W8A16 RTN", ["--format", "compressed-tensors", "--scheme", "W8A16"]),
           ("NF4", ["--format", "bnb-nf4"]))

PEER_NF4 = """
import sys, torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
torch.set_num_threads(int(sys.argv[3]))
cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], quantization_config=cfg, device_map="cpu")
model.save_pretrained(sys.argv[2])
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=Path("models"))
    ap.add_argument("--out", type=Path, default=Path("docs/int-benchmarks.md"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "QUANTCLI_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            src = args.models / model
            group = ["--group-size", "64"] if model.startswith("SmolLM2") else []
            for label, extra in OUTPUTS:
                out = Path(tmp) / f"{model}-{label.split()[0]}"
                cmd = [sys.executable, "-m", "quantcli.cli.app", "convert", str(src), *extra,
                       *(group if "compressed-tensors" in extra else []), "--verify", "none",
                       "--threads", str(args.threads), "-o", str(out)]
                m = measure(f"quantcli {label}", cmd, 1, env)
                rows.append((model, m.label, m.seconds, m.peak_rss_mb))
            peer = measure("transformers + bitsandbytes NF4", [sys.executable, "-c", PEER_NF4, str(src),
                                                                str(Path(tmp) / f"{model}-peer"), str(args.threads)], 1, env)
            rows.append((model, peer.label, peer.seconds, peer.peak_rss_mb))
    lines = [f"## quantcli against bitsandbytes NF4 ({dt.date.today()})", "", f"Machine: {machine()}; "
             f"{args.threads} threads; one run each.", "", "| model | writer | seconds | peak RSS MB |", "|---|---|---|---|"]
    lines += [f"| {m} | {label} | {s:.2f} | {r:.0f} |" for m, label, s, r in rows]
    replace_section(args.out, SECTION, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
