"""The commands as a user types them: dry-run plan, inspect, version, --json outputs, exit codes, help."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


# --- exit codes: every command held to the table in quantcli/errors.py (docs/cli.md) ---------------------------

def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as jq and most non-Python parsers do."""
    def refuse(word: str) -> None:
        raise ValueError(f"non-standard JSON constant {word}")
    return json.loads(text, parse_constant=refuse)


def error_line(res: subprocess.CompletedProcess) -> str:
    """The one line a failure prints on stderr (no traceback, nothing else)."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("commands") / "tiny-q8_0.gguf"
    res = cli("convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out),
              env={"QUANTCLI_CACHE_DIR": str(out.parent / "cache")})
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.slow  # needs the built test models
def test_bad_input_and_usage_exit_2(q8: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(q8.read_bytes()[:4000])
    cases = [
        ("convert", str(tmp_path / "no-model"), "--type", "Q8_0"),
        ("quantize", "org/name", "--type", "Q8_0", "-o", str(tmp_path / "out")),
        ("download", "./not-a-hub-id"),
        ("inspect", str(damaged)),
        ("inspect", str(model_path("tiny-llama") / "config.json")),
        ("verify", str(tmp_path)),
        ("verify", str(tmp_path / "missing.gguf")),
        ("publish", str(tmp_path), "--repo", "me/x", "--dry-run"),
        ("batch", str(tmp_path / "missing.yaml")),
        ("recipes", "show", "no-such-recipe"),
    ]
    for args in cases:
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        error_line(res)
    assert error_line(cli("inspect", str(damaged))).count(str(damaged)) == 1      # the path once, not twice
    assert "quantcli inspect takes" in error_line(cli("inspect", str(model_path("tiny-llama") / "config.json")))
    usage = cli("convert", "--no-such-option")           # click's usage errors share the code
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


@pytest.mark.slow  # needs the built test models
def test_failed_verification_exits_1_naming_check_figure_and_threshold(tmp_path: Path) -> None:
    recipe = tmp_path / "strict.yaml"
    recipe.write_text("name: strict\nquantize:\n  type: Q8_0\nverify:\n  min_snr_db: 200\n")
    res = cli("convert", str(model_path("tiny-llama")), "--recipe", str(recipe), "--verify", "full",
              "-o", str(tmp_path / "out"), env={"QUANTCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 1, res.stderr
    line = error_line(res)
    assert "failed verification" in line and "tensors over their threshold" in line and "dB < 200 dB" in line


@pytest.mark.slow  # needs the built test models
def test_environment_problems_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = cli("convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(blocker / "x.gguf"),
              env={"QUANTCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 3 and error_line(res).startswith("Error: cannot write to")


# Failures no command produces on demand, injected into the real program at the call the inspect command makes.
INJECT = """
import errno, sys
import quantcli.inspect
def fail(path):
    raise {exc}
quantcli.inspect.describe = fail
sys.argv = ["quantcli", "inspect", "x.gguf"]
from quantcli.cli.app import main
main()
"""


@pytest.mark.parametrize("exc, code, words", [
    ("OSError(errno.ENOSPC, 'No space left on device')", 3, "No space left on device"),
    ("PermissionError(errno.EACCES, 'Permission denied', 'x.gguf')", 3, "Permission denied (x.gguf)"),
    ("MemoryError()", 3, "out of memory"),
    ("KeyError('surprise')", 4, "internal error: KeyError"),
    ("OSError(errno.EBADF, 'Bad file descriptor')", 4, "internal error: OSError"),
])
def test_environment_and_internal_errors_have_their_own_codes(exc: str, code: int, words: str) -> None:
    res = subprocess.run([sys.executable, "-c", INJECT.format(exc=exc)], capture_output=True, text=True,
                         env={**os.environ, "QUANTCLI_DEBUG": ""})
    assert res.returncode == code, res.stderr
    assert words in error_line(res)


# --- JSON: strict everywhere --------------------------------------------------------------------------------------

@pytest.mark.slow  # needs the built test models
def test_every_json_output_is_strict_json(q8: Path, tmp_path: Path) -> None:
    from gguf import GGUFWriter

    odd = tmp_path / "odd.gguf"
    w = GGUFWriter(str(odd), "llama")
    w.add_float32("test.nan", float("nan"))
    w.add_float32("test.inf", float("inf"))
    w.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = strict_json(cli("inspect", str(odd), "--json").stdout)
    assert info["metadata"]["test.nan"] is None and info["metadata"]["test.inf"] is None
    for args in [("version", "--json"), ("recipes", "list", "--json"), ("recipes", "show", "q4_k_m", "--json"),
                 ("recipes", "schema"), ("inspect", str(q8), "--json"),
                 ("inspect", str(model_path("tiny-llama")), "--json"),
                 ("convert", str(model_path("tiny-llama")), "--type", "Q4_0", "--dry-run", "--json"),
                 ("verify", str(q8), "--source", str(model_path("tiny-llama")), "--json"),
                 ("publish", str(q8.parent), "--repo", "me/tiny-GGUF", "--dry-run", "--json")]:
        res = cli(*args)
        assert res.returncode == 0, (args, res.stderr)
        strict_json(res.stdout)


# --- help, shapes, inspect of a safetensors file, the verify summary after convert, manifests ------------------------

@pytest.mark.parametrize("command", [("convert",), ("quantize",), ("verify",), ("inspect",), ("batch",), ("download",),
                                     ("publish",), ("version",), ("recipes", "list"), ("recipes", "show"), ()])
def test_help_shows_no_value_on_flags(command: tuple[str, ...]) -> None:
    res = cli(*command, "--help", env={"COLUMNS": "200"})
    assert res.returncode == 0 and "--help" in res.stdout
    assert "<bool>" not in res.stdout


@pytest.mark.slow  # needs the built test models
def test_dry_run_shapes_are_the_written_files_shapes(tmp_path: Path) -> None:
    out = tmp_path / "x.gguf"
    plan = json.loads(cli("convert", str(model_path("tiny-llama")), "--type", "Q4_0", "--dry-run", "--json").stdout)
    assert cli("convert", str(model_path("tiny-llama")), "--type", "Q4_0", "-o", str(out),
               env={"QUANTCLI_CACHE_DIR": str(tmp_path / "cache")}).returncode == 0
    written = {t["name"]: t["shape"] for t in json.loads(cli("inspect", str(out), "--json").stdout)["tensors"]}
    assert {t["name"]: t["shape"] for t in plan["outputs"][0]["tensors"]} == written
    text = cli("convert", str(model_path("tiny-llama")), "--type", "Q4_0", "--dry-run").stdout
    embd = written["token_embd.weight"]
    assert any(line.split()[0] == "token_embd.weight" and f"{embd[0]}x{embd[1]}" in line for line in text.splitlines())


@pytest.mark.slow  # needs the built test models
def test_inspect_a_safetensors_file() -> None:
    folder = json.loads(cli("inspect", str(model_path("tiny-llama")), "--json").stdout)
    (st,) = list(model_path("tiny-llama").glob("*.safetensors"))
    single = json.loads(cli("inspect", str(st), "--json").stdout)
    assert single["format"] == "safetensors"
    assert [(t["name"], t["shape"]) for t in single["tensors"]] == [(t["name"], t["shape"]) for t in folder["tensors"]]


@pytest.mark.slow  # needs the built test models
def test_convert_verify_full_prints_the_summary_and_the_manifest_keeps_it(tmp_path: Path) -> None:
    out = tmp_path / "m.gguf"
    res = cli("convert", str(model_path("tiny-llama")), "--type", "Q8_0", "--verify", "full", "-o", str(out),
              env={"QUANTCLI_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert "tensors over their threshold" in res.stdout and "worst 5 by SNR" in res.stdout and "OK" in res.stdout
    manifest = strict_json(out.with_name("m.manifest.json").read_text())
    (entry,) = manifest["outputs"]
    assert "verify" not in entry                                    # the per-tensor table is not kept
    summary = entry["verify_summary"]
    assert summary["ok"] is True and summary["n_failed"] == 0 and len(summary["worst"]) == 5
    assert summary["n_compared"] == summary["n_tensors"] == entry["tensors"]

