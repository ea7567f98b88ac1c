"""A WeightSource for SplitQuantV2's three-branch folders (formats/splitquant.md): each split Linear weight is the
masked sum of its three dequantized INT4 branches, computed in float32 when the engine asks for it; every other
tensor is read as from an ordinary HF folder.

    engine = Engine(SplitWeights.open(Path("model-splitquant-branches")), threads=2)
    engine = Engine(open_folder(path))        # either kind of folder: dense (plain HF) or branches
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import splitquant as sq
from ..io.checkpoint import Checkpoint
from ..models.base import Architecture, adapter_for
from ..models.spec import ModelSpec, ModelTensor, checkpoint_names, spec_from_config
from .weights import HFWeights, WeightSource, _check_shape


def _block(config: dict[str, Any], path: Path) -> dict[str, Any]:
    block = config.get(sq.SPLIT_KEY)
    if not isinstance(block, dict):
        raise InputError(f"{path} is not a SplitQuantV2 branch folder (config.json has no {sq.SPLIT_KEY!r} block).",
                         hint="Open it with Engine.from_hf, or write one with --method splitquant --splitquant-branches.")
    if block.get("version") != sq.LAYOUT_VERSION or block.get("branches") != sq.BRANCHES:
        raise InputError(f"{path}: splitquant layout version {block.get('version')!r} with {block.get('branches')!r} "
                         f"branches is not one this quantcli reads (version {sq.LAYOUT_VERSION}, {sq.BRANCHES} branches).",
                         hint="Convert the model again with this quantcli.")
    return block


class SplitWeights(HFWeights):
    """HFWeights whose split modules' weights are rebuilt from their branches."""

    def __init__(self, ckpt: Checkpoint, spec: ModelSpec, adapter: Architecture) -> None:
        self.ckpt, self.spec = ckpt, spec
        self.block = _block(ckpt.config, ckpt.path)
        self.split = {f"{m}.weight": m for m in self.block["modules"]}
        for name, module in self.split.items():
            if sq.ids_name(module) not in ckpt.tensors:
                raise InputError(f"{ckpt.path}: module {module} is listed as split but has no {sq.IDS_SUFFIX} tensor.",
                                 hint="The folder is incomplete; convert the model again.")
        self.names = checkpoint_names(adapter, spec, set(ckpt.tensors) | set(self.split))
        for t in spec.tensors:
            name = self.names[t.hf_name]
            if name not in self.split:
                _check_shape(t, ckpt.tensors[name].shape, str(ckpt.path))

    @classmethod
    def open(cls, folder: Path) -> "SplitWeights":
        ckpt = Checkpoint.open(Path(folder))
        return cls(ckpt, spec_from_config(ckpt.config, ckpt.path), adapter_for(ckpt.config, ckpt.path))

    def load(self, t: ModelTensor) -> np.ndarray:
        name = self.name(t)
        module = self.split.get(name)
        if module is None:
            return super().load(t)
        if len(t.shape) != 2:
            raise InputError(f"{self.ckpt.path}: split module {module} is not a matrix in this model.",
                             hint="The folder does not belong to this config.json.")
        rows, n = t.shape
        got = tuple(self.ckpt.tensors[sq.ids_name(module)].shape)
        if got != (rows, -(-n // 4)):
            raise InputError(f"{self.ckpt.path}: {sq.ids_name(module)} has shape {got}, but config.json describes a "
                             f"{rows}x{n} weight.", hint="The folder does not belong to this config.json.")
        return sq.dequantize_module(self.ckpt.read_raw, module, (rows, n), self.block)

    def rows(self, t: ModelTensor, index: np.ndarray) -> np.ndarray:
        if self.name(t) in self.split:
            return self.load(t)[np.asarray(index, dtype=np.int64)]
        return super().rows(t, index)


def open_folder(folder: Path) -> WeightSource:
    """The weight source of an HF folder: SplitWeights for a three-branch folder, HFWeights otherwise."""
    ckpt = Checkpoint.open(Path(folder))
    if sq.SPLIT_KEY in ckpt.config:
        return SplitWeights(ckpt, spec_from_config(ckpt.config, ckpt.path), adapter_for(ckpt.config, ckpt.path))
    return HFWeights(ckpt, spec_from_config(ckpt.config, ckpt.path), adapter_for(ckpt.config, ckpt.path))
