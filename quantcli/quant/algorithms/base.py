"""The interface between a calibrated method and the rest of quantcli.

A calibrated method (GPTQ, AWQ) sees the model one block at a time through the engine's walk
(`quantcli.engine.Engine.blocks`), over all calibration sequences, and returns what it chose for the block's
tensors. The driver (stages/calibrated.py) spools those choices, puts their dequantized values back into the
step so later blocks are calibrated on the quantized earlier ones, and the pack stage writes them.

    class MyMethod:
        name = "mine"
        def process(self, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]: ...
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ...io.int_codes import IntCodes
from ...io.int_scheme import IntScheme
from .step import BlockStep      # the engine's BlockStep satisfies this Protocol; the engine sits above quant/


@dataclass(frozen=True)
class Chosen:
    """What a method decided for one tensor of the source checkpoint (by its HF name).

    Exactly one of `dense` and `codes` is set:
    - `codes`: the final integer encoding (GPTQ's column loop), written as it is; `g_idx` (int32, one entry per
      input column) says which scale group each column belongs to when the method reordered columns (act-order).
    - `dense`: float32 replacement values in HF layout. For a quantized Linear the pack stage encodes them with
      the plan's scheme by round-to-nearest (AWQ: scaled and clipped weights); for any other tensor they are
      written in the tensor's stored dtype (AWQ: a norm the scales were folded into). A norm's values are given
      as the checkpoint stores them (gemma's `w - 1`), not as the factor `BlockStep.weight` reports; the driver
      converts between the two with the spec's `numerics.norm_weight_offset`.
    """

    name: str
    dense: np.ndarray | None = None
    codes: IntCodes | None = None
    g_idx: np.ndarray | None = None

    def __post_init__(self) -> None:
        if (self.dense is None) == (self.codes is None):
            raise ValueError(f"{self.name}: a choice holds either dense values or codes")


class BlockMethod(Protocol):
    """A calibrated method, driven block by block."""

    name: str

    def process(self, step: BlockStep, targets: Mapping[str, IntScheme]) -> list[Chosen]:
        """Choose values for block `step.index`.

        `targets` maps the block's Linear weights that the plan quantizes to their scheme (ignored layers are
        absent). The method may call `step.forward`/`step.set_weight` as often as it needs (GPTQ re-captures the
        inputs of later sub-layers after quantizing earlier ones). Afterwards the driver sets every chosen
        tensor's dequantized value on the step, and the block's outputs with those weights feed the next block.
        """
        ...
