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


# ---- issue 10: hostile values in an otherwise complete model folder -------------------------------------------

def set_config(**values: object) -> Callable[[Path], None]:
    def breaker(m: Path) -> None:
        cfg = json.loads((m / "config.json").read_text())
        cfg.update(values)
        (m / "config.json").write_text(json.dumps(cfg))
    return breaker


def edit_tensor(name: str, edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def breaker(m: Path) -> None:
        w = weights(m)
        tensors = load_file(w)
        tensors[name] = edit(tensors[name].copy())
        save_file(tensors, w)
    return breaker


def with_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def edit(a: np.ndarray) -> np.ndarray:
        a.flat[3] = value
        return a
    return edit


def deep_json(name: str) -> Callable[[Path], None]:
    def breaker(m: Path) -> None:
        (m / name).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    return breaker


def fifo_weights(m: Path) -> None:
    w = weights(m)
    w.unlink()
    os.mkfifo(w)


def lone_surrogate_token(m: Path) -> None:
    text = (m / "tokenizer.json").read_text()
    tok = json.loads(text)
    victim = next(t for t in tok["model"]["vocab"] if t.isalpha() and len(t) > 3)
    # json.dumps writes the escape "\ud800" that Python reads back as a lone surrogate
    quoted = json.dumps(victim, ensure_ascii=False)
    assert quoted in text
    (m / "tokenizer.json").write_text(text.replace(quoted, quoted[:-1] + '\\ud800"', 1))


def lone_surrogate_name(m: Path) -> None:
    set_config(_name_or_path="x\ud800")(m)


def non_utf8_chat_template(m: Path) -> None:
    cfg = json.loads((m / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (m / "tokenizer_config.json").write_text(json.dumps(cfg))
    (m / "chat_template.jinja").write_bytes(b"{{ messages }}\xff\xfe")


DOWN = "model.layers.0.mlp.down_proj.weight"
HARDENING: dict[str, tuple[Callable[[Path], None], tuple[str, ...], str]] = {
    # config values of the wrong type or range: the message names the field
    "tie_word_embeddings 'no'": (set_config(tie_word_embeddings="no"), (), "tie_word_embeddings is 'no' (a string)"),
    "num_attention_heads as a string": (set_config(num_attention_heads="4"), (), "num_attention_heads is '4' (a string)"),
    "num_attention_heads as a list": (set_config(num_attention_heads=[4]), (), "num_attention_heads is [4] (a list)"),
    "num_attention_heads 0": (set_config(num_attention_heads=0), (), "num_attention_heads is 0"),
    "num_key_value_heads 0": (set_config(num_key_value_heads=0), (), "num_key_value_heads is 0"),
    "max_position_embeddings 2^40": (set_config(max_position_embeddings=2**40), (), "max_position_embeddings is 1099511627776"),
    "max_position_embeddings -1": (set_config(max_position_embeddings=-1), (), "max_position_embeddings is -1"),
    "head_dim 0": (set_config(head_dim=0), (), "head_dim is 0"),
    "architectures [{}]": (set_config(architectures=[{}]), (), "'architectures' list of names"),
    # config values checked against the tensors present, before anything is sized by them
    "num_hidden_layers 1e9": (set_config(num_hidden_layers=10**9), (), "num_hidden_layers is 1000000000 but"),
    "vocab_size 1e9": (set_config(vocab_size=10**9), (), "vocab_size is 1000000000 but the token embedding"),
    "vocab_size above the embedding rows": (set_config(vocab_size=49153), (), "vocab_size is 49153 but"),
    "a tensor shape that disagrees with config.json": (
        edit_tensor(DOWN, lambda a: a[:, :-32].copy()), (), "disagrees with tensor 'model.layers.0.mlp.down_proj.weight'"),
    "a zero-length norm": (edit_tensor("model.norm.weight", lambda a: a[:0].copy()), (), "zero-length dimension"),
    "a tensor with a zero dimension": (
        edit_tensor(DOWN, lambda a: a[:0].copy()), (), "'model.layers.0.mlp.down_proj.weight' has shape [0, 672]"),
    # files that break parsers
    "deeply nested config.json": (deep_json("config.json"), (), "nests JSON too deeply"),
    "deeply nested tokenizer.json": (deep_json("tokenizer.json"), (), "nests JSON too deeply"),
    "a FIFO as the weights file": (fifo_weights, (), "is a FIFO, not a regular file"),
    "a lone surrogate in a token": (lone_surrogate_token, (), "tokenizer.ggml.tokens["),
    "a lone surrogate in the model name": (lone_surrogate_name, (), "general.name ('x\\ud800') holds a lone UTF-16 surrogate"),
    "invalid UTF-8 in the chat template": (non_utf8_chat_template, (), "chat_template.jinja is not UTF-8 text"),
    # finite weights the target type cannot hold
    "1e6 in an F16 output": (edit_tensor(DOWN, with_value(1e6)), ("--type", "F16"),
                             f"tensor '{DOWN}' holds 1e+06 (row 0), too large for F16"),
    "1e6 in a Q4_0 output": (edit_tensor(DOWN, with_value(1e6)), ("--type", "Q4_0"),
                             f"tensor '{DOWN}' holds 1e+06 (row 0), too large for Q4_0"),
    "3.4e38 in a BF16 output": (edit_tensor(DOWN, with_value(3.4e38)), ("--type", "BF16"), "too large for BF16"),
    # options naming types quantcli cannot write
    "--output-tensor-type Q9_K": (lambda m: None, ("--output-tensor-type", "Q9_K"), "'Q9_K' is not a known type"),
    "--output-tensor-type MXFP4": (lambda m: None, ("--output-tensor-type", "MXFP4"), "not a type quantcli can write"),
    "--tensor-type attn_v=Q8_1": (lambda m: None, ("--tensor-type", "attn_v=Q8_1"),
                                  "--tensor-type attn_v=Q8_1: 'Q8_1' is not a type quantcli can write"),
}


@pytest.mark.parametrize("case", list(HARDENING))
def test_hostile_model_input(model: Path, tmp_path: Path, case: str) -> None:
    breaker, extra, message = HARDENING[case]
    breaker(model)
    out = tmp_path / "out" / "model.gguf"
    args = ("--type", "Q8_0", *extra) if "--type" not in extra else extra
    res = run_cli("convert", str(model), "-o", str(out), *args)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), res.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    leftovers = list(out.parent.iterdir()) if out.parent.exists() else []
    assert leftovers == [], leftovers


def test_empty_vocab_txt_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bert = tmp_path / "bert"
    shutil.copytree(model_path("tiny-bert"), bert)
    (bert / "tokenizer.json").unlink(missing_ok=True)
    (bert / "vocab.txt").write_text("")
    res = run_cli("convert", str(bert), "-o", str(tmp_path / "out" / "b.gguf"), "--type", "F16")
    assert res.returncode == 2, res.stderr
    assert "vocab.txt is empty" in res.stderr and "Traceback" not in res.stderr


def test_cache_dir_that_is_a_file_warns_and_still_writes_the_output(model: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("")
    out = tmp_path / "out" / "m.gguf"
    res = run_cli("convert", str(model), "-o", str(out), "--type", "Q8_0", env={"QUANTCLI_CACHE_DIR": str(not_a_dir)})
    assert res.returncode == 0, res.stderr
    assert "Warning: the stage cache" in res.stderr and "running without it" in res.stderr
    assert out.is_file() and out.with_suffix(".manifest.json").is_file()
    assert not_a_dir.read_text() == ""


def test_absurd_thread_count_is_a_usage_error(model: Path, tmp_path: Path) -> None:
    # typer's own usage error (Usage/Try lines, then the Error line): the C kernels never see the number
    res = run_cli("convert", str(model), "-o", str(tmp_path / "out" / "m.gguf"), "-t", "99999999999")
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--threads" in errors[0] and "1024" in errors[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()
