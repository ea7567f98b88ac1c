"""The engine on quantized folders: its logits on a compressed-tensors or NF4 folder equal its logits on a dense
folder holding the weights the folder's loader rebuilds; the readers decode what the writers' codes say; bad
folders are refused with an InputError naming the cause.

The folders are written by quantcli convert from a random checkpoint (tests/engine/conftest.py), so these run
without the built models. The dense reference weights are computed here from the stored codes with the formats'
published rules, not by the reader under test.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantcli.engine import Engine
from quantcli.engine.folder_weights import QuantizedFolderWeights
from quantcli.errors import InputError, UnsupportedError
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.quantized_folder import open_folder_reader
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.io.nf4_codes import NF4_LEVELS, dynamic_code


TOKENS = np.array([[1, 5, 9, 33, 2, 70, 41, 8, 96, 12], [3, 3, 50, 61, 7, 0, 19, 88, 4, 27]], dtype=np.int32)
CASES = {  # name -> IntConvertRequest fields
    "w4a16-g32": {"scheme": "W4A16", "group_size": 32},
    "w4a16-asym-g32": {"scheme": "W4A16_ASYM", "group_size": 32},
    "w4a16-channel": {"scheme": "W4A16", "group_size": 0},
    "w8a16-g32": {"scheme": "W8A16", "group_size": 32},
    "w8a8": {"scheme": "W8A8"},
    "nf4-dq": {"format": "bnb-nf4"},
    "nf4-plain": {"format": "bnb-nf4", "double_quant": False},
}


def _unpack(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """compressed-tensors' pack-quantized rule, bit by bit: value i of a row is bits i*b .. i*b+b-1 of the row's
    little-endian int32 stream, offset by 2^(b-1)."""
    stream = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")[:, : n * bits]
    values = (stream.reshape(words.shape[0], n, bits) << np.arange(bits, dtype=np.uint8)).sum(axis=2)
    return values.astype(np.int64) - (1 << (bits - 1))


def _bf16_or_f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def expected_dense(folder: Path) -> dict[str, np.ndarray]:
    """Every quantized module's dense weight (name.weight -> float32), from the stored codes."""
    t = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    out: dict[str, np.ndarray] = {}
    if qc["quant_method"] == "bitsandbytes":
        for name in t:
            if not name.endswith(".weight.quant_state.bitsandbytes__nf4"):
                continue
            m = name.split(".weight.quant_state")[0]
            state = json.loads(bytes(t[name]).decode())
            absmax = t[f"{m}.weight.absmax"].astype(np.float32)
            if f"{m}.weight.nested_absmax" in t:
                nested = np.repeat(t[f"{m}.weight.nested_absmax"], state["nested_blocksize"])[: absmax.size]
                absmax = dynamic_code()[t[f"{m}.weight.absmax"]] * nested + np.float32(state["nested_offset"])
            packed = t[f"{m}.weight"][:, 0]
            idx = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)
            n = int(np.prod(state["shape"]))
            out[f"{m}.weight"] = (NF4_LEVELS[idx[:n]] * np.repeat(absmax, state["blocksize"])[:n]).reshape(state["shape"])
        return out
    w = qc["config_groups"]["group_0"]["weights"]
    bits, group = w["num_bits"], w["group_size"]
    for name in t:
        if not name.endswith(".weight_scale"):
            continue
        m = name[: -len(".weight_scale")]
        scale = _bf16_or_f32(t[name])
        if f"{m}.weight_packed" in t:
            rows, n = (int(v) for v in t[f"{m}.weight_shape"])
            codes = _unpack(t[f"{m}.weight_packed"], bits, n)
        else:
            codes = t[f"{m}.weight"].astype(np.int64)
            rows, n = codes.shape
        g = np.zeros(n, dtype=np.int64) if w["strategy"] == "channel" else np.arange(n) // group
        q = codes.astype(np.float32)
        if f"{m}.weight_zero_point" in t:
            zp = t[f"{m}.weight_zero_point"]
            if f"{m}.weight_packed" in t:
                zp = _unpack(np.ascontiguousarray(zp.T), bits, rows).T
            q = q - zp.astype(np.float32)[:, g]
        out[f"{m}.weight"] = q * scale[:, g]
    return out


def dense_twin(folder: Path, source: Path, dest: Path) -> Path:
    """A dense HF folder: the source's tensors with each quantized weight replaced by `expected_dense`."""
    dest.mkdir()
    shutil.copy(source / "config.json", dest / "config.json")
    tensors = load_file(str(source / "model.safetensors"))
    tensors.update(expected_dense(folder))
    save_file(tensors, str(dest / "model.safetensors"))
    return dest


@pytest.fixture()
def source(random_model: Callable[..., Path]) -> Path:
    return random_model(intermediate_size=128)   # NF4 rows must be a multiple of 64


def convert(source: Path, out: Path, **fields: object) -> Path:
    convert_int(IntConvertRequest(model=str(source), output=out, threads=1, verify="none", **fields))  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_on_a_folder_equals_the_engine_on_its_dense_twin(case: str, source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / case, **CASES[case])
    twin = dense_twin(folder, source, tmp_path / "dense")
    engine = Engine.from_hf(folder)
    assert isinstance(engine.source, QuantizedFolderWeights)
    # W8A8 also rounds every quantized Linear's input (test_w8a8_rounds_each_linear_input_per_token); the twin
    # holds only the weights, so the weights are compared here with that rounding switched off
    assert bool(engine.source.inputs) == (case == "w8a8")
    engine.source.inputs.clear()
    got = list(engine.run(TOKENS))
    want = list(Engine.from_hf(twin).run(TOKENS))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    # and the folder is not its source: the quantization error is there
    plain = list(Engine.from_hf(source).run(TOKENS))
    assert not np.array_equal(got[0], plain[0])


@pytest.mark.parametrize("case", ["w4a16-g32", "nf4-dq"])
def test_reader_dense_equals_the_published_rule(case: str, source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / case, **CASES[case])
    reader = open_folder_reader(Checkpoint.open(folder))
    assert reader is not None
    want = expected_dense(folder)
    assert set(want) == {f"{m}.weight" for m in reader.modules} and want
    for name, w in want.items():
        np.testing.assert_array_equal(reader.dense(name[: -len(".weight")]), w)


def test_g_idx_picks_each_columns_group(source: Path, tmp_path: Path) -> None:
    # an activation-ordered folder: permute a module's columns' groups with weight_g_idx and its codes to match;
    # the rebuilt weight must then be the plain folder's weight, column for column
    folder = convert(source, tmp_path / "g", scheme="W4A16", group_size=32)
    plain = open_folder_reader(Checkpoint.open(folder))
    assert plain is not None
    module = "model.layers.0.self_attn.q_proj"
    before = plain.dense(module)
    t = load_file(str(folder / "model.safetensors"))
    rows, n = before.shape
    codes = _unpack(t[f"{module}.weight_packed"], 4, n)
    perm = np.random.default_rng(3).permutation(n)
    shuffled = codes[:, perm]
    from quantcli.io.int_packing import pack_int32

    t[f"{module}.weight_packed"] = pack_int32(shuffled.astype(np.int8), 4)
    t[f"{module}.weight_g_idx"] = (perm // 32).astype(np.int32)
    save_file(t, str(folder / "model.safetensors"))
    reader = open_folder_reader(Checkpoint.open(folder))
    assert reader is not None and f"{module}.weight_g_idx" in reader.modules[module].tensors
    np.testing.assert_array_equal(reader.dense(module), before[:, perm])


def _edit_config(folder: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


BAD_CONFIGS: dict[str, tuple[Callable[[dict], None], type[Exception], str]] = {
    "no num_bits": (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].pop("num_bits"),
                    InputError, "num_bits"),
    "group size a string": (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"]
                            .update(group_size="32"), InputError, "group_size"),
    "unknown method": (lambda c: c["quantization_config"].update(quant_method="exl3"), UnsupportedError, "exl3"),
    "float weights": (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"].update(type="float"),
                      UnsupportedError, "type"),
    "no config groups": (lambda c: c["quantization_config"].pop("config_groups"), InputError, "config_groups"),
    "wrong bits for the packing": (lambda c: c["quantization_config"]["config_groups"]["group_0"]["weights"]
                                   .update(num_bits=8), InputError, "weight_packed"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_folders_are_input_errors(case: str, source: Path, tmp_path: Path) -> None:
    edit, error, named = BAD_CONFIGS[case]
    folder = convert(source, tmp_path / "f", scheme="W4A16", group_size=32)
    _edit_config(folder, edit)
    with pytest.raises(error, match=named):
        Engine.from_hf(folder)


def test_a_wrongly_shaped_scale_is_refused(source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / "f", scheme="W4A16", group_size=32)
    t = load_file(str(folder / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight_scale"
    t[name] = t[name][:, :1].copy()
    save_file(t, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="weight_scale"):
        open_folder_reader(Checkpoint.open(folder))


def test_a_damaged_nf4_state_is_refused(source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / "f", format="bnb-nf4")
    t = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(t[name]).decode())
    del state["blocksize"]
    t[name] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8).copy()
    save_file(t, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match="blocksize"):
        Engine.from_hf(folder)


@pytest.mark.parametrize("fields", [{"format": "gptq", "group_size": 32}, {"format": "gptq", "bits": 8, "group_size": 0},
                                    {"format": "awq", "group_size": 32}], ids=["gptq4", "gptq8-channel", "awq"])
def test_engine_runs_gptq_and_awq_folders(fields: dict, source: Path, tmp_path: Path) -> None:
    # the dense twin comes from the formats' module decoders, which tests/io/test_gptq_awq.py holds to gptqmodel's
    # own packing; this checks that the engine and inspect find those folders through the reader table
    from quantcli.io import awq, gptq

    folder = convert(source, tmp_path / "q", **fields)
    t = load_file(str(folder / "model.safetensors"))
    dense = load_file(str(source / "model.safetensors"))
    fmt = fields["format"]
    for m in (gptq if fmt == "gptq" else awq).quantized_modules(t):
        dense[f"{m}.weight"] = (gptq.dequantize_module(t.__getitem__, m, fields.get("bits", 4)) if fmt == "gptq"
                                else awq.dequantize_module(t.__getitem__, m, 32))
    twin = tmp_path / "dense"
    twin.mkdir()
    shutil.copy(source / "config.json", twin / "config.json")
    save_file(dense, str(twin / "model.safetensors"))
    engine = Engine.from_hf(folder)
    assert isinstance(engine.source, QuantizedFolderWeights)
    for a, b in zip(engine.run(TOKENS), Engine.from_hf(twin).run(TOKENS), strict=True):
        np.testing.assert_array_equal(a, b)
    reader = open_folder_reader(Checkpoint.open(folder))
    assert reader is not None and reader.scheme["quant_method"] == fmt and len(reader.modules) == 14


def _per_token_int8(x: np.ndarray) -> np.ndarray:
    """compressed-tensors' dynamic symmetric token rule for 8 bits, written out: scale = max |x| of the row / 127.5
    (float32 eps where that is 0), codes clamped to [-128, 127] and rounded half to even, times the scale."""
    scale = (np.abs(x).max(axis=-1, keepdims=True) / np.float32(127.5)).astype(np.float32)
    scale[scale == 0] = np.finfo(np.float32).eps
    return np.rint(np.clip(x / scale, -128, 127)).astype(np.float32) * scale


def test_w8a8_rounds_each_linear_input_per_token(source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / "w8a8", **CASES["w8a8"])
    weights = Engine.from_hf(folder).source
    assert isinstance(weights, QuantizedFolderWeights)
    reader = open_folder_reader(Checkpoint.open(folder))
    assert reader is not None and set(weights.inputs) == set(reader.modules)
    assert {r.bits for r in weights.inputs.values()} == {8}
    dense = expected_dense(folder)
    rng = np.random.default_rng(3)
    for t in weights.spec.tensors:
        name = weights.name(t)
        if name not in dense:
            continue
        w = weights.load(t)
        np.testing.assert_array_equal(np.asarray(w), dense[name])
        x = (rng.standard_normal((2, 7, w.shape[1])) * 4).astype(np.float32)
        x[0, 2] = 0                               # an all-zero token takes the eps scale and stays 0
        got = x @ w.T
        np.testing.assert_array_equal(got, _per_token_int8(x) @ dense[name].T)
        assert not np.array_equal(got, x @ dense[name].T)
    # and the engine's logits change with the rounding
    engine = Engine.from_hf(folder)
    rounded = next(engine.run(TOKENS))
    engine.source.inputs.clear()
    assert not np.array_equal(rounded, next(engine.run(TOKENS)))


def test_activation_rounding_the_engine_cannot_simulate_is_refused(source: Path, tmp_path: Path) -> None:
    folder = convert(source, tmp_path / "w8a8", **CASES["w8a8"])
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedError, match="input_activations"):
        Engine.from_hf(folder)
