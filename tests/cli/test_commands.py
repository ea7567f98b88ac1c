"""The commands as a user types them: dry-run plan, inspect, version, --json outputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.paths import model_path
from tests.gguf_files import stored_tensors, tensor_types


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", **(env or {})})


@pytest.mark.slow  # needs the built test models
def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    res = cli("convert", str(model_path("tiny-llama")), "--type", "Q4_0", "--dry-run", "-o", str(out), "--json")
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert not out.exists()
    tensors = {t["name"]: t for t in plan["outputs"][0]["tensors"]}
    assert tensors["output.weight"]["type"] == "Q6_K"          # llama.cpp's legacy mix rule
    assert tensors["blk.0.attn_norm.weight"]["type"] == "F32"  # norms stay float
    assert "rope-permute" in tensors["blk.0.attn_q.weight"]["transform"]
    # the file is the tensors plus a header that holds the vocabulary (49k tokens): more, but not twice as much
    tensor_bytes = sum(t["bytes"] for t in tensors.values())
    assert tensor_bytes < plan["outputs"][0]["bytes"] < 2 * tensor_bytes


@pytest.mark.slow  # needs the built test models
def test_dry_run_size_is_the_written_size(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    plan = json.loads(cli("convert", str(model_path("tiny-llama")), "--type", "Q4_K_M", "--dry-run", "--json").stdout)
    res = cli("convert", str(model_path("tiny-llama")), "--type", "Q4_K_M", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size == plan["outputs"][0]["bytes"]
    assert {name: t.name for name, t in tensor_types(out).items()} == \
        {t["name"]: t["type"] for t in plan["outputs"][0]["tensors"]}


@pytest.mark.slow  # needs the built test models
def test_default_type_keeps_bf16(tmp_path: Path) -> None:
    out = tmp_path / "bf16.gguf"
    assert cli("convert", str(model_path("tiny-llama-bf16")), "-o", str(out)).returncode == 0
    types = {t.qtype.name for t in stored_tensors(out).values() if len(t.shape) == 2}
    assert types == {"BF16"}


@pytest.mark.slow  # needs the built test models
def test_inspect_gguf_and_folder(tmp_path: Path) -> None:
    out = tmp_path / "f16.gguf"
    assert cli("convert", str(model_path("tiny-llama-f16")), "-o", str(out)).returncode == 0
    info = json.loads(cli("inspect", str(out), "--json").stdout)
    assert info["format"] == "gguf" and info["metadata"]["general.architecture"] == "llama"
    folder = json.loads(cli("inspect", str(model_path("tiny-llama")), "--json").stdout)
    assert folder["format"] == "safetensors" and folder["metadata"]["model_type"] == "llama"
    table = cli("inspect", str(out))
    assert table.returncode == 0 and "token_embd.weight" in table.stdout


def test_version_names_the_backend() -> None:
    res = cli("version", "--json", env={"QUANTCLI_BACKEND": "reference"})
    assert json.loads(res.stdout)["backend"].startswith("reference")
    assert cli("version", env={"QUANTCLI_BACKEND": "gpu"}).returncode == 2
