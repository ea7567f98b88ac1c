"""Reading GGUF files in tests through quantcli's layout scan.

gguf-py's GGUFReader decodes every vocabulary entry into numpy objects: about five seconds per file for the
49k-token test models, which made up most of the oracle suite's time. Tests that only need tensor types,
shapes, bytes or scalar metadata read them here; tests about gguf-py compatibility keep using GGUFReader.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gguf import GGMLQuantizationType

from quantcli.io.gguf_layout import read_layout


class StoredTensor(NamedTuple):
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]       # ggml order (row length first), as GGUFReader's tensor.shape
    data: bytes


def stored_tensors(path: Path) -> dict[str, StoredTensor]:
    """Tensor name -> type, shape and the exact stored bytes."""
    layout = read_layout(path)
    out: dict[str, StoredTensor] = {}
    with open(path, "rb") as fp:
        for t in layout.tensors:
            fp.seek(t.data_offset)
            out[t.name] = StoredTensor(t.qtype, t.shape, fp.read(t.n_bytes))
    return out


def tensor_types(path: Path) -> dict[str, GGMLQuantizationType]:
    return {t.name: t.qtype for t in read_layout(path).tensors}


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in read_layout(path).tensors}


def scalar_metadata(path: Path) -> dict[str, object]:
    """Every scalar and string metadata value (arrays are left out)."""
    return dict(read_layout(path).values)
