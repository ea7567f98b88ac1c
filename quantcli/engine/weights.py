"""Where the engine's weights come from: an HF folder (safetensors) or a GGUF file of any type quantcli decodes.

Both sources hand out float32 arrays in the HF layout of the ModelSpec (rows and order as transformers holds
them), read when asked for, so the engine keeps only the block it is running. A GGUF tensor is dequantized and its
conversion transform undone: llama's q/k rope permutation is inverted. Norm weights are handed out as the factor
the forward pass multiplies by ("effective" scales): gemma's checkpoints store (w - 1), so the HF source adds 1
in float32 as transformers does, while a GGUF file already holds w.

    src = HFWeights.open(Path("SmolLM2-135M-Instruct"), spec)
    src.load(spec.tensor("attn_q", 0)).shape
    (576, 576)
"""
from __future__ import annotations

import json
import mmap
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import InputError, UnsupportedError
from ..io.checkpoint import Checkpoint
from ..io.gguf_layout import TensorSpan, read_layout
from ..io.safetensors import DTYPES, TensorInfo, to_float32
from ..models.base import IDENTITY, Architecture, adapter_for
from ..models.spec import ModelSpec, ModelTensor, checkpoint_names, spec_from_config
from ..models.transforms import AddOne, PermuteRope
from ..quant.base import quant_class


# Embedding rows are read one by one only when fewer than 1/ROW_READ_RATIO of the table are needed.
ROW_READ_RATIO = 32


def is_norm(role: str) -> bool:
    return role.endswith("_norm")


class WeightSource(ABC):
    """Float32 tensors of one model by ModelTensor; `name(t)` is the tensor's name in the source checkpoint."""

    spec: ModelSpec

    @abstractmethod
    def load(self, t: ModelTensor) -> np.ndarray:
        """The whole tensor, float32, HF layout, norms as effective scales."""

    @abstractmethod
    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        """Rows `index` of a matrix (embedding look-ups without reading the whole table)."""

    def name(self, t: ModelTensor) -> str:
        return t.hf_name

    def close(self) -> None:
        """Release file handles (GGUF maps); the source is unusable afterwards."""


def _check_shape(t: ModelTensor, shape: tuple[int, ...], where: str) -> None:
    if tuple(shape) != t.shape:
        raise InputError(f"{where}: tensor for {t.role} (block {t.layer}) has shape {tuple(shape)}, but config.json "
                         f"describes {t.shape}.", hint="The weights do not belong to this config.json; check the folder.")


class HFWeights(WeightSource):
    def __init__(self, ckpt: Checkpoint, spec: ModelSpec, adapter: Architecture) -> None:
        self.ckpt, self.spec = ckpt, spec
        self.names = checkpoint_names(adapter, spec, set(ckpt.tensors))
        for t in spec.tensors:
            _check_shape(t, ckpt.tensors[self.names[t.hf_name]].shape, str(ckpt.path))

    @classmethod
    def open(cls, folder: Path) -> "HFWeights":
        """The folder's weights; a folder whose config.json has a quantization_config is read through its
        format's dequantizer (engine/folder_weights.py), so Engine.from_hf runs quantized folders too."""
        ckpt = Checkpoint.open(Path(folder))
        if ckpt.config.get("quantization_config") is not None:
            from .folder_weights import QuantizedFolderWeights   # it subclasses this class: imported when needed

            return QuantizedFolderWeights.from_checkpoint(ckpt)
        adapter = adapter_for(ckpt.config, ckpt.path)
        return cls(ckpt, spec_from_config(ckpt.config, ckpt.path), adapter)

    def name(self, t: ModelTensor) -> str:
        return self.names[t.hf_name]

    def _finish(self, t: ModelTensor, a: np.ndarray) -> np.ndarray:
        if is_norm(t.role) and self.spec.numerics.norm_weight_offset:
            # transformers' gemma norm multiplies by (1.0 + w.float()): the same float32 addition
            a = a + np.float32(self.spec.numerics.norm_weight_offset)
        return np.ascontiguousarray(a, dtype=np.float32)

    def load(self, t: ModelTensor) -> np.ndarray:
        return self._finish(t, self.ckpt.read_f32(self.name(t)))

    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        info = self.ckpt.tensors[self.name(t)]
        if len(index) * ROW_READ_RATIO > info.shape[0]:
            return self.load(t)[index]  # most of the table is wanted: one sequential read beats many small ones
        # a read-only map for the gather: its pages belong to the page cache, not to this process's heap
        table = np.memmap(info.path, dtype=DTYPES[info.dtype], mode="r", offset=info.offset, shape=info.shape)
        try:
            picked = np.array(table[np.asarray(index, dtype=np.int64)])
        finally:
            del table
        return self._finish(t, to_float32(picked, info.dtype))


def _decode(span: TensorSpan, data: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_rows, row_bytes) uint8 of one GGUF tensor -> (n_rows, row length) float32."""
    n_per_row = span.shape[0]
    if span.qtype == GGMLQuantizationType.F32:
        return data.view(np.float32).reshape(n_rows, n_per_row)
    if span.qtype == GGMLQuantizationType.F16:
        return data.view(np.float16).reshape(n_rows, n_per_row).astype(np.float32)
    if span.qtype == GGMLQuantizationType.BF16:
        return to_float32(data.view(np.uint16).reshape(n_rows, n_per_row), "BF16")
    try:
        cls = quant_class(span.qtype)
    except KeyError:
        raise UnsupportedError(f"tensor {span.name!r} is {span.qtype.name}, which quantcli cannot decode.",
                               hint="Use a GGUF of a type quantcli writes (see `quantcli quantize --help`).") from None
    return cls.dequantize(data, n_per_row)


class GGUFWeights(WeightSource):
    """Tensors of a GGUF file, mapped to the spec's roles through the source folder's adapter."""

    def __init__(self, path: Path, spec: ModelSpec, adapter: Architecture, hf_names: dict[str, str]) -> None:
        self.path, self.spec, self.adapter, self.hf_names = Path(path), spec, adapter, hf_names
        layout = read_layout(self.path)
        arch = layout.values.get("general.architecture")
        if arch != adapter.arch_name:
            raise InputError(f"{path} is a {arch} model but its source folder's config.json describes "
                             f"{adapter.arch_name}.", hint="Pass the HF folder the GGUF file was converted from.")
        self.spans = {s.name: s for s in layout.tensors}
        self.gguf: dict[str, str] = {}
        for t in spec.tensors:
            g = adapter.gguf_name(t.hf_name)
            if g is None or g not in self.spans:
                raise InputError(f"{path} has no tensor for {t.role} of block {t.layer} ({g}).",
                                 hint="Pass the HF folder the GGUF file was converted from.")
            self.gguf[t.hf_name] = g
            _check_shape(t, tuple(reversed(self.spans[g].shape)), str(path))
        self._file = open(self.path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    @classmethod
    def open(cls, path: Path, source: Path) -> "GGUFWeights":
        source = Path(source)
        config_path = source / "config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {config_path} ({exc}).",
                             hint="`source` must be the HF folder the GGUF file was made from.") from exc
        adapter = adapter_for(config, source)
        spec = spec_from_config(config, source)
        # capture names are the source checkpoint's own when its weights are at hand
        names = {t.hf_name: t.hf_name for t in spec.tensors}
        if any(source.glob("*.safetensors")):
            names = checkpoint_names(adapter, spec, set(Checkpoint.open(source).tensors))
        return cls(path, spec, adapter, names)

    def name(self, t: ModelTensor) -> str:
        return self.hf_names[t.hf_name]

    def _raw(self, span: TensorSpan) -> np.ndarray:
        n_rows = span.n_elements // span.shape[0]
        return np.frombuffer(self._map, dtype=np.uint8, count=span.n_bytes,
                             offset=span.data_offset).reshape(n_rows, span.n_bytes // n_rows)

    def _undo(self, t: ModelTensor, g: str, a: np.ndarray) -> np.ndarray:
        info = TensorInfo(t.hf_name, "F32", t.shape, self.path, 0, 0)
        transform = self.adapter.transform_for(g, t.hf_name, info)
        if isinstance(transform, PermuteRope):
            # the inverse regrouping: pairs interleaved per head -> halves
            rows = a.shape[0]
            a = a.reshape(transform.n_head, rows // transform.n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        elif isinstance(transform, AddOne) or transform == IDENTITY:
            pass  # AddOne: the file holds the effective norm scale already
        else:
            raise UnsupportedError(f"the engine cannot undo the {transform.describe()} transform of {g}.",
                                   hint="Run the engine on the HF folder instead.")
        return np.ascontiguousarray(a, dtype=np.float32)

    def load(self, t: ModelTensor) -> np.ndarray:
        g = self.gguf[t.hf_name]
        span = self.spans[g]
        raw = self._raw(span)
        return self._undo(t, g, _decode(span, raw, raw.shape[0]).reshape(t.shape))

    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        g = self.gguf[t.hf_name]
        span = self.spans[g]
        raw = np.ascontiguousarray(self._raw(span)[np.asarray(index, dtype=np.int64)])
        return np.ascontiguousarray(_decode(span, raw, raw.shape[0]).reshape(len(index), *t.shape[1:]))

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # F32 weights still handed out are views of the map; it closes when they are gone
        self._file.close()
