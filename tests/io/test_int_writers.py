"""The compressed-tensors folder writer on a small synthetic checkpoint: layout, carried-over files, shards and
their index, refusals before any writing, and no half-written folder under the final name."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from quantcli.errors import InputError
from quantcli.io.checkpoint import Checkpoint
from quantcli.io.safetensors_writer import INDEX_NAME, SafetensorsWriter, TensorEntry
from quantcli.pipeline.convert_int import IntConvertRequest, convert_int
from quantcli.stages.check_folder import check_folder

HIDDEN, FFN, VOCAB = 128, 256, 64


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "src"
    folder.mkdir()
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float16),
         "model.norm.weight": np.ones(HIDDEN, np.float16),
         "lm_head.weight": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float16)}
    for i in range(2):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = np.ones(HIDDEN, np.float16)
        t[f"{p}.self_attn.q_proj.weight"] = (rng.standard_normal((HIDDEN, HIDDEN)) * 0.02).astype(np.float16)
        t[f"{p}.mlp.up_proj.weight"] = (rng.standard_normal((FFN, HIDDEN)) * 0.02).astype(np.float16)
        t[f"{p}.mlp.down_proj.weight"] = (rng.standard_normal((HIDDEN, FFN)) * 0.02).astype(np.float16)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                    "hidden_size": HIDDEN, "dtype": "float16"}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "generation_config.json").write_text('{"do_sample": false}')
    return folder


def convert(source: Path, out: Path, **kw: object) -> Path:
    convert_int(IntConvertRequest(model=str(source), output=out, threads=2, **kw))  # type: ignore[arg-type]
    return out


def test_folder_layout_and_carried_over_files(source: Path, tmp_path: Path) -> None:
    out = convert(source, tmp_path / "w4", scheme="W4A16", verify="full")
    ck, src = Checkpoint.open(out), Checkpoint.open(source)
    qc = ck.config["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors" and qc["version"]
    assert qc["ignore"] == ["lm_head"] and qc["config_groups"]["group_0"]["targets"] == ["Linear"]
    assert ck.config["hidden_size"] == HIDDEN                                   # the source config is kept
    up = "model.layers.0.mlp.up_proj"
    assert ck.tensors[f"{up}.weight_packed"].shape == (FFN, HIDDEN // 8)
    assert ck.tensors[f"{up}.weight_scale"].shape == (FFN, 1) and ck.tensors[f"{up}.weight_scale"].dtype == "F16"
    assert ck.read_raw(f"{up}.weight_shape").tolist() == [FFN, HIDDEN]
    assert f"{up}.weight" not in ck.tensors
    for kept in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert np.array_equal(ck.read_raw(kept), src.read_raw(kept))
    assert (out / "tokenizer.json").read_text() == "{}" and (out / "generation_config.json").exists()
    report = check_folder(out, source)
    assert report.ok and report.quantized == 6 and min(w.snr_db for w in report.weights) > 15


def test_w8a16_is_far_closer_than_w4a16(source: Path, tmp_path: Path) -> None:
    snr = {}
    for scheme in ("W4A16", "W8A16"):
        report = check_folder(convert(source, tmp_path / scheme, scheme=scheme), source)
        snr[scheme] = min(w.snr_db for w in report.weights)
    assert snr["W8A16"] > snr["W4A16"] + 20


def test_asymmetric_zero_points_are_packed_down_the_columns(source: Path, tmp_path: Path) -> None:
    out = convert(source, tmp_path / "asym", scheme="W4A16_ASYM", group_size=64, verify="full")
    ck = Checkpoint.open(out)
    zp = ck.tensors["model.layers.0.mlp.up_proj.weight_zero_point"]
    assert zp.dtype == "I32" and zp.shape == (FFN * 4 // 32, HIDDEN // 64)


def test_w8a8_stores_int8_weights_and_per_channel_scales(source: Path, tmp_path: Path) -> None:
    ck = Checkpoint.open(convert(source, tmp_path / "w8a8", scheme="W8A8"))
    group = ck.config["quantization_config"]["config_groups"]["group_0"]
    assert ck.config["quantization_config"]["format"] == "int-quantized"
    assert group["input_activations"]["dynamic"] is True and group["input_activations"]["strategy"] == "token"
    assert ck.tensors["model.layers.1.mlp.down_proj.weight"].dtype == "I8"
    assert ck.tensors["model.layers.1.mlp.down_proj.weight_scale"].shape == (HIDDEN, 1)


def test_ignore_keeps_modules_dense_and_lists_them(source: Path, tmp_path: Path) -> None:
    out = convert(source, tmp_path / "ign", scheme="W4A16", ignore=("re:.*down_proj",))
    ck = Checkpoint.open(out)
    assert ck.tensors["model.layers.0.mlp.down_proj.weight"].dtype == "F16"
    assert "re:.*down_proj" in ck.config["quantization_config"]["ignore"]
    assert "model.layers.0.mlp.up_proj.weight_packed" in ck.tensors


def test_shards_and_index_past_the_size_limit(source: Path, tmp_path: Path) -> None:
    out = convert(source, tmp_path / "sharded", scheme="W8A16", max_shard_bytes=40_000, verify="full")
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    ck = Checkpoint.open(out)
    assert set(index["weight_map"]) == set(ck.tensors)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in ck.tensors.values())


def test_a_failure_mid_write_leaves_no_folder(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import quantcli.stages.pack_safetensors as stage

    calls = {"n": 0}
    real = stage.encode_weight

    def failing(*args: object, **kw: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(stage, "encode_weight", failing)
    with pytest.raises(OSError):
        convert(source, tmp_path / "out", scheme="W4A16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("kw,match", [
    ({"scheme": "W4A16", "group_size": 0, "bits": 3}, "--bits 3"),
    ({"scheme": "W8A16", "bits": 4}, "contradicts"),
    ({"format": "gptq-v9"}, "--format"),
    ({"scheme": "W4A16", "method": "magic"}, "--method magic is not available"),
    ({"scheme": "W4A16", "ignore": ("re:(",)}, "regex"),
])
def test_bad_combinations_are_refused_before_writing(source: Path, tmp_path: Path, kw: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        convert(source, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_group_size_that_does_not_divide_rows(source: Path, tmp_path: Path) -> None:
    # FFN rows of 256 divide by 128; 96-wide rows would not, so cut the model's down_proj input to 96 columns.
    from safetensors.numpy import load_file

    t = load_file(str(source / "model.safetensors"))
    t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :96].copy()
    save_file(t, str(source / "model.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(source), "--format",
                           "compressed-tensors", "-o", str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""})
    assert proc.returncode == 2
    assert "does not divide" in proc.stderr and "--group-size 32" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_writer_refuses_out_of_order_and_missing_tensors(tmp_path: Path) -> None:
    entries = [TensorEntry("a", "I32", (2,)), TensorEntry("b", "F16", (1,))]
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        with SafetensorsWriter(tmp_path / "x.safetensors", entries) as w:
            w.write("b", np.zeros(1, np.float16))
    with pytest.raises(ValueError, match="closed after 1 of 2"):
        with SafetensorsWriter(tmp_path / "x.safetensors", entries) as w:
            w.write("a", np.zeros(2, np.int32))
    assert list(tmp_path.iterdir()) == []


def test_bnb_nf4_layout_and_quant_state(source: Path, tmp_path: Path) -> None:
    out = convert(source, tmp_path / "nf4", format="bnb-nf4", verify="full")
    ck = Checkpoint.open(out)
    qc = ck.config["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes" and qc["load_in_4bit"] and qc["bnb_4bit_use_double_quant"]
    assert qc["llm_int8_skip_modules"] == ["lm_head"]
    m = "model.layers.0.mlp.up_proj.weight"
    blocks = FFN * HIDDEN // 64
    assert ck.tensors[m].dtype == "U8" and ck.tensors[m].shape == (FFN * HIDDEN // 2, 1)
    assert ck.tensors[f"{m}.absmax"].dtype == "U8" and ck.tensors[f"{m}.absmax"].shape == (blocks,)
    assert ck.tensors[f"{m}.nested_absmax"].shape == (-(-blocks // 256),)
    assert ck.tensors[f"{m}.quant_map"].shape == (16,) and ck.tensors[f"{m}.nested_quant_map"].shape == (256,)
    state = json.loads(bytes(ck.read_raw(f"{m}.quant_state.bitsandbytes__nf4")).decode())
    assert state["quant_type"] == "nf4" and state["blocksize"] == 64 and state["shape"] == [FFN, HIDDEN]
    assert state["dtype"] == "float16" and state["nested_blocksize"] == 256 and isinstance(state["nested_offset"], float)
    plain = Checkpoint.open(convert(source, tmp_path / "nf4-plain", format="bnb-nf4", double_quant=False))
    assert plain.tensors[f"{m}.absmax"].dtype == "F32" and f"{m}.nested_absmax" not in plain.tensors


def test_bnb_nf4_refuses_rows_its_cpu_kernel_misreads(source: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    t = load_file(str(source / "model.safetensors"))
    t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :96].copy()
    save_file(t, str(source / "model.safetensors"))
    with pytest.raises(InputError, match="not a multiple of 64") as exc:
        convert(source, tmp_path / "out", format="bnb-nf4")
    assert "--ignore model.layers.0.mlp.down_proj" in exc.value.hint
    assert not (tmp_path / "out").exists()
    ck = Checkpoint.open(convert(source, tmp_path / "out", format="bnb-nf4", ignore=("re:.*down_proj",)))
    assert ck.config["quantization_config"]["llm_int8_skip_modules"] == [
        "lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


@pytest.mark.parametrize("kw", [{"scheme": "W4A16"}, {"bits": 8}, {"group_size": 32}, {"symmetric": False},
                                {"method": "mse"}, {"method": "hqq"}])
def test_bnb_nf4_refuses_integer_scheme_options(source: Path, tmp_path: Path, kw: dict) -> None:
    with pytest.raises(InputError):
        convert(source, tmp_path / "out", format="bnb-nf4", **kw)
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_folder_and_inspect_describes_it(source: Path, tmp_path: Path) -> None:
    env = {**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""}
    out = tmp_path / "w8"
    proc = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(source), "--format",
                           "compressed-tensors", "--bits", "8", "--group-size", "64", "--verify", "full", "--json",
                           "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["scheme"] == "W8A16" and result["verify"]["ok"] and result["verify"]["min_snr_db"] > 35
    assert len(result["quantized"]) == 6
    proc = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "inspect", str(out), "--json"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metadata"]["quantization"].startswith(
        "compressed-tensors pack-quantized: int8 symmetric group 64")


def test_cli_refuses_folder_options_without_a_folder_format(source: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", str(source), "--scheme", "W4A16",
                           "-o", str(tmp_path / "x.gguf")], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""})
    assert proc.returncode == 2 and "--format compressed-tensors" in proc.stderr
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize("kw", [{"scheme": "W4A16_ASYM", "group_size": 64, "method": "mse"}, {"scheme": "W8A8"},
                                {"format": "bnb-nf4"}, {"scheme": "W4A16_ASYM", "group_size": 32, "method": "hqq"}])
def test_c_and_reference_backends_write_the_same_bytes(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       kw: dict) -> None:
    pytest.importorskip("quantcli._kernels")
    files = {}
    for backend in ("c", "reference"):
        monkeypatch.setenv("QUANTCLI_BACKEND", backend)
        out = convert(source, tmp_path / backend, **kw)
        files[backend] = (out / "model.safetensors").read_bytes()
    assert files["c"] == files["reference"]
