"""Splitting GGUF files the way llama.cpp's gguf-split does: names, split.* keys, metadata and tensor data kept,
and (with llama_cpp installed) llama.cpp loading the shards of a real tiny model as one model."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from quantcli.errors import InputError
from quantcli.io.gguf_split import SHARD_PATTERN, parse_size, plan_shards, shard_name, split_gguf
from tests.fixtures.threads import LLAMA_THREADS


def write_sample(path: Path, n_tensors: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """A GGUF written by gguf-py's own writer (independent of ours), with strings, arrays and odd sizes."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "llama")
    w.add_string("general.name", "sample ✓")
    w.add_uint32("llama.block_count", 3)
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "ünï", ""])
    w.add_array("tokenizer.ggml.scores", [0.5, -1.25, 3.0, 0.0])
    tensors = {}
    for i in range(n_tensors):
        shape = (int(rng.integers(1, 5)), int(rng.integers(3, 300)))
        data = rng.standard_normal(shape).astype(np.float32 if i % 2 else np.float16)
        tensors[f"blk.{i}.weight"] = data
        w.add_tensor(f"blk.{i}.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


def kv_values(reader: GGUFReader) -> dict[str, object]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def test_parse_size_uses_decimal_units_and_rejects_nonsense() -> None:
    assert parse_size("2G") == 2 * 10**9 and parse_size("500M") == 5 * 10**8 and parse_size("48GB") == 48 * 10**9
    assert parse_size("1.5g") == 15 * 10**8 and parse_size("123") == 123
    for bad in ("", "0G", "-1G", "2X", "G", "two"):
        with pytest.raises(InputError):
            parse_size(bad)


def test_shard_names_follow_llama_split_path() -> None:
    assert shard_name("model-Q8_0", 0, 3) == "model-Q8_0-00001-of-00003.gguf"
    m = SHARD_PATTERN.match(shard_name("a-b", 11, 12))
    assert m is not None and (m["prefix"], m["index"], m["count"]) == ("a-b", "00012", "00012")


def test_plan_starts_a_shard_when_the_next_tensor_would_pass_the_limit() -> None:
    assert plan_shards([10, 10, 10], 64) == [[0, 1], [2]]          # each pads to 32 bytes
    assert plan_shards([10, 100, 10], 64) == [[0], [1], [2]]       # an oversized tensor stands alone
    assert plan_shards([1, 2, 3], 10**9) == [[0, 1, 2]]


def test_split_keeps_metadata_and_every_tensor_byte(tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    tensors = write_sample(src)
    original = GGUFReader(src)
    limit = max(int(t.n_bytes) for t in original.tensors) + 32
    parts = split_gguf(src, tmp_path / "shards", limit)
    assert len(parts) > 2
    assert [p.name for p in parts] == [shard_name("model", i, len(parts)) for i in range(len(parts))]
    seen: dict[str, np.ndarray] = {}
    for no, part in enumerate(parts):
        reader = GGUFReader(part)
        kvs = kv_values(reader)
        assert kvs["split.no"] == no and kvs["split.count"] == len(parts)
        assert kvs["split.tensors.count"] == len(tensors)
        if no == 0:
            expected = {**kv_values(original), "split.no": 0, "split.count": len(parts), "split.tensors.count": len(tensors)}
            assert kvs == expected
        else:
            assert set(kvs) == {"split.no", "split.count", "split.tensors.count"}
        assert sum(int(t.n_bytes) for t in reader.tensors) <= limit or len(reader.tensors) == 1
        for t in reader.tensors:
            seen[t.name] = np.array(t.data)
            assert t.data_offset % 32 == 0
    assert list(seen) == [t.name for t in original.tensors]
    for t in original.tensors:
        assert seen[t.name].tobytes() == np.asarray(t.data).tobytes()
    assert not list((tmp_path / "shards").glob(".*"))          # no temporary files left


def test_a_file_that_fits_is_not_split(tmp_path: Path) -> None:
    src = tmp_path / "small.gguf"
    write_sample(src, n_tensors=2)
    assert split_gguf(src, tmp_path / "shards", parse_size("1G")) == [src]
    assert not (tmp_path / "shards").exists()


def test_splitting_a_shard_again_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    write_sample(src)
    parts = split_gguf(src, tmp_path / "shards", 1000)
    with pytest.raises(InputError, match="already a shard"):
        split_gguf(parts[0], tmp_path / "again", 1000)


@pytest.mark.slow
def test_llama_cpp_loads_a_split_tiny_model_and_computes_the_same_logits(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from tests.fixtures.paths import model_path

    from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type

    whole = tmp_path / "tiny-Q8_0.gguf"
    convert(ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe_from_type("Q8_0"), output=whole,
                           verify="none"))
    parts = split_gguf(whole, tmp_path / "split", parse_size("8M"))
    assert len(parts) >= 3

    def logits(path: Path) -> np.ndarray:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, **LLAMA_THREADS)
        tokens = [1, 100, 2000, 300, 45]
        llm.eval(tokens)
        scores = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        del llm
        return scores

    reference = logits(whole)
    from_shards = logits(parts[0])
    assert np.isfinite(reference).all()
    np.testing.assert_array_equal(from_shards, reference)
    # llama.cpp really needs the other parts: without the last one the model does not load.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    for p in parts[:-1]:
        shutil.copy(p, lonely / p.name)
    with pytest.raises(Exception):
        logits(lonely / parts[0].name)
