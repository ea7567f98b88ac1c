"""convert --method splitquant on the built tiny models: the dense folder is a plain checkpoint holding the split
sum, the three-branch folder runs in the engine and gives the same weights, stock loaders refuse the branch folder,
and bad input is refused before anything is written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantcli.engine import Engine
from quantcli.engine.split_weights import SplitWeights, open_folder
from quantcli.errors import InputError
from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline.convert_split import SplitConvertRequest, convert_split
from quantcli.quant.algorithms.splitquant import split_linear
from quantcli.quant.backend import get_backend
from quantcli.io.int_scheme import scheme_named
from quantcli.io.int_codes import round_to
from tests.fixtures.paths import model_path

pytestmark = [pytest.mark.slow, pytest.mark.backend]
TOKENS = np.array([[1, 20, 300, 4000, 17, 99, 123, 5]], dtype=np.int32)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""})


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llama-bf16", "tiny-qwen2"])
def test_dense_folder_holds_the_split_sum_and_the_rest_unchanged(name: str, tmp_path: Path) -> None:
    src = model_path(name)
    out = tmp_path / "dense"
    result = convert_split(SplitConvertRequest(model=str(src), output=out, threads=2))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "splitquant" not in config
    assert "dense" in (out / "README.md").read_text()
    ckpt, got = Checkpoint.open(src), Checkpoint.open(out)
    assert set(got.tensors) == set(ckpt.tensors)
    scheme = scheme_named("W4A16").with_options(group_size=0)
    split = [m for m in result.plan.modules if m.quantized]
    assert split
    for m in result.plan.modules:
        assert got.tensors[m.source].dtype == m.dtype
        if not m.quantized:
            assert np.array_equal(got.read_raw(m.source), ckpt.read_raw(m.source))
    for m in split[:4]:
        bias = f"{m.module}.bias"
        s = split_linear(ckpt.read_f32(m.source), scheme, "F32" if m.dtype == "F32" else m.dtype, get_backend(),
                         ckpt.read_f32(bias) if bias in ckpt.tensors else None)
        assert np.array_equal(got.read_raw(m.source), round_to(s.dense(), m.dtype)[0])


@pytest.mark.parametrize("name,scheme", [("tiny-llama", "W4A16"), ("tiny-llama-bf16", "W4A16_ASYM"),
                                         ("tiny-qwen2", "W4A16")])
def test_branch_folder_runs_in_the_engine_and_equals_the_dense_sum(name: str, scheme: str, tmp_path: Path) -> None:
    src = model_path(name)
    dense = convert_split(SplitConvertRequest(model=str(src), scheme=scheme, output=tmp_path / "d", threads=2))
    convert_split(SplitConvertRequest(model=str(src), scheme=scheme, branches=True, output=tmp_path / "b", threads=2))
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["splitquant"]["modules"] == [m.module for m in dense.plan.modules if m.quantized]
    assert not (tmp_path / "b" / "model.safetensors").exists()
    branches = open_folder(tmp_path / "b")
    assert isinstance(branches, SplitWeights)
    plain = Engine.from_hf(tmp_path / "d", threads=2)
    eng = Engine(branches, threads=2)
    dense_ckpt = Checkpoint.open(tmp_path / "d")
    for t in eng.spec.tensors:
        name_ = branches.name(t)
        if name_ in branches.split:
            stored = dense_ckpt.tensors[name_].dtype
            # the dense folder stores the float32 sum rounded once to the source dtype
            assert np.array_equal(round_to(branches.load(t), stored)[1], dense_ckpt.read_f32(name_))
    a, b = next(plain.run(TOKENS)), next(eng.run(TOKENS))
    tol = 1e-4 if dense_ckpt.tensors[next(iter(branches.split))].dtype == "F32" else 5e-2
    assert np.max(np.abs(a - b)) <= tol * max(1.0, float(np.max(np.abs(a))))


def test_split_beats_per_channel_rtn_on_smollm2_weights() -> None:
    from quantcli.quant.int.encode import encode_weight

    ckpt = Checkpoint.open(model_path("SmolLM2-135M-Instruct"))
    scheme = scheme_named("W4A16").with_options(group_size=0)
    for name in ("model.layers.3.self_attn.o_proj.weight", "model.layers.10.mlp.up_proj.weight"):
        w = ckpt.read_f32(name)
        s = split_linear(w, scheme, "F32", get_backend(), threads=2)
        one, _ = encode_weight(w, scheme, "F32", "minmax", get_backend(), 2)
        assert np.sum((s.dense() - w) ** 2) < np.sum((one.dequantize("F32", None) - w) ** 2)


def test_transformers_refuses_the_branch_folder(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    convert_split(SplitConvertRequest(model=str(model_path("tiny-llama")), branches=True, output=tmp_path / "b"))
    with pytest.raises(OSError):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")


def test_a_plain_folder_is_not_a_branch_folder() -> None:
    with pytest.raises(InputError, match="splitquant"):
        SplitWeights.open(model_path("tiny-llama"))


@pytest.mark.parametrize("args,needle", [
    (["--method", "splitquant", "--scheme", "W8A16"], "INT4"),
    (["--method", "splitquant", "--bits", "8"], "--bits 8"),
    (["--method", "splitquant", "--format", "compressed-tensors"], "--format"),
    (["--method", "splitquant", "--type", "Q4_K_M"], "--format"),
    (["--splitquant-branches"], "--method splitquant"),
    (["--method", "splitquant", "--group-size", "48"], "--group-size 48"),
])
def test_bad_input_is_refused_with_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run_cli("convert", str(model_path("tiny-llama")), *args, "-o", str(out))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() and not any(tmp_path.iterdir())


def test_cli_says_what_the_dense_folder_is(tmp_path: Path) -> None:
    r = run_cli("convert", str(model_path("tiny-llama")), "--method", "splitquant", "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "dense" in r.stdout and "no quantization_config" in r.stdout
