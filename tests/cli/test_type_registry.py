"""Tensor types are checked against one registry (quant.base.writable_types) when options and recipes are read:
`--tensor-type attn_v=Q8_1` and a recipe naming Q8_1 fail before the model is even looked at, with the same
list of valid types, and a type that gains an encoder is accepted by both at once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.quant.base import writable_types

VALID = ", ".join(t.name for t in writable_types())


def convert(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", "convert", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("name", ["Q8_1", "MXFP4", "I8"])
def test_cli_and_recipe_refuse_a_type_without_an_encoder_before_reading_the_model(tmp_path: Path, name: str) -> None:
    missing = str(tmp_path / "no-such-model")          # never opened: the option is refused first
    out = str(tmp_path / "out.gguf")
    cli = convert(missing, "--type", "Q4_K_M", "--tensor-type", f"attn_v={name}", "-o", out)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"quantize: {{type: Q4_K_M, tensor_types: {{attn_v: {name}}}}}\n")
    from_recipe = convert(missing, "--recipe", str(recipe), "-o", out)
    for res in (cli, from_recipe):
        assert res.returncode == 2, res.stderr
        (line,) = [x for x in res.stderr.splitlines() if x.strip()]
        assert f"'{name}' is not a type quantcli can write" in line and VALID in line, line
        assert "no-such-model" not in line
    assert "r.yaml:1:" in from_recipe.stderr
    assert not (tmp_path / "out.gguf").exists()
