"""A Hugging Face checkpoint folder: config.json plus single or sharded safetensors, opened lazily.

    ckpt = Checkpoint.open(Path("./SmolLM2-135M-Instruct"))
    ckpt.config["model_type"], len(ckpt.tensors)
    # -> ('llama', 272)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import load_json
from .safetensors import SafetensorsFile, TensorInfo, map_tensor, read_tensor, to_float32

INDEX_NAME = "model.safetensors.index.json"


def _load_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise InputError(f"{path.parent} has no {path.name}.",
                         hint=f"Point quantcli at a Hugging Face model folder that contains {what}.")
    data = load_json(path, what)
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object.", hint="Fix or re-download the file.")
    return data


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict
    tensors: dict[str, TensorInfo]

    @classmethod
    def open(cls, path: Path) -> "Checkpoint":
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path} is not a folder.",
                             hint="Give the path of a Hugging Face model folder (config.json + *.safetensors).")
        config = _load_json(path / "config.json", "config.json")
        index_path = path / INDEX_NAME
        if index_path.exists():
            weight_map = _load_json(index_path, "the shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{index_path} has no weight_map.", hint="Fix or re-download the index file.")
            bad = next((k for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
            if bad is not None:
                raise InputError(f"{index_path}: weight_map[{bad!r}] is {weight_map[bad]!r}, not a shard file name.",
                                 hint="Fix or re-download the index file.")
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            weight_map = None
        if not files:
            pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
            hint = ("This folder only has pickled weights (" + ", ".join(pickled[:3]) + "); convert them to "
                    "safetensors first, quantcli does not unpickle.") if pickled else "Download the model's .safetensors files."
            raise InputError(f"{path} holds no .safetensors weights.", hint=hint)
        tensors: dict[str, TensorInfo] = {}
        for name in files:
            if Path(name).name != name:
                raise InputError(f"{index_path} names a shard outside the folder: {name!r}.", hint="Fix the index file.")
            shard = path / name
            if not shard.exists():
                raise InputError(f"shard {name} listed in {INDEX_NAME} is missing.",
                                 hint="Download the missing shard (quantcli download) and run again.")
            for tname, info in SafetensorsFile.open(shard).tensors.items():
                if tname in tensors:
                    raise InputError(f"tensor {tname!r} appears in both {tensors[tname].path.name} and {name}.",
                                     hint="The checkpoint is inconsistent; re-download it.")
                if 0 in info.shape:
                    raise InputError(f"{shard}: tensor {tname!r} has shape {list(info.shape)}, with a zero-length dimension.",
                                     hint="A model weight cannot be empty; the checkpoint is damaged, re-download it.")
                tensors[tname] = info
        if weight_map is not None:
            missing = [t for t, f in weight_map.items() if t not in tensors or tensors[t].path.name != f]
            if missing:
                raise InputError(f"{INDEX_NAME} lists {len(missing)} tensors not found in their shard "
                                 f"(first: {missing[0]!r}).", hint="Re-download the checkpoint.")
        return cls(path, config, tensors)

    def read_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 in the stored shape; NaN/Inf are checked by the caller that knows the context."""
        info = self.tensors[name]
        return to_float32(read_tensor(info), info.dtype)

    def read_raw(self, name: str) -> np.ndarray:
        return read_tensor(self.tensors[name])

    def map_raw(self, name: str) -> np.ndarray:
        """read_raw()'s values, read-only, over the file's cached pages instead of a copy (io/safetensors.py,
        map_tensor): for a reader that only reads them and frees them soon, like the quantize stage."""
        return map_tensor(self.tensors[name])
