"""`quantcli convert --method gptq|awq` for folder formats: the combinations refused before anything is read or
written (exit 2, one line), and a whole run on tiny-llama with a test-only method standing in for GPTQ/AWQ
(real calibration text, real tokenization, the JSON record of method, options and data)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from quantcli.cli.app import app
from quantcli.io.checkpoint import Checkpoint
from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry, Option
from quantcli.stages.calibration_data import builtin_text
from tests.fixtures.paths import model_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1", "QUANTCLI_DEBUG": ""})


# Each is refused from the options alone, before the model is opened: the model path need not exist.
BAD = {
    "calibrate-with-minmax": (["--calibrate", "builtin:calibration"], "--calibrate applies to calibrated methods"),
    "chunks-with-mse": (["--method", "mse", "--chunks", "8"], "--chunks applies to calibrated methods"),
    "gptq-with-nf4": (["--method", "gptq", "--format", "bnb-nf4"], "--method gptq does not apply to bnb-nf4"),
    "act-order-with-awq": (["--method", "awq", "--act-order"], "--method awq has no option 'act_order'"),
    "act-order-with-minmax": (["--act-order"], "--method minmax takes no options"),
    "damp-out-of-range": (["--method", "gptq", "--damp", "1.5"], "--damp 1.5 is outside [0, 1)"),
    "unknown-option": (["--method", "gptq", "--method-option", "gamma=2"], "--method gptq has no option 'gamma'"),
    "not-key-value": (["--method", "awq", "--method-option", "clip"], "--method-option 'clip' is not KEY=VALUE"),
    "twice": (["--method", "gptq", "--damp", "0.1", "--method-option", "damp=0.2"], "damp is given twice"),
    "static-groups-off": (["--method", "gptq", "--act-order", "--method-option", "static_groups=false"],
                          "cannot store act-order with reordered groups"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_exit_2_with_one_line_and_write_nothing(tmp_path: Path, case: str) -> None:
    args, message = BAD[case]
    r = run_cli("convert", str(tmp_path / "no-model"), "--format", "compressed-tensors", *args, "-o", "out",
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and sorted(os.listdir(tmp_path)) == []


def test_gguf_refuses_the_folder_method_options(tmp_path: Path) -> None:
    r = run_cli("convert", str(tmp_path / "no-model"), "--type", "Q4_0", "--damp", "0.1", cwd=tmp_path)
    assert r.returncode == 2 and "apply to folder formats" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_method_that_is_not_installed_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED, "gptq", MethodEntry("gptq", "quantcli.quant.algorithms.not_there:GPTQ", (), ""))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["convert", str(model_path("tiny-llama")), "--format", "compressed-tensors",
                                 "--method", "gptq", "--group-size", "32", "-o", "out"])
    assert r.exit_code == 2 and "--method gptq is not part of this quantcli install" in r.output
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_tiny_llama_end_to_end_with_a_test_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED, "t-dense", MethodEntry("t-dense", "tests.fixtures.block_methods:DenseShrink",
                                                           (Option("skip", str, None, ""),), "test only"))
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "calib.txt"
    text.write_text(builtin_text("eval").text[:20000], encoding="utf-8")
    r = CliRunner().invoke(app, [
        "convert", str(model_path("tiny-llama")), "--format", "compressed-tensors", "--scheme", "W4A16",
        "--group-size", "32", "--method", "t-dense", "--method-option", "skip=down_proj", "--calibrate", str(text),
        "--ctx", "64", "--chunks", "6", "-o", "out", "--verify", "full", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["method"] == "t-dense" and rec["options"] == {"skip": "down_proj"}
    cal = rec["calibration"]
    assert cal["data"] == str(text)
    assert cal["data_sha256"] == hashlib.sha256(text.read_text(encoding="utf-8").encode()).hexdigest()
    assert (cal["ctx"], cal["chunks"], cal["tokens"], cal["blocks"]) == (64, 6, 384, 2)
    assert cal["filled"] == 2 and cal["chosen"] == 2 * 6 + 2      # six linears and a norm per block
    assert rec["verify"]["ok"] and len(rec["quantized"]) == 14
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["config.json", "model.safetensors", "generation_config.json", "special_tokens_map.json", "tokenizer.json",
         "tokenizer_config.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # the sequences the method saw are the text's tokens, 64 a chunk, the vocabulary's BOS rule applied
    from quantcli.stages.calibrate import special_ids
    from quantcli.stages.chunks import chunk_tokens, with_bos
    from quantcli.plan.gguf import SourceModel
    from quantcli.stages.eval_text import encode
    from tests.fixtures.block_methods import DenseShrink

    source = Checkpoint.open(model_path("tiny-llama"))
    special = special_ids(SourceModel.open(source).tokenizer(None))
    ids = encode(model_path("tiny-llama"), text.read_text(encoding="utf-8"))
    if special.bos is not None:
        ids = np.concatenate([[special.bos], ids])
    chunks = with_bos(chunk_tokens(ids, 64, 6), special.bos)
    # block 0's inputs are the embedding rows of exactly those tokens (llama: no scaling)
    assert DenseShrink.last is not None
    np.testing.assert_array_equal(DenseShrink.last.inputs[0], source.read_f32("model.embed_tokens.weight")[chunks])


@pytest.mark.slow
def test_dry_run_names_the_data_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CALIBRATED, "t-rtn", MethodEntry("t-rtn", "tests.fixtures.block_methods:RtnCodes", (), ""))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["convert", str(model_path("tiny-llama")), "--format", "compressed-tensors",
                                 "--group-size", "32", "--method", "t-rtn", "--chunks", "3", "--dry-run", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["calibration"]["data"] == "builtin:calibration" and rec["calibration"]["chunks"] == 3
    assert rec["calibration"]["data_sha256"] == builtin_text("calibration").sha256
    assert os.listdir(tmp_path) == []
