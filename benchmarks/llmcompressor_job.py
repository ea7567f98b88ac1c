"""One llm-compressor run, executed by the peer venv's interpreter (benchmarks/peer_venv.py), never imported by
quantcli's side: it needs llm-compressor's own transformers and compressed-tensors.

    PEER_PYTHON benchmarks/llmcompressor_job.py MODEL OUT --bits 4 --group 64 --threads 2 --times t.json
    PEER_PYTHON benchmarks/llmcompressor_job.py MODEL OUT --bits 4 --group 64 --gptq tokens.npy --threads 2 ...

Without --gptq: oneshot with a QuantizationModifier (round to nearest, the default min-max observer, no data).
With --gptq: oneshot with a GPTQModifier (its defaults: blocks of 128 columns, dampening 0.01, static act-order)
over the [n, ctx] token ids in the .npy file, in order, unshuffled, each sequence whole. Either way every Linear but
lm_head gets symmetric integer weights of --bits with groups of --group, and the model is saved compressed
(pack-quantized compressed-tensors) with the source's tokenizer files. --times receives the seconds of each
phase (import, load, quantize, save), so the report can tell start-up cost from the work.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

START = time.perf_counter()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--group", type=int, required=True)
    ap.add_argument("--gptq", help="An .npy of [n, ctx] int token ids: calibrate GPTQ on exactly these.")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--times", required=True)
    args = ap.parse_args()

    import numpy as np
    import torch
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    times = {"import": time.perf_counter() - START}

    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    times["load"] = time.perf_counter() - t

    weights = QuantizationArgs(num_bits=args.bits, type="int", symmetric=True, strategy="group",
                               group_size=args.group)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    t = time.perf_counter()
    if args.gptq:
        from datasets import Dataset

        ids = np.load(args.gptq)
        data = Dataset.from_dict({"input_ids": ids.astype(np.int64).tolist(),
                                  "attention_mask": np.ones_like(ids, dtype=np.int64).tolist()})
        # the ids are already tokenized; oneshot still wants a processor to hand its data pipeline
        oneshot(model=model, processor=AutoTokenizer.from_pretrained(args.model), dataset=data,
                recipe=GPTQModifier(config_groups=groups, ignore=["lm_head"]),
                num_calibration_samples=len(ids), max_seq_length=ids.shape[1], shuffle_calibration_samples=False)
    else:
        oneshot(model=model, recipe=QuantizationModifier(config_groups=groups, ignore=["lm_head"]))
    times["quantize"] = time.perf_counter() - t

    t = time.perf_counter()
    model.save_pretrained(args.out, save_compressed=True)
    # the tokenizer files as they are (a sentencepiece model would need a package this venv does not have)
    for name in TOKENIZER_FILES:
        if (Path(args.model) / name).is_file():
            shutil.copy2(Path(args.model) / name, Path(args.out) / name)
    times["save"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - START
    with open(args.times, "w", encoding="utf-8") as f:
        json.dump(times, f)


if __name__ == "__main__":
    main()
