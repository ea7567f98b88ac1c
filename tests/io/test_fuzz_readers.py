"""Fuzzing the readers that face untrusted files: the safetensors reader, verify's GGUF reader (open_reader and
the structure check) and the GGUF layout scan used by split/publish. Inputs are random bytes, structurally
plausible headers with hostile values, and mutations (bit flips, truncations, splices, extreme counts) of valid
files. The only acceptable failure is one of our own errors (QuantcliError): anything else is a crash, a bug.

The number of cases is bounded and derandomised, so CI runs the same cases every time (FUZZ_CASES below).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantcli.errors import QuantcliError
from quantcli.io.gguf_layout import read_layout
from quantcli.io.safetensors import DTYPES, SafetensorsFile, read_tensor, to_float32
from quantcli.stages.verify import verify_file

FUZZ_CASES = {"safetensors-bytes": 150, "safetensors-header": 300, "safetensors-mutation": 250,
              "gguf-mutation": 250, "gguf-bytes": 100}
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def exercise_safetensors(path: Path) -> None:
    try:
        st_file = SafetensorsFile.open(path)
        for info in st_file.tensors.values():
            arr = read_tensor(info)
            if info.dtype in ("F32", "F16", "BF16", "F64"):
                to_float32(arr, info.dtype)
    except QuantcliError:
        pass


def valid_safetensors() -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return save({"a.weight": rng.standard_normal((4, 8)).astype(np.float32),
                 "b.bias": rng.standard_normal(8).astype(np.float16),
                 "c": np.arange(6, dtype=np.int64).reshape(2, 3)}, metadata={"format": "pt"})


VALID_ST = valid_safetensors()


@settings(max_examples=FUZZ_CASES["safetensors-bytes"], **SETTINGS)
@given(data=st.binary(max_size=600))
def test_safetensors_random_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    exercise_safetensors(write(tmp_path_factory.mktemp("st"), "x.safetensors", data))


hostile_int = st.one_of(st.integers(-5, 64), st.integers(2**31 - 2, 2**31 + 2), st.integers(2**63 - 2, 2**64 + 5),
                        st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none())
entry = st.fixed_dictionaries(
    {"dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=5), st.integers()),
     "shape": st.one_of(st.lists(hostile_int, max_size=4), hostile_int),
     "data_offsets": st.one_of(st.lists(hostile_int, max_size=3), hostile_int)},
    optional={"extra": st.integers()})
header = st.dictionaries(st.text(max_size=8), st.one_of(entry, hostile_int, st.lists(st.integers(), max_size=2)),
                         max_size=4)


@settings(max_examples=FUZZ_CASES["safetensors-header"], **SETTINGS)
@given(head=header, meta=st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()), max_size=2)),
       payload=st.binary(max_size=256), lie=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_safetensors_hostile_headers(tmp_path_factory: pytest.TempPathFactory, head: dict, meta: dict | None,
                                     payload: bytes, lie: int | None) -> None:
    if meta is not None:
        head = {**head, "__metadata__": meta}
    raw = json.dumps(head, allow_nan=True).encode()
    n = len(raw) if lie is None else lie
    exercise_safetensors(write(tmp_path_factory.mktemp("st"), "x.safetensors", struct.pack("<Q", n) + raw + payload))


mutation = st.lists(st.tuples(st.sampled_from(["flip", "cut", "splice", "u64"]), st.integers(0, 10**6),
                              st.binary(min_size=1, max_size=9)), min_size=1, max_size=4)


def mutate(data: bytes, ops: list[tuple[str, int, bytes]], hot: int) -> bytes:
    """Apply mutations, aiming most of them at the first `hot` bytes (the header)."""
    buf = bytearray(data)
    for kind, where, blob in ops:
        if not buf:
            break
        pos = where % (min(hot, len(buf)) if where % 4 else len(buf))
        if kind == "flip":
            buf[pos] ^= blob[0] or 1
        elif kind == "cut":
            del buf[pos:]
        elif kind == "splice":
            buf[pos:pos + len(blob)] = blob
        else:  # an extreme 64-bit count or length
            buf[pos:pos + 8] = struct.pack("<Q", int.from_bytes(blob.ljust(8, b"\xff")[:8], "little"))
    return bytes(buf)


@settings(max_examples=FUZZ_CASES["safetensors-mutation"], **SETTINGS)
@given(ops=mutation)
def test_safetensors_mutated_valid_file(tmp_path_factory: pytest.TempPathFactory, ops: list) -> None:
    hot = 8 + struct.unpack("<Q", VALID_ST[:8])[0]
    exercise_safetensors(write(tmp_path_factory.mktemp("st"), "x.safetensors", mutate(VALID_ST, ops, hot)))


def valid_gguf(tmp: Path) -> bytes:
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    path = tmp / "seed.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.embedding_length", 32)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    w.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    rng = np.random.default_rng(1)
    w.add_tensor("token_embd.weight", rng.standard_normal((3, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(32).astype(np.float16))
    q = quantize(rng.standard_normal((2, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor("output.weight", q, raw_shape=q.shape, raw_dtype=GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_seed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = valid_gguf(tmp_path_factory.mktemp("seed"))
    path = write(tmp_path_factory.mktemp("seed-check"), "ok.gguf", data)
    assert verify_file(path).ok and len(read_layout(path).tensors) == 3
    return data


def exercise_gguf(path: Path) -> None:
    try:
        verify_file(path)            # open_reader + check_structure, as `quantcli verify FILE` runs them
    except QuantcliError:
        pass
    try:
        read_layout(path)
    except QuantcliError:
        pass


@settings(max_examples=FUZZ_CASES["gguf-mutation"], **SETTINGS)
@given(ops=mutation)
def test_gguf_mutated_valid_file(tmp_path_factory: pytest.TempPathFactory, gguf_seed: bytes, ops: list) -> None:
    exercise_gguf(write(tmp_path_factory.mktemp("gg"), "x.gguf", mutate(gguf_seed, ops, 400)))


@settings(max_examples=FUZZ_CASES["gguf-bytes"], **SETTINGS)
@given(tail=st.binary(max_size=300), counts=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
       version=st.sampled_from([1, 2, 3, 4, 0x03000000]))
def test_gguf_random_headers(tmp_path_factory: pytest.TempPathFactory, tail: bytes, counts: tuple[int, int],
                             version: int) -> None:
    data = b"GGUF" + struct.pack("<IQQ", version, *counts) + tail
    exercise_gguf(write(tmp_path_factory.mktemp("gg"), "x.gguf", data))


def test_fuzz_case_count_is_bounded() -> None:
    assert sum(FUZZ_CASES.values()) <= 2000
