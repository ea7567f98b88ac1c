"""verify: gguf-py (an independent reader) reopens our files; broken files and exceeded thresholds fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.errors import VerifyError
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.stages.verify import error_figures, verify_file
from tests.fixtures.paths import model_path

import numpy as np


@pytest.fixture(scope="module")
def q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "tiny-q8_0.gguf"
    convert(ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe_from_type("Q8_0"), output=out,
                           verify="none"))
    return out


@pytest.mark.slow  # needs the built test models
def test_a_good_file_passes_with_figures_per_tensor(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-llama"))
    assert report.ok, report.problems
    quantized = [t for t in report.tensors if t.type == "Q8_0"]
    assert quantized and all(t.snr_db > 35 and t.rmse > 0 for t in quantized)
    assert all(t.snr_db == float("inf") for t in report.tensors if t.type == "F32")


@pytest.mark.slow  # needs the built test models
def test_threshold_exceeded_fails(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-llama"), min_snr_db=80)
    assert not report.ok and any(not t.ok for t in report.tensors)


@pytest.mark.slow  # needs the built test models
def test_truncated_file_is_a_verify_error(q8: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(q8.read_bytes()[: q8.stat().st_size // 2])
    with pytest.raises(VerifyError, match="not a readable GGUF file.*past the end"):
        verify_file(cut)


def test_garbage_is_a_verify_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(VerifyError, match="not a readable GGUF"):
        verify_file(junk)


@pytest.mark.slow  # needs the built test models
def test_wrong_source_is_reported(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-qwen2"))
    assert not report.ok


def test_error_figures() -> None:
    ref = np.array([3.0, 4.0], dtype=np.float32)
    rmse, max_abs, snr = error_figures(ref, ref + np.array([0.0, 0.5], dtype=np.float32))
    assert max_abs == 0.5 and abs(rmse - (0.125 ** 0.5)) < 1e-12 and abs(snr - 10 * np.log10(25 / 0.25)) < 1e-9


@pytest.mark.slow  # needs the built test models
def test_cli_json_and_exit_codes(q8: Path) -> None:
    base = [sys.executable, "-m", "quantcli.cli.app", "verify", str(q8), "--source", str(model_path("tiny-llama"))]
    good = subprocess.run(base + ["--json"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    data = json.loads(good.stdout)
    assert data["ok"] is True and len(data["tensors"]) == data["n_tensors"]
    bad = subprocess.run(base + ["--min-snr-db", "90", "--json"], capture_output=True, text=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False
