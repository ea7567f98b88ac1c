"""What a calibrated method needs from one block of the engine's layer-sequential walk, stated below the engine.

The engine (quantcli/engine/forward.py) sits above quant/ in the layers, so a method cannot import its BlockStep,
not even for a type. `BlockStep` here is a Protocol with the members GPTQ and AWQ use; the engine's class has
them with the same signatures and so satisfies it structurally, without naming it. tests/quant/test_block_step.py
compares the two member by member, so a change to either side that breaks the match fails there.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np

from ...models.spec import ModelSpec

# capture(name, x): receives the input x [tokens, in] of linear `name` as the block runs
Capture = Callable[[str, np.ndarray], None]


class BlockStep(Protocol):
    """Block `index` of the walk: its inputs for every calibration sequence, its weights by checkpoint tensor
    name, and ways to run all of it or one sub-layer. docs/engine.md "Walking the blocks" has the semantics."""

    index: int
    inputs: np.ndarray              # [n_seq, ctx, hidden] float32, read only

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def names(self) -> dict[str, str]: ...

    @property
    def linears(self) -> list[str]: ...

    def role(self, name: str) -> str: ...

    def weight(self, name: str) -> np.ndarray: ...

    def set_weight(self, name: str, value: np.ndarray) -> None: ...

    def walk(self, capture: Capture | None = None,
             on_group: Callable[[list[str]], None] | None = None) -> np.ndarray: ...

    def attention(self, h: np.ndarray, *, weights: Mapping[str, np.ndarray] | None = None,
                  sequences: slice | None = None) -> np.ndarray: ...

    def mlp(self, h: np.ndarray, *, weights: Mapping[str, np.ndarray] | None = None) -> np.ndarray: ...

    def forward(self, x: np.ndarray | None = None, *, capture: Capture | None = None,
                sequences: slice | None = None) -> np.ndarray: ...
