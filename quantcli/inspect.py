"""What `quantcli inspect` shows, as plain data: metadata and tensors of a GGUF file or a safetensors folder."""
from __future__ import annotations

from pathlib import Path

from gguf import GGUFValueType

from .errors import InputError

_ARRAY_PREVIEW = 8


def _gguf_value(field) -> object:  # type: ignore[no-untyped-def]
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        n = len(field.data)
        items = [field.contents(i) for i in range(min(n, _ARRAY_PREVIEW))] if hasattr(field, "contents") else []
        return {"array_length": n, "first": items} if n > _ARRAY_PREVIEW else items
    return field.contents() if hasattr(field, "contents") else None


def describe(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        from .io.checkpoint import Checkpoint

        ckpt = Checkpoint.open(path)
        keys = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings", "torch_dtype", "dtype")
        tensors = [{"name": t.name, "type": t.dtype, "shape": list(t.shape), "bytes": t.nbytes, "file": t.path.name}
                   for t in ckpt.tensors.values()]
        return {"format": "safetensors", "metadata": {k: ckpt.config[k] for k in keys if k in ckpt.config},
                "tensors": tensors, "bytes": sum(t["bytes"] for t in tensors)}
    if not path.exists():
        raise InputError(f"{path} does not exist.", hint="Give a .gguf file or a model folder.")
    from gguf import GGUFReader

    from .errors import VerifyError

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf-py raises ValueError/struct errors/IndexError on hostile files
        raise VerifyError(f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}).",
                          hint="Re-create it with quantcli convert.") from exc
    metadata = {name: _gguf_value(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in t.shape], "bytes": int(t.n_bytes)}
               for t in reader.tensors]
    return {"format": "gguf", "metadata": metadata, "tensors": tensors, "bytes": path.stat().st_size}
