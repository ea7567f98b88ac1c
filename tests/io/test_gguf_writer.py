"""The streaming GGUF writer: gguf-py's reader reads back what it wrote; misuse and failures leave no file."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from quantcli.io.gguf_writer import GGUFStreamWriter, TensorInfo, planned_size
from quantcli.io.gguf_metadata import kv_array, kv_f32, kv_str, kv_u32

META = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 2), kv_f32("llama.rope.freq_base", 1e4),
        kv_array("tokenizer.ggml.tokens", ["a", "b", "ü"], GGUFValueType.STRING),
        kv_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0], GGUFValueType.FLOAT32)]


def test_round_trip_through_gguf_py(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(64, dtype=np.float16).reshape(2, 32)
    infos = [TensorInfo("a", (3, 2), GGMLQuantizationType.F32), TensorInfo("b", (32, 2), GGMLQuantizationType.F16)]
    out = tmp_path / "x.gguf"
    with GGUFStreamWriter(out, META, infos) as w:
        w.write_tensor("a", a)
        w.write_tensor("b", b)
        w.commit()
    assert out.stat().st_size == planned_size(META, infos)
    r = GGUFReader(out)
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "ü"]
    np.testing.assert_array_equal(np.asarray(r.tensors[0].data), a)
    np.testing.assert_array_equal(np.asarray(r.tensors[1].data), b)
    assert all(t.data_offset % 32 == 0 for t in r.tensors)


def test_out_of_order_tensor_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), GGMLQuantizationType.F32), TensorInfo("b", (4,), GGMLQuantizationType.F32)]
    out = tmp_path / "x.gguf"
    with pytest.raises(RuntimeError, match="expects 'a' next"):
        with GGUFStreamWriter(out, META, infos) as w:
            w.write_tensor("b", np.zeros(4, np.float32))
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_and_early_commit_are_refused(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), GGMLQuantizationType.F32)]
    with pytest.raises(RuntimeError, match="plan says 16"):
        with GGUFStreamWriter(tmp_path / "x.gguf", META, infos) as w:
            w.write_tensor("a", np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="after 0 of 1"):
        with GGUFStreamWriter(tmp_path / "y.gguf", META, infos) as w:
            w.commit()
    assert list(tmp_path.iterdir()) == []


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    infos = [TensorInfo("a", (4,), GGMLQuantizationType.F32)] * 2
    with pytest.raises(ValueError, match="planned twice"):
        GGUFStreamWriter(tmp_path / "x.gguf", META, infos)


@pytest.mark.parametrize("strings", [
    ["a", "b", "ü"],
    [""],
    ["", "", "x"],
    ["\u2581the", "<0x0A>", "日本語", "x" * 300, "", "\U0001F600"],
    [],
])
def test_string_arrays_are_laid_out_as_gguf_py_writes_them(strings: list[str]) -> None:
    # the vectorised string-array encoder against the format written out one field at a time: key, u32 ARRAY,
    # u32 element type, u64 count, then (u64 length, UTF-8 bytes) per string
    import struct

    from quantcli.io.gguf_writer import encode_metadata, metadata_nbytes

    kv = [kv_array("tokenizer.ggml.tokens", strings, GGUFValueType.STRING)]
    key = b"tokenizer.ggml.tokens"
    expected = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", GGUFValueType.ARRAY, GGUFValueType.STRING,
                                                                len(strings))
    for s in strings:
        expected += struct.pack("<Q", len(s.encode("utf-8"))) + s.encode("utf-8")
    ours = encode_metadata(kv)
    assert ours == expected
    assert metadata_nbytes(kv) == len(ours)


def test_planned_size_counts_a_large_vocabulary_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tokens = ["".join(chr(int(c)) for c in rng.integers(32, 0x3000, size=int(n))) for n in rng.integers(0, 12, 5000)]
    meta = [kv_str("general.architecture", "llama"), kv_array("tokenizer.ggml.tokens", tokens, GGUFValueType.STRING),
            kv_array("tokenizer.ggml.merges", [f"{a} {b}" for a, b in itertools.pairwise(tokens)], GGUFValueType.STRING)]
    infos = [TensorInfo("a", (32,), GGMLQuantizationType.F32)]
    out = tmp_path / "v.gguf"
    with GGUFStreamWriter(out, meta, infos) as w:
        w.write_tensor("a", np.zeros(32, dtype=np.float32))
        w.commit()
    assert out.stat().st_size == planned_size(meta, infos)
    assert GGUFReader(out).fields["tokenizer.ggml.tokens"].contents() == tokens
