"""What `quantcli inspect` shows, as plain data: metadata and tensors of a GGUF file, a safetensors file or a
Hugging Face model folder.

The kind of a file is read from its first bytes, not its name: GGUF files start with the GGUF magic, safetensors
files with an 8-byte header length followed by the JSON header's `{`. Shapes are given as each format stores
them: ggml order (row length first) for GGUF, as llama.cpp prints them; row-major (PyTorch) order for
safetensors, as transformers prints them.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .io.checkpoint import Checkpoint

ACCEPTED = "a .gguf file, a .safetensors file or a Hugging Face model folder"
CONFIG_KEYS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings", "torch_dtype", "dtype")


def describe(path: Path) -> dict:
    """{"format", "metadata", "tensors": [{name, type, shape, bytes, ...}], "bytes"} for `path`; a quantized
    folder adds "quantization" (format, scheme, group size, symmetric, ...) and "modules" (per quantized module:
    shape, bits, stored bytes, bits per weight)."""
    path = Path(path)
    if path.is_dir():
        return _describe_folder(path)
    from .stages.verify import file_magic, is_gguf_magic

    head = file_magic(path, ACCEPTED)
    if is_gguf_magic(head):
        return _describe_gguf(path)
    if len(head) == 8 and path.stat().st_size > 8 and _looks_like_safetensors(path):
        return _describe_safetensors(path)
    raise InputError(f"{path} is neither a GGUF nor a safetensors file (its first bytes are neither format's).",
                     hint=f"quantcli inspect takes {ACCEPTED}.")


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as fp:
        fp.seek(8)
        return fp.read(1) == b"{"


def _describe_folder(path: Path) -> dict:
    from .io.checkpoint import Checkpoint

    ckpt = Checkpoint.open(path)
    tensors = [{"name": t.name, "type": t.dtype, "shape": list(t.shape), "bytes": t.nbytes, "file": t.path.name}
               for t in ckpt.tensors.values()]
    metadata = {k: ckpt.config[k] for k in CONFIG_KEYS if k in ckpt.config}
    quantization = _quantization_summary(ckpt.config)
    if quantization:
        metadata["quantization"] = quantization
    info = {"format": "safetensors", "metadata": metadata, "tensors": tensors, "bytes": sum(t["bytes"] for t in tensors)}
    if ckpt.config.get("quantization_config") is not None:
        info.update(_quantized(ckpt))
    return info


def _quantized(ckpt: "Checkpoint") -> dict:
    """The scheme of a quantized folder (read through its format's reader, which also checks every quantized
    module's tensors against the config) and, per quantized module, its bits, stored bytes and bits per weight."""
    from .io.quantized_folder import folder_method, open_folder_reader

    reader = open_folder_reader(ckpt)
    assert reader is not None
    modules = [{"name": m.name, "shape": list(m.shape), "bits": m.bits, "bytes": m.stored_bytes(ckpt),
                "bits_per_weight": round(m.bits_per_weight(ckpt), 4)} for m in reader.modules.values()]
    weights = sum(m.shape[0] * m.shape[1] for m in reader.modules.values())
    stored = sum(m["bytes"] for m in modules)
    return {"quantization": {**reader.scheme, "method": folder_method(ckpt), "quantized_modules": len(modules), "quantized_bytes": stored,
                             "bits_per_weight": round(8.0 * stored / weights, 4) if weights else None},
            "modules": modules}


def _describe_safetensors(path: Path) -> dict:
    from .io.safetensors import SafetensorsFile

    st = SafetensorsFile.open(path)
    tensors = [{"name": t.name, "type": t.dtype, "shape": list(t.shape), "bytes": t.nbytes}
               for t in st.tensors.values()]
    return {"format": "safetensors", "metadata": dict(st.metadata), "tensors": tensors,
            "bytes": path.stat().st_size}


def _describe_gguf(path: Path) -> dict:
    # The layout scan's own error (exit 2) names the file, the byte and the fix; a damaged file given to
    # inspect is bad input, where verify would call it a failed check.
    from .io.gguf_layout import read_layout

    layout = read_layout(path)
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
    if qc.get("quant_method") in ("gptq", "awq"):
        group = qc.get("group_size")
        size = "per channel" if group in (-1, 0, None) else f"group {group}"
        extra = (f", {'symmetric' if qc.get('sym') else 'asymmetric'}, desc_act {qc.get('desc_act')}"
                 if qc["quant_method"] == "gptq" else f", {qc.get('version')}, zero point {qc.get('zero_point')}")
        return f"{qc['quant_method']} int{qc.get('bits')} {size}{extra}"
    groups = qc.get("config_groups") or {}
    parts = []
    for group in groups.values():
        w = group.get("weights") or {}
        size = "per channel" if w.get("strategy") == "channel" else f"group {w.get('group_size')}"
        acts = group.get("input_activations")
        parts.append(f"int{w.get('num_bits')} {'symmetric' if w.get('symmetric') else 'asymmetric'} {size}"
                     + (f", int{acts.get('num_bits')} {acts.get('strategy')} activations" if acts else ""))
    return f"{qc.get('quant_method')} {qc.get('format')}: " + "; ".join(parts) + f"; ignore {qc.get('ignore')}"
