"""Weights of a quantized Hugging Face folder (compressed-tensors, bitsandbytes NF4, and whatever else
io/quantized_folder.READERS lists), for the engine.

A quantized Linear is dequantized by its format's reader when its block is loaded, to the dense weight the
format's loader rebuilds (compressed-tensors: rounded to the scale's dtype; NF4: to the model dtype), then run
in float32 like every other weight. Tensors stored dense (norms, embeddings, lm_head, biases) are read as from
any HF folder. A folder whose config also quantizes the Linear inputs (W8A8: dynamic symmetric int8 per token)
gets them rounded too, as its loader rounds them: the weight handed to the engine is an InputRoundingWeight,
which rounds the left operand of `x @ w.T` per row before the matmul (quant/int/activations.py).

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
from ..models.spec import ModelSpec, ModelTensor, checkpoint_names, spec_from_config
from ..quant.int.activations import TokenActivations, token_activations
from .weights import HFWeights, _check_shape


class InputRoundingWeight(np.ndarray):
    """A float32 Linear weight (out, in) whose matmul as the right operand, `x @ w.T`, first rounds x the way the
    folder's loader rounds the Linear's input (dynamic per-token integers).

    The engine computes every Linear as `x @ block.w[role].T` (engine/forward.py). Python gives a right operand
    whose type subclasses the left operand's the first try at `@`, so __rmatmul__ below runs instead of
    ndarray's own matmul; `.T` and other views keep the class (and its rounding) through __array_finalize__.
    Everything else about the array is an ordinary float32 weight."""

    rounding: TokenActivations | None

    @staticmethod
    def wrap(weight: np.ndarray, rounding: TokenActivations) -> "InputRoundingWeight":
        out = weight.view(InputRoundingWeight)
        out.rounding = rounding
        return out

    def __array_finalize__(self, obj: object) -> None:
        self.rounding = getattr(obj, "rounding", None)

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        w = self.view(np.ndarray)
        if self.rounding is None:
            return np.matmul(x, w)
        return np.matmul(self.rounding.fake_quantize(x), w)


class QuantizedFolderWeights(HFWeights):
    def __init__(self, ckpt: Checkpoint, spec: ModelSpec, adapter: Architecture, reader: FolderReader) -> None:
        self.ckpt, self.spec, self.reader = ckpt, spec, reader
        # the folder's logical tensors: what is stored dense, and one `.weight` per quantized module
        quantized = {f"{m}.weight": m for m in reader.modules}
        present = (set(ckpt.tensors) - reader.stored_names()) | set(quantized)
        self.names = checkpoint_names(adapter, spec, present)
        self.quantized: dict[str, str] = {}
        self.inputs: dict[str, TokenActivations] = {}     # module -> how its input is rounded, when it is
        for t in spec.tensors:
            name = self.names[t.hf_name]
            if name in quantized:
                self.quantized[name] = quantized[name]
                rounding = token_activations(reader.input_activations(quantized[name]), f"{ckpt.path}: {quantized[name]}")
                if rounding is not None:
                    self.inputs[quantized[name]] = rounding
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
        dense = self._finish(t, self.reader.dense(module))
        rounding = self.inputs.get(module)
        return dense if rounding is None else InputRoundingWeight.wrap(dense, rounding)

    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        if self.name(t) in self.quantized:
            # a quantized table decodes whole; its rows are embeddings, never a matmul's right operand
            return np.asarray(self.load(t))[np.asarray(index, dtype=np.int64)]
        return super().rows(t, index)
