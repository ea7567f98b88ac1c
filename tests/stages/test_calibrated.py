"""The calibrated-method driver and the pack stage's spooled choices, on random checkpoints (no built model).

Test-only methods (tests/fixtures/block_methods.py) stand in for GPTQ and AWQ: codes from RTN, dense shrunk
weights with a folded norm, a failure mid-walk. The oracles are independent of the code under test: the bytes of
the plain minmax path, a second engine walk over a dense checkpoint rebuilt from the written folder, and the
NumPy RTN reference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from quantcli.engine import Engine
from quantcli.errors import InputError
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.quantized_folder import METHOD_KEY, open_folder_reader
from quantcli.io.safetensors import SafetensorsFile
from quantcli.io.safetensors_writer import TensorEntry, write_tensors
from quantcli.pipeline.convert_int import IntConvertRequest, IntConvertResult, convert_int
from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry, Option
from quantcli.quant.int.rtn import encode
from quantcli.io.int_codes import round_to
from quantcli.io.int_scheme import SCHEMES
from quantcli.stages import calibrated as stage
from quantcli.stages.check_folder import check_folder
from quantcli.stages.spool import SPOOL_DIR
from tests.engine.conftest import LLAMA_CONFIG, write_random_checkpoint
from tests.fixtures.block_methods import DenseShrink, Failing, RtnCodes

GEMMA3_CONFIG = {**LLAMA_CONFIG, "architectures": ["Gemma3ForCausalLM"], "head_dim": 16, "query_pre_attn_scalar": 16,
                 "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}
N_SEQ, CTX = 3, 16


def entry(name: str, target: str, *options: Option) -> MethodEntry:
    return MethodEntry(name, f"tests.fixtures.block_methods:{target}", options, "test only")


@pytest.fixture()
def methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registers the test methods; calibration text is replaced by fixed random tokens (random checkpoints have
    no tokenizer; the tokenization itself is tested on tiny-llama in tests/pipeline)."""
    monkeypatch.setitem(CALIBRATED, "t-rtn", entry("t-rtn", "RtnCodes", Option("g_idx", bool, False, "")))
    monkeypatch.setitem(CALIBRATED, "t-dense", entry("t-dense", "DenseShrink", Option("skip", str, None, ""),
                                                     Option("offset", float, 0.0, "")))
    monkeypatch.setitem(CALIBRATED, "t-fail", entry("t-fail", "Failing", Option("at", int, 1, "")))
    monkeypatch.setattr(stage, "calibration_tokens",
                        lambda source, data, options, n_ctx: np.random.default_rng(7).integers(0, 97, (N_SEQ, CTX)))


def bf16_copy(src: Path, dst: Path) -> Path:
    """The same checkpoint stored in BF16 (round to nearest even), written with our own safetensors writer."""
    ckpt = Checkpoint.open(src)
    dst.mkdir()
    names = list(ckpt.tensors)
    arrays = [(n, round_to(ckpt.read_f32(n), "BF16")[0]) for n in names]
    write_tensors(dst, [TensorEntry(n, "BF16", ckpt.tensors[n].shape) for n in names], iter(arrays))
    (dst / "config.json").write_text(json.dumps({**ckpt.config, "torch_dtype": "bfloat16"}))
    return dst


def dense_from_folder(folder: Path, dst: Path) -> Path:
    """A float32 checkpoint holding what a loader rebuilds from `folder` (quantized weights dequantized in the
    scale's dtype), so an engine walk over it sees the weights the calibrated walk put on its steps."""
    ckpt = Checkpoint.open(folder)
    reader = open_folder_reader(ckpt)
    assert reader is not None
    tensors = {f"{m}.weight": reader.dense(m) for m in reader.modules}
    parts = reader.stored_names()
    for name in ckpt.tensors:
        if name not in parts:
            tensors[name] = ckpt.read_f32(name)
    dst.mkdir()
    save_file(tensors, str(dst / "model.safetensors"))
    config = dict(ckpt.config)
    config.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def block_inputs(folder: Path, tokens: np.ndarray) -> list[np.ndarray]:
    eng = Engine.from_hf(folder)
    return [np.array(step.inputs) for step in eng.blocks(tokens)]


def run(model: Path, method: str, out: Path, **kw: object) -> IntConvertResult:
    kw.setdefault("group_size", 32)
    return convert_int(IntConvertRequest(model=str(model), method=method, output=out, threads=1, **kw))


def read_all(folder: Path) -> dict[str, np.ndarray]:
    ckpt = Checkpoint.open(folder)
    return {n: ckpt.read_raw(n) for n in ckpt.tensors}


def test_rtn_codes_from_a_method_are_the_bytes_of_plain_minmax(tmp_path: Path, methods: None) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    a = run(src, "t-rtn", tmp_path / "a", verify="full")
    run(src, "minmax", tmp_path / "b")
    # the same tensors byte for byte; the headers differ only in the method they record (quantcli.method)
    a_file, b_file = SafetensorsFile.open(tmp_path / "a" / "model.safetensors"), SafetensorsFile.open(tmp_path / "b" / "model.safetensors")
    assert a_file.metadata.pop(METHOD_KEY) == "t-rtn" and b_file.metadata.pop(METHOD_KEY) == "minmax"
    assert a_file.metadata == b_file.metadata
    assert load_file(str(tmp_path / "a" / "model.safetensors")).keys() == load_file(str(tmp_path / "b" / "model.safetensors")).keys()
    for name, value in load_file(str(tmp_path / "a" / "model.safetensors")).items():
        assert value.tobytes() == load_file(str(tmp_path / "b" / "model.safetensors"))[name].tobytes(), name
    assert a.report is not None and a.report.ok
    assert a.calibration is not None and a.calibration["chosen"] == 14 and a.calibration["filled"] == 0
    assert a.calibration["blocks"] == 2 and a.calibration["chunks"] == N_SEQ and a.calibration["ctx"] == CTX
    # the method saw exactly the planned linears of each block with the plan's scheme
    targets = RtnCodes.last.targets
    assert [sorted(t) for t in targets] == [sorted(f"model.layers.{i}.{p}.weight" for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj")) for i in range(2)]
    assert {s.group_size for t in targets for s in t.values()} == {32}


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_later_blocks_are_calibrated_on_the_quantized_earlier_ones(tmp_path: Path, methods: None, bf16: bool) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG, seed=1)
    if bf16:
        src = bf16_copy(src, tmp_path / "m-bf16")
    run(src, "t-rtn", tmp_path / "out")
    if bf16:  # the method's float32 scales were stored in the weights' dtype
        assert Checkpoint.open(tmp_path / "out").tensors["model.layers.0.mlp.up_proj.weight_scale"].dtype == "BF16"
    seen = RtnCodes.last.inputs
    tokens = np.random.default_rng(7).integers(0, 97, (N_SEQ, CTX))
    want = block_inputs(dense_from_folder(tmp_path / "out", tmp_path / "dense"), tokens)
    np.testing.assert_array_equal(seen[0], want[0])
    np.testing.assert_allclose(seen[1], want[1], rtol=0, atol=1e-5)
    # and not the unquantized model's: block 1 of the source gets other inputs
    assert np.abs(block_inputs(src, tokens)[1] - seen[1]).max() > 1e-3


def test_dense_choices_are_rtn_encoded_and_folded_norms_kept(tmp_path: Path, methods: None) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG, seed=2)
    res = run(src, "t-dense", tmp_path / "out", method_options=(("skip", "down_proj"),), verify="structure")
    assert res.report is not None and res.report.ok
    assert res.calibration is not None and res.calibration["filled"] == 2      # down_proj of both blocks
    source = Checkpoint.open(src)
    folder = Checkpoint.open(tmp_path / "out")
    scheme = SCHEMES["W4A16"].with_options(group_size=32)
    reader = open_folder_reader(folder)
    assert reader is not None
    for i in range(2):
        norm = f"model.layers.{i}.input_layernorm.weight"
        np.testing.assert_array_equal(folder.read_raw(norm), source.read_f32(norm) * np.float32(1.25))
        other = f"model.layers.{i}.post_attention_layernorm.weight"
        np.testing.assert_array_equal(folder.read_raw(other), source.read_f32(other))
        for proj, factor in (("self_attn.q_proj", 0.9), ("mlp.up_proj", 0.9), ("mlp.down_proj", 1.0)):
            module = f"model.layers.{i}.{proj}"
            want = encode(source.read_f32(module + ".weight") * np.float32(factor), scheme, "F32").dequantize("F32", 32)
            got = reader.dense(module)
            np.testing.assert_array_equal(got, want)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        np.testing.assert_array_equal(folder.read_raw(name), source.read_raw(name))
    assert not list((tmp_path / "out").glob(".*")) and sorted(os.listdir(tmp_path)) == ["m", "out"]


def test_a_gemma_norm_is_given_as_stored_and_fed_to_the_engine_with_its_offset(tmp_path: Path, methods: None) -> None:
    src = write_random_checkpoint(tmp_path / "g", GEMMA3_CONFIG, seed=3)
    run(src, "t-dense", tmp_path / "out", method_options=(("offset", 1.0),))
    source, folder = Checkpoint.open(src), Checkpoint.open(tmp_path / "out")
    norm = "model.layers.0.input_layernorm.weight"
    # the method scaled the engine's factor (1 + w) and handed back stored values (factor * 1.25 - 1)
    want = (source.read_f32(norm) + np.float32(1)) * np.float32(1.25) - np.float32(1)
    np.testing.assert_array_equal(folder.read_raw(norm), want)
    tokens = np.random.default_rng(7).integers(0, 97, (N_SEQ, CTX))
    again = block_inputs(dense_from_folder(tmp_path / "out", tmp_path / "dense"), tokens)
    np.testing.assert_allclose(DenseShrink.last.inputs[1], again[1], rtol=0, atol=1e-5)


def test_a_column_order_the_format_cannot_store_is_refused_and_nothing_is_left(tmp_path: Path, methods: None) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    with pytest.raises(InputError, match="compressed-tensors cannot store the column order"):
        run(src, "t-rtn", tmp_path / "out", method_options=(("g_idx", "true"),))
    assert sorted(os.listdir(tmp_path)) == ["m"]


@pytest.mark.parametrize("exc", [RuntimeError("method failed"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failure_mid_walk_leaves_no_folder_and_no_spool(tmp_path: Path, methods: None, monkeypatch: pytest.MonkeyPatch,
                                                          exc: BaseException) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    monkeypatch.setattr(Failing, "__init__", lambda self, at=1: (setattr(self, "at", at), setattr(self, "exc", exc))[0])
    spooled: list[Path] = []
    real_put = stage.ChoiceSpool.put_codes

    def put(self, name, codes, g_idx=None) -> None:  # type: ignore[no-untyped-def]
        spooled.append(self.folder)
        real_put(self, name, codes, g_idx)

    monkeypatch.setattr(stage.ChoiceSpool, "put_codes", put)
    with pytest.raises(type(exc)):
        run(src, "t-fail", tmp_path / "out")
    assert spooled and spooled[0].name == SPOOL_DIR          # block 0 was spooled before block 1 failed
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_method_choosing_outside_its_block_is_a_bug_not_written(tmp_path: Path, methods: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.quant.algorithms.base import Chosen

    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    monkeypatch.setattr(RtnCodes, "process", lambda self, step, targets: [
        Chosen("model.embed_tokens.weight", dense=np.zeros((97, 64), np.float32))])
    with pytest.raises(RuntimeError, match="no tensor of block 0"):
        run(src, "t-rtn", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_a_written_folder_passes_the_folder_check_against_its_source(tmp_path: Path, methods: None) -> None:
    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)
    run(src, "t-dense", tmp_path / "out", verify="none")
    report = check_folder(tmp_path / "out", src)
    assert report.ok, report.problems
    assert len(report.weights) == 14


def test_codes_outside_the_scheme_are_refused_before_they_wrap(tmp_path: Path, methods: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.quant.algorithms.base import Chosen
    from quantcli.io.int_codes import IntCodes

    src = write_random_checkpoint(tmp_path / "m", LLAMA_CONFIG)

    def wide(self, step, targets):  # type: ignore[no-untyped-def]
        out = []
        for n, s in targets.items():
            c = encode(step.weight(n), s, "F32")
            codes = c.codes.astype(np.int32)
            codes[0, 0] = 256 + 3          # an int8 cast would make it 3, a valid 4-bit code
            out.append(Chosen(n, codes=IntCodes(codes, c.scale, c.zero_point)))
        return out

    monkeypatch.setattr(RtnCodes, "process", wide)
    with pytest.raises(RuntimeError, match=r"codes outside \[-8, 7\]"):
        run(src, "t-rtn", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["m"]
