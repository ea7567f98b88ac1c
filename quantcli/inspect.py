"""What `quantcli inspect` shows, as plain data: metadata and tensors of a GGUF file or a safetensors folder."""
from __future__ import annotations

from pathlib import Path

from .errors import InputError


def describe(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        from .io.checkpoint import Checkpoint

        ckpt = Checkpoint.open(path)
        keys = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings", "torch_dtype", "dtype")
        tensors = [{"name": t.name, "type": t.dtype, "shape": list(t.shape), "bytes": t.nbytes, "file": t.path.name}
                   for t in ckpt.tensors.values()]
        metadata = {k: ckpt.config[k] for k in keys if k in ckpt.config}
        quantization = _quantization_summary(ckpt.config)
        if quantization:
            metadata["quantization"] = quantization
        return {"format": "safetensors", "metadata": metadata,
                "tensors": tensors, "bytes": sum(t["bytes"] for t in tensors)}
    if not path.exists():
        raise InputError(f"{path} does not exist.", hint="Give a .gguf file or a model folder.")
    from .stages.verify import open_layout

    layout = open_layout(path)
    metadata: dict[str, object] = {}
    for kv in layout.kvs:
        if kv.key in layout.array_lengths:
            n, head = layout.array_lengths[kv.key], layout.array_heads[kv.key]
            metadata[kv.key] = {"array_length": n, "first": head} if n > len(head) else head
        else:
            metadata[kv.key] = layout.values[kv.key]
    tensors = [{"name": t.name, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.n_bytes}
               for t in layout.tensors]
    return {"format": "gguf", "metadata": metadata, "tensors": tensors, "bytes": layout.size}


def _quantization_summary(config: dict) -> str | None:
    """One line for a quantized folder's quantization_config (compressed-tensors or bitsandbytes)."""
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    if qc.get("quant_method") == "bitsandbytes":
        kind = "nf4" if qc.get("bnb_4bit_quant_type") == "nf4" else str(qc.get("bnb_4bit_quant_type"))
        return f"bitsandbytes {kind}, double quant {'on' if qc.get('bnb_4bit_use_double_quant') else 'off'}"
    groups = qc.get("config_groups") or {}
    parts = []
    for group in groups.values():
        w = group.get("weights") or {}
        size = "per channel" if w.get("strategy") == "channel" else f"group {w.get('group_size')}"
        acts = group.get("input_activations")
        parts.append(f"int{w.get('num_bits')} {'symmetric' if w.get('symmetric') else 'asymmetric'} {size}"
                     + (f", int{acts.get('num_bits')} {acts.get('strategy')} activations" if acts else ""))
    return f"{qc.get('quant_method')} {qc.get('format')}: " + "; ".join(parts) + f"; ignore {qc.get('ignore')}"
