"""GPTQ and AWQ folders: the writer and reader against golden vectors made by the peer's own packers
(formats/golden/make_packed_golden.py ran gptqmodel 7.7.0), the refusals, sharding and carried-over files.
The loaders themselves are in tests/interop/test_gptq_awq_loaders.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError
from quantcli.io import awq, gptq
from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.io.int_codes import IntCodes
from quantcli.io.int_scheme import IntScheme
from tests.fixtures.paths import model_path

GOLDEN = Path(__file__).resolve().parents[2] / "formats" / "golden"


def _cases(name: str) -> list[dict]:
    return json.loads((GOLDEN / name).read_text())["cases"]


def _codes(case: dict) -> tuple[IntCodes, IntScheme]:
    """The golden inputs as the encoders hand them over: signed codes and zero points, float16 scales."""
    bits, half = case["bits"], 1 << (case["bits"] - 1)
    u, z = np.array(case["u"]), np.array(case["z"])
    sym = case.get("sym", False)
    codes = IntCodes((u - half).astype(np.int8), np.array(case["scales"], dtype=np.float16),
                     None if sym else (z - half).astype(np.int8))
    return codes, IntScheme("t", bits=bits, group_size=case["group_size"], symmetric=sym)


def _reader(arrays: list[tuple[str, np.ndarray]]):  # type: ignore[no-untyped-def]
    table = dict(arrays)
    return lambda name: table[name]


@pytest.mark.parametrize("case", _cases("gptq.json"), ids=lambda c: f"b{c['bits']}-g{c['group_size']}-{'sym' if c['sym'] else 'asym'}")
def test_gptq_writer_and_reader_match_the_peer(case: dict) -> None:
    codes, scheme = _codes(case)
    g_idx = np.array(case["g_idx"], dtype=np.int32)
    arrays = gptq.module_arrays("m", codes, scheme, g_idx)
    got = dict(arrays)
    assert [(e.name, e.dtype, e.shape) for e in gptq.module_entries("m", (case["out"], case["in"]), scheme)] == \
        [(n, {np.dtype(np.int32): "I32", np.dtype(np.float16): "F16"}[a.dtype], a.shape) for n, a in arrays]
    assert np.array_equal(got["m.qweight"], np.array(case["qweight"], dtype=np.int32))
    assert np.array_equal(got["m.qzeros"], np.array(case["qzeros"], dtype=np.int32))
    assert np.array_equal(got["m.scales"].astype(np.float32), np.array(case["scales"], dtype=np.float32).T)
    assert np.array_equal(got["m.g_idx"], g_idx)
    dense = gptq.dequantize_module(_reader(arrays), "m", case["bits"])
    assert np.array_equal(dense, np.array(case["dense"], dtype=np.float32))


@pytest.mark.parametrize("case", _cases("awq.json"), ids=lambda c: f"{c['out']}x{c['in']}-g{c['group_size']}")
def test_awq_writer_and_reader_match_the_peer(case: dict) -> None:
    codes, scheme = _codes(case)
    arrays = awq.module_arrays("m", codes, scheme)
    got = dict(arrays)
    assert np.array_equal(got["m.qweight"], np.array(case["qweight"], dtype=np.int32))
    assert np.array_equal(got["m.qzeros"], np.array(case["qzeros"], dtype=np.int32))
    dense = awq.dequantize_module(_reader(arrays), "m", case["group_size"])
    assert np.array_equal(dense, np.array(case["dense"], dtype=np.float32))


def test_awq_nibble_order_by_hand() -> None:
    # One word, columns 0..7 holding codes 0..7: nibble k holds column ORDER[k] = 0, 2, 4, 6, 1, 3, 5, 7.
    word = awq.pack_interleaved(np.arange(8, dtype=np.uint8)[None, :])
    assert int(word.view(np.uint32)[0, 0]) == 0x75316420


def test_gptq_v1_zero_offset_by_hand() -> None:
    # 4-bit zeros 8 in all eight fields (symmetric): stored 7 in every field, 0x77777777.
    z = np.full((8, 1), 8, dtype=np.uint8)
    packed = gptq.pack_down(z, 4).T
    stored = (packed.view(np.uint32) - np.uint32(gptq.v1_offset(4)))
    assert int(stored[0, 0]) == 0x77777777


def test_awq_refuses_act_order_and_symmetric_codes() -> None:
    codes = IntCodes(np.zeros((8, 4), np.int8), np.ones((8, 2), np.float16), np.zeros((8, 2), np.int8))
    scheme = IntScheme("t", bits=4, group_size=2, symmetric=False)
    with pytest.raises(ValueError, match="g_idx"):
        awq.module_arrays("m", codes, scheme, np.array([1, 0, 0, 1]))
    with pytest.raises(ValueError, match="asymmetric"):
        awq.module_arrays("m", IntCodes(codes.codes, codes.scale, None), scheme)


# ---- through convert ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    ({"format": "awq", "symmetric": True}, "--sym"),
    ({"format": "awq", "bits": 8}, "4-bit"),
    ({"format": "awq", "group_size": 0}, "group size"),
    ({"format": "gptq", "bits": 3}, "--bits 2, 4, 8"),
    ({"format": "gptq", "scheme": "W4A16"}, "--scheme"),
    ({"format": "gptq", "group_size": 64}, "does not divide"),
])
@pytest.mark.slow
def test_bad_combinations_are_refused_before_writing(tmp_path: Path, kwargs: dict, words: str) -> None:
    out = tmp_path / "x"
    with pytest.raises(InputError) as info:
        convert_int(IntConvertRequest(model=str(model_path("tiny-llama")), output=out, **kwargs))
    assert words in str(info.value) + str(info.value.hint)
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_sharded_folder_with_carried_over_files(tmp_path: Path, fmt: str) -> None:
    src = model_path("tiny-llama")
    out = tmp_path / fmt
    result = convert_int(IntConvertRequest(model=str(src), format=fmt, group_size=32, output=out, threads=1,
                                           max_shard_bytes=20 * 10**6, verify="full",
                                           ignore=("model.layers.0.mlp.down_proj",)))
    assert result.report is not None and result.report.ok, result.report.problems
    assert len(result.report.weights) == 13 and min(w.snr_db for w in result.report.weights) > 15
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            assert (out / f).read_bytes() == (src / f).read_bytes(), f
    ckpt = Checkpoint.open(out)
    assert "model.layers.0.mlp.down_proj.weight" in ckpt.tensors          # left dense, as stored
    assert "model.layers.0.mlp.down_proj.qweight" not in ckpt.tensors
    qc = ckpt.config["quantization_config"]
    if fmt == "gptq":
        assert json.loads((out / "quantize_config.json").read_text()) == qc
        assert qc["checkpoint_format"] == "gptq" and qc["sym"] is True and qc["desc_act"] is False
        kept = qc["modules_in_block_to_quantize"][0]
        assert "model.layers.0.mlp.down_proj" not in kept and "model.layers.0.mlp.up_proj" in kept
    else:
        assert qc == {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 32, "zero_point": True,
                      "modules_to_not_convert": ["lm_head", "model.layers.0.mlp.down_proj"]}


# ---- the hand-written vectors of formats/gptq.md and formats/awq.md -------------------------------------------

def _md_vectors(name: str) -> list[dict]:
    text = (GOLDEN.parent / name).read_text()
    block = text.split("```json golden\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def _dense_by_reader(module: object, v: dict, bits: int) -> np.ndarray:
    """One output row of len(u) inputs in one group, written and read back through the module's own tensors."""
    n = len(v["u"])
    pad = (-n) % 32                                   # GPTQ packs 32 inputs at a time; AWQ 8 outputs per word
    half = 1 << (bits - 1)
    u = np.array(v["u"] + [v["zero"]] * pad)
    rows = 32 if module is gptq else 8
    codes = IntCodes(np.tile(u - half, (rows, 1)).astype(np.int8), np.full((rows, 1), v["scale"], np.float16),
                     np.full((rows, 1), v["zero"] - half, np.int8))
    scheme = IntScheme("t", bits=bits, group_size=None if module is gptq else n + pad, symmetric=False)
    arrays = module.module_arrays("m", codes, scheme)     # type: ignore[attr-defined]
    read = _reader(arrays)
    dense = gptq.dequantize_module(read, "m", bits) if module is gptq else awq.dequantize_module(read, "m", n + pad)
    return dense[0, :n]


@pytest.mark.parametrize("v", _md_vectors("gptq.md"), ids=lambda v: f"{v['tensor']}-b{v['bits']}-{v.get('word', 'w')}")
def test_gptq_md_vectors(v: dict) -> None:
    bits = v["bits"]
    if v["tensor"] == "dense":
        assert _dense_by_reader(gptq, v, bits).tolist() == v["w"]
        return
    word = int(v["word"], 16)
    u = np.array(v["u"], dtype=np.uint8)[:, None]
    packed = gptq.pack_down(u, bits).view(np.uint32)
    if v["tensor"] == "qzeros":
        packed = packed - np.uint32(gptq.v1_offset(bits))
    assert int(packed[0, 0]) == word
    if v["tensor"] == "qweight":
        assert gptq.unpack_down(np.array([[word]], dtype=np.uint32).view(np.int32), bits)[:, 0].tolist() == v["u"]


@pytest.mark.parametrize("v", _md_vectors("awq.md"), ids=lambda v: f"{v['tensor']}-{v.get('word', 'w')}")
def test_awq_md_vectors(v: dict) -> None:
    if v["tensor"] == "dense":
        assert _dense_by_reader(awq, v, 4).tolist() == v["w"]
        return
    word = int(v["word"], 16)
    assert int(awq.pack_interleaved(np.array([v["u"]], dtype=np.uint8)).view(np.uint32)[0, 0]) == word
    assert awq.unpack_interleaved(np.array([[word]], dtype=np.uint32).view(np.int32))[0].tolist() == v["u"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_quantized_module_bias_is_stored_as_float16(tmp_path: Path, fmt: str) -> None:
    src = model_path("tiny-qwen2")                     # q/k/v projections carry a bias
    out = tmp_path / fmt
    convert_int(IntConvertRequest(model=str(src), format=fmt, group_size=32, output=out, threads=1, verify="none"))
    folder, source = Checkpoint.open(out), Checkpoint.open(src)
    biases = [n for n in source.tensors if n.endswith(".bias")]
    assert biases
    for name in biases:
        assert folder.tensors[name].dtype == "F16", name
        assert np.array_equal(folder.read_raw(name), source.read_f32(name).astype(np.float16)), name
