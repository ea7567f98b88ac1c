"""Weights of a quantized Hugging Face folder (compressed-tensors, bitsandbytes NF4, and whatever else
io/quantized_folder.READERS lists), for the engine.

A quantized Linear is dequantized by its format's reader when its block is loaded, to the dense weight the
format's loader rebuilds (compressed-tensors: rounded to the scale's dtype; NF4: to the model dtype), then run
in float32 like every other weight. Tensors stored dense (norms, embeddings, lm_head, biases) are read as from
any HF folder. Only the weights are quantized here: a W8A8 folder's dynamic int8 activations are not simulated
(docs/int-formats.md says what that leaves out).

HFWeights.open (and so Engine.from_hf) returns this source when config.json has a quantization_config:

    eng = Engine.from_hf(Path("smol-W4A16"))            # same call as for the dense source
    isinstance(eng.source, QuantizedFolderWeights)
    # -> True
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.checkpoint import Checkpoint
from ..io.quantized_folder import FolderReader, open_folder_reader
from ..models.base import Architecture, adapter_for
from ..models.spec import ModelSpec, ModelTensor, spec_from_config
from .weights import HFWeights, _check_shape, _hf_names


class QuantizedFolderWeights(HFWeights):
    def __init__(self, ckpt: Checkpoint, spec: ModelSpec, adapter: Architecture, reader: FolderReader) -> None:
        self.ckpt, self.spec, self.reader = ckpt, spec, reader
        # the folder's logical tensors: what is stored dense, and one `.weight` per quantized module
        quantized = {f"{m}.weight": m for m in reader.modules}
        present = (set(ckpt.tensors) - reader.stored_names()) | set(quantized)
        self.names = _hf_names(adapter, spec, present)
        self.quantized: dict[str, str] = {}
        for t in spec.tensors:
            name = self.names[t.hf_name]
            if name in quantized:
                self.quantized[name] = quantized[name]
                _check_shape(t, reader.modules[quantized[name]].shape, str(ckpt.path))
            else:
                _check_shape(t, ckpt.tensors[name].shape, str(ckpt.path))

    @classmethod
    def open(cls, folder: Path) -> "QuantizedFolderWeights":
        return cls.from_checkpoint(Checkpoint.open(Path(folder)))

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "QuantizedFolderWeights":
        reader = open_folder_reader(ckpt)
        if reader is None:
            raise InputError(f"{ckpt.path} has no quantization_config in its config.json.",
                             hint="Open a dense folder with HFWeights (Engine.from_hf does either).")
        return cls(ckpt, spec_from_config(ckpt.config, ckpt.path), adapter_for(ckpt.config, ckpt.path), reader)

    def load(self, t: ModelTensor) -> np.ndarray:
        module = self.quantized.get(self.name(t))
        if module is None:
            return super().load(t)
        return self._finish(t, self.reader.dense(module))

    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        if self.name(t) in self.quantized:
            return self.load(t)[np.asarray(index, dtype=np.int64)]   # a quantized table decodes whole
        return super().rows(t, index)
