"""Widen a trained Llama checkpoint with zeros so that every block matrix's rows hold whole 256-value K-quant
super-blocks, without changing what the model computes.

    python -m benchmarks.widened_model --source models/SmolLM2-135M-Instruct --out models/SmolLM2-135M-wide768

Why: the only trained decoder a registry package ships here (SmolLM2-135M, hidden 576) has rows that K-quants do
not divide, so a K-quant mix stores most of its matrices in legacy fallback types. GPTQ's choice of which block
types to compensate (docs/gguf-gptq.md) was measured there; this model lets the same comparison run with every
block matrix in a K-quant, on trained weights.

How the function is kept:
- the hidden size is padded with zero dimensions at the end: embedding columns, every matrix's input columns,
  and the output rows of o_proj and down_proj are zero, so the residual stream stays zero there;
- RMSNorm averages over the wider vector, so each norm weight is scaled by sqrt(old/new) and the epsilon by
  old/new: x / sqrt(mean'(x^2) + eps') * w' then equals the original exactly in real arithmetic;
- query heads are added, one zero head at the end of each key/value group until the head count times head_dim
  is a multiple of 256: a zero query scores every key alike, and its output meets zero o_proj columns;
- the MLP width is padded with zero gate/up rows and zero down columns (silu(0) * 0 = 0).
The script checks the result with the engine: KL divergence against the source on one chunk of builtin:eval.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np

SUPER_BLOCK = 256


def up_to(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def query_heads(n_q: int, n_kv: int, head_dim: int, multiple: int) -> int:
    """The fewest query heads, at least n_q and a multiple of n_kv, whose total width is a multiple of `multiple`."""
    n = n_q
    while n % n_kv or (n * head_dim) % multiple:
        n += 1
    return n


def pad(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=w.dtype)
    out[tuple(slice(0, s) for s in w.shape)] = w
    return out


def head_rows(n_q: int, n_kv: int, new_q: int, head_dim: int) -> np.ndarray:
    """Where each original query head's rows go: head i of group j keeps its place in the wider group."""
    old_group, new_group = n_q // n_kv, new_q // n_kv
    heads = np.array([(i // old_group) * new_group + i % old_group for i in range(n_q)])
    return (heads[:, None] * head_dim + np.arange(head_dim)[None, :]).reshape(-1)


def widen(source: Path, out: Path, multiple: int = SUPER_BLOCK) -> dict[str, int]:
    """Write the widened checkpoint to `out`; every block matrix's row length becomes a multiple of `multiple`."""
    from safetensors.numpy import load_file, save_file

    config = json.loads((source / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise SystemExit(f"{source}: only llama checkpoints are widened here, not {config.get('model_type')}")
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    n_q, n_kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    head_dim = config.get("head_dim") or hidden // n_q
    new_hidden, new_inter = up_to(hidden, multiple), up_to(inter, multiple)
    new_q = query_heads(n_q, n_kv, head_dim, multiple)
    rows = head_rows(n_q, n_kv, new_q, head_dim)
    norm_scale = np.float32(math.sqrt(hidden / new_hidden))
    tensors = load_file(str(source / "model.safetensors"))
    wide: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        w = w.astype(np.float32)
        if name.endswith("norm.weight"):
            wide[name] = pad(w * norm_scale, (new_hidden,))
        elif name.endswith(("embed_tokens.weight", "lm_head.weight")):
            wide[name] = pad(w, (w.shape[0], new_hidden))
        elif name.endswith("q_proj.weight"):
            q = np.zeros((new_q * head_dim, new_hidden), dtype=np.float32)
            q[rows, :hidden] = w
            wide[name] = q
        elif name.endswith(("k_proj.weight", "v_proj.weight")):
            wide[name] = pad(w, (w.shape[0], new_hidden))
        elif name.endswith("o_proj.weight"):
            o = np.zeros((new_hidden, new_q * head_dim), dtype=np.float32)
            o[:hidden, rows] = w
            wide[name] = o
        elif name.endswith(("gate_proj.weight", "up_proj.weight")):
            wide[name] = pad(w, (new_inter, new_hidden))
        elif name.endswith("down_proj.weight"):
            wide[name] = pad(w, (new_hidden, new_inter))
        else:
            raise SystemExit(f"{name}: no rule to widen this tensor")
    out.mkdir(parents=True)
    save_file(wide, str(out / "model.safetensors"))
    config.update(hidden_size=new_hidden, intermediate_size=new_inter, num_attention_heads=new_q,
                  head_dim=head_dim, rms_norm_eps=config["rms_norm_eps"] * hidden / new_hidden,
                  torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for f in source.iterdir():
        if f.name not in ("config.json", "model.safetensors") and f.is_file():
            shutil.copy(f, out / f.name)
    return {"hidden": new_hidden, "intermediate": new_inter, "query_heads": new_q}


def check(source: Path, out: Path, threads: int) -> float:
    """Mean KL divergence of the widened model against the source on one 512-token chunk of builtin:eval."""
    from quantcli.engine import Engine
    from quantcli.stages.calibration_data import load_calibration_text
    from quantcli.stages.eval_text import SpecialIds, text_tokens
    from quantcli.stages.perplexity import chunk_tokens
    from quantcli.stages.verify_model import score_outputs

    src = Engine.from_hf(source, threads=threads)
    special = SpecialIds(bos=None)
    chunks = chunk_tokens(text_tokens(source, load_calibration_text("builtin:eval").text, special), 512, 1)
    return score_outputs(src, [Engine.from_hf(out, threads=threads)], chunks, None)[0].kld_mean


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or choose another --out")
    shape = widen(args.source, args.out)
    kld = check(args.source, args.out, args.threads)
    print(f"{args.out}: {shape}; KLD against {args.source} on 512 tokens of builtin:eval: {kld:.3e}")


if __name__ == "__main__":
    main()
