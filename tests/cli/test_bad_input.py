"""Every bad input gets one line naming the cause and the fix, exit code 2, no traceback, and no output file.

The CLI runs as a user runs it (a subprocess), on a copy of the tiny Llama test model broken in one way each.
docs/reliability.md lists the same cases with what the user sees.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.fixtures.paths import model_path

# needs the built test models (make models)
pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": "", **(env or {})})


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(model_path("tiny-llama"), dst)
    return dst


def weights(model: Path) -> Path:
    return next(model.glob("*.safetensors"))


def drop_config(m: Path) -> None:
    (m / "config.json").unlink()


def bad_json_config(m: Path) -> None:
    (m / "config.json").write_text("{not json")


def unknown_arch(m: Path) -> None:
    cfg = json.loads((m / "config.json").read_text())
    cfg["architectures"] = ["FrobnicatorForCausalLM"]
    (m / "config.json").write_text(json.dumps(cfg))


def drop_tokenizer(m: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (m / name).unlink(missing_ok=True)


def truncate(m: Path) -> None:
    w = weights(m)
    data = w.read_bytes()
    w.write_bytes(data[: len(data) - 1000])


def lying_shape(m: Path) -> None:
    w = weights(m)
    data = w.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__" and len(header[k]["shape"]) == 2)
    header[name]["shape"][0] += 1
    blob = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n :])


def int_weights(m: Path) -> None:
    w = weights(m)
    tensors = load_file(w)
    name = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, w)


def nan_weights(m: Path) -> None:
    w = weights(m)
    tensors = load_file(w)
    name = next(k for k, v in tensors.items() if v.ndim == 2 and "layers.1" in k)
    t = tensors[name].copy()
    t.flat[7] = np.nan
    tensors[name] = t
    save_file(tensors, w)


def pickled_only(m: Path) -> None:
    w = weights(m)
    w.rename(m / "pytorch_model.bin")


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing config.json": (drop_config, "has no config.json"),
    "invalid config.json": (bad_json_config, "is not valid JSON"),
    "unsupported architecture": (unknown_arch, "FrobnicatorForCausalLM is not supported"),
    "missing tokenizer": (drop_tokenizer, "tokenizer"),
    "truncated safetensors": (truncate, "truncated or corrupt"),
    "header that lies about a shape": (lying_shape, "truncated or corrupt"),
    "unsupported dtype": (int_weights, "I32"),
    "NaN weights": (nan_weights, "NaN/Inf"),
    "pickled weights only": (pickled_only, "pickled"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_input(model: Path, tmp_path: Path, case: str) -> None:
    breaker, message = CASES[case]
    breaker(model)
    out = tmp_path / "out" / "model.gguf"
    res = run_cli("convert", str(model), "-o", str(out), "--type", "Q8_0")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.stderr
    assert message in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists()
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == [], leftovers


def test_debug_variable_shows_the_traceback(model: Path, tmp_path: Path) -> None:
    drop_config(model)
    res = run_cli("convert", str(model), "-o", str(tmp_path / "x.gguf"), env={"QUANTCLI_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_unwritable_output_folder(model: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            # root ignores permissions; a path under a regular file cannot be created by anyone
            target = tmp_path / "afile"
            target.write_text("")
            out = target / "x.gguf"
        else:
            out = locked / "x.gguf"
        res = run_cli("convert", str(model), "-o", str(out), "--type", "F16")
    finally:
        locked.chmod(0o700)
    assert res.returncode == 3  # environment, not bad input (docs/cli.md), res.stderr
    assert res.stderr.startswith("Error: cannot write to") and "-o" in res.stderr
    assert not out.exists()


def test_bad_recipe_names_file_and_line(model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("quantize:\n  type: Q4_K_M\n  colour: blue\n")
    res = run_cli("convert", str(model), "--recipe", str(recipe), "-o", str(tmp_path / "x.gguf"))
    assert res.returncode == 2
    assert f"{recipe}:3: unknown key 'colour'" in res.stderr


def test_unknown_type_lists_the_valid_ones(model: Path, tmp_path: Path) -> None:
    res = run_cli("convert", str(model), "--type", "Q9_9", "-o", str(tmp_path / "x.gguf"))
    assert res.returncode == 2 and "Q4_K_M" in res.stderr and "Traceback" not in res.stderr


def test_forced_type_the_rows_cannot_hold_is_refused_before_writing(tmp_path: Path) -> None:
    # tiny-qwen2's rows have 128 values. llama.cpp does not fall back for a type the user forces: it fails
    # validation or aborts mid-file; quantcli refuses before opening the output.
    out = tmp_path / "out" / "x.gguf"
    res = run_cli("convert", str(model_path("tiny-qwen2")), "--type", "Q4_K_M", "--token-embedding-type", "Q4_K",
                  "-o", str(out))
    assert res.returncode == 2, res.stderr
    assert "--token-embedding-type Q4_K cannot hold 'token_embd.weight'" in res.stderr and "Traceback" not in res.stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
