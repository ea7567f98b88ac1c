"""PlacedTensorWriter: tensors written at their planned offsets in any order give the files write_tensors writes in
plan order; an unfinished or aborted folder leaves no shard, not even a partial one."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantcli.io.safetensors_writer import INDEX_NAME, PlacedTensorWriter, TensorEntry, write_tensors

ENTRIES = [TensorEntry("a.weight", "F16", (8, 16)), TensorEntry("b.qweight", "I32", (4, 16)),
           TensorEntry("c.scale", "BF16", (8, 2)), TensorEntry("d.bias", "F32", (7,)), TensorEntry("e.absmax", "U8", (33,))]


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for e in ENTRIES:
        dtype = {"F16": np.float16, "I32": np.int32, "BF16": np.uint16, "F32": np.float32, "U8": np.uint8}[e.dtype]
        out[e.name] = (rng.integers(0, 200, e.shape) if dtype in (np.int32, np.uint16, np.uint8)
                       else rng.standard_normal(e.shape)).astype(dtype)
    return out


@pytest.mark.parametrize("max_shard", [None, 300], ids=["one file", "sharded"])
def test_any_order_gives_the_bytes_of_the_plan_order(tmp_path: Path, max_shard: int | None) -> None:
    values = arrays()
    (tmp_path / "plain").mkdir()
    (tmp_path / "placed").mkdir()
    plain = write_tensors(tmp_path / "plain", ENTRIES, ((e.name, values[e.name]) for e in ENTRIES), max_shard,
                          metadata={"format": "pt"})
    w = PlacedTensorWriter(tmp_path / "placed", ENTRIES, max_shard, metadata={"format": "pt"})
    for name in ["d.bias", "a.weight", "e.absmax", "c.scale", "b.qweight"]:
        w.write(name, values[name])
    names = w.close()
    assert sorted(names) == sorted(p.name for p in plain)
    assert (INDEX_NAME in names) == (max_shard is not None)
    for p in plain:
        assert (tmp_path / "placed" / p.name).read_bytes() == p.read_bytes()
    assert sorted(p.name for p in (tmp_path / "placed").iterdir()) == sorted(names)


def test_a_tensor_left_out_or_written_twice_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    values = arrays()
    w = PlacedTensorWriter(tmp_path, ENTRIES, 300)
    w.write("a.weight", values["a.weight"])
    with pytest.raises(ValueError, match="written twice"):
        w.write("a.weight", values["a.weight"])
    with pytest.raises(ValueError, match="planned"):
        w.write("b.qweight", values["b.qweight"].astype(np.int64))
    with pytest.raises(ValueError, match="unwritten"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_abort_removes_every_partial_shard(tmp_path: Path) -> None:
    w = PlacedTensorWriter(tmp_path, ENTRIES, 300)
    w.write("c.scale", arrays()["c.scale"])
    assert any(".partial-" in p.name for p in tmp_path.iterdir())
    w.abort()
    w.abort()          # a second abort (the pass's cleanup after an error) is harmless
    assert list(tmp_path.iterdir()) == []
