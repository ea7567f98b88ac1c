"""verify: gguf-py (an independent reader) reopens our files; broken files and exceeded thresholds fail, with a
summary first and figures that never crash on non-finite values."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantcli.errors import InputError, UnsupportedError, VerifyError
from quantcli.pipeline.convert import ConvertRequest, convert, recipe_from_type
from quantcli.stages.verify import FIGURE_CHUNK, error_figures, failure_line, summarize, verify_file
from tests.fixtures.paths import model_path


@pytest.fixture(scope="module")
def q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "tiny-q8_0.gguf"
    convert(ConvertRequest(model=str(model_path("tiny-llama")), recipe=recipe_from_type("Q8_0"), output=out,
                           verify="none"))
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", "verify", *args], capture_output=True, text=True,
                          env={**os.environ, "QUANTCLI_NO_PROGRESS": "1"}, timeout=600)


def strict_json(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as jq and most non-Python parsers do."""
    def refuse(word: str) -> None:
        raise ValueError(f"non-standard JSON constant {word}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow  # needs the built test models
def test_a_good_file_passes_with_figures_per_tensor(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-llama"))
    assert report.ok, report.problems
    assert report.compared
    quantized = [t for t in report.tensors if t.type == "Q8_0"]
    assert quantized and all(t.snr_db > 35 and t.rmse > 0 for t in quantized)
    assert all(t.snr_db == float("inf") for t in report.tensors if t.type == "F32")


@pytest.mark.slow  # needs the built test models
def test_threshold_exceeded_fails_and_says_which_figure(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-llama"), min_snr_db=80)
    failed = [t for t in report.tensors if not t.ok]
    assert not report.ok and failed
    assert all(t.failure and "dB < 80 dB" in t.failure for t in failed)
    line = failure_line(report.to_json())
    assert line.startswith(f"{len(failed)} of {report.n_tensors} tensors over their threshold: ")
    assert failed[0].name in line


@pytest.mark.slow  # needs the built test models
def test_rmse_threshold_is_named_as_such(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-llama"), max_rmse=1e-9)
    failed = [t for t in report.tensors if not t.ok]
    assert failed and all(t.failure.startswith("RMSE ") and "> 1e-09" in t.failure for t in failed)
    assert all(t.rmse == 0 for t in report.tensors if t.ok)


@pytest.mark.slow  # needs the built test models
def test_summary_leads_with_the_failing_then_the_lowest_snr(q8: Path) -> None:
    snrs = sorted(t.snr_db for t in verify_file(q8, model_path("tiny-llama")).tensors if math.isfinite(t.snr_db))
    report = verify_file(q8, model_path("tiny-llama"), min_snr_db=snrs[len(snrs) // 2])   # about half fail
    s = report.summary()
    figured = [t for t in report.tensors if t.rmse is not None]
    failing = sorted((t for t in figured if not t.ok), key=lambda t: t.snr_db)
    passing = sorted((t for t in figured if t.ok), key=lambda t: t.snr_db)
    assert s["n_tensors"] == len(report.tensors) and s["n_compared"] == len(figured)
    assert s["n_failed"] == len(failing) and s["ok"] is False
    assert [w["name"] for w in s["worst"]] == [t.name for t in (failing + passing)[:5]]
    assert s["min_snr_db"] == min(t.snr_db for t in figured)
    assert s["max_rmse"] == max(t.rmse for t in figured)


@pytest.mark.slow  # needs the built test models
def test_truncated_file_is_a_verify_error_naming_the_path_once(q8: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(q8.read_bytes()[: q8.stat().st_size // 2])
    with pytest.raises(VerifyError, match="not a valid GGUF file.*past the end") as info:
        verify_file(cut)
    assert str(info.value).count(str(cut)) == 1


def test_garbage_after_the_magic_is_a_verify_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(VerifyError, match="not a valid GGUF"):
        verify_file(junk)


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "safetensors", "empty"])
def test_what_is_not_a_gguf_file_is_bad_input(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)          # opening it for reading would block forever
    elif kind == "safetensors":          # an 8-byte header length, then the JSON header
        header = b'{"__metadata__":{"format":"pt"}}'
        path.write_bytes(len(header).to_bytes(8, "little") + header)
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(InputError) as info:
        verify_file(path)
    assert not isinstance(info.value, VerifyError)


@pytest.mark.slow  # needs the built test models
def test_wrong_source_is_reported(q8: Path) -> None:
    report = verify_file(q8, model_path("tiny-qwen2"))
    assert not report.ok


def test_error_figures_against_a_plain_float64_computation() -> None:
    rng = np.random.default_rng(7)
    n = 3 * FIGURE_CHUNK + 123          # several chunks and a short last one
    ref = rng.standard_normal(n).astype(np.float32)
    got = (ref + rng.standard_normal(n).astype(np.float32) * np.float32(0.01)).astype(np.float32)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    err, sig = float(((g - r) ** 2).sum()), float((r ** 2).sum())
    rmse, max_abs, snr = error_figures(ref, got)
    assert rmse == pytest.approx(math.sqrt(err / n), rel=1e-12)
    assert max_abs == float(np.abs(g - r).max())
    assert snr == pytest.approx(10 * math.log10(sig / err), rel=1e-12)


def test_error_figures_small_case() -> None:
    ref = np.array([3.0, 4.0], dtype=np.float32)
    rmse, max_abs, snr = error_figures(ref, ref + np.array([0.0, 0.5], dtype=np.float32))
    assert max_abs == 0.5 and abs(rmse - (0.125 ** 0.5)) < 1e-12 and abs(snr - 10 * np.log10(25 / 0.25)) < 1e-9


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan, 3e38])
def test_error_figures_never_raise_on_non_finite_values(bad: float) -> None:
    ref = np.array([1e6, 2.0, 3.0], dtype=np.float32)
    got = np.array([bad, 2.0, 3.0], dtype=np.float32)
    rmse, max_abs, snr = error_figures(ref, got)
    if math.isfinite(bad) and math.isfinite(rmse):
        assert snr < 0
    else:
        assert not math.isfinite(rmse) and snr == -math.inf and not math.isfinite(max_abs)


def test_exact_and_silent_tensors() -> None:
    zeros = np.zeros(10, dtype=np.float32)
    assert error_figures(zeros, zeros) == (0.0, 0.0, math.inf)
    rmse, _, snr = error_figures(zeros, zeros + np.float32(1))
    assert rmse == 1.0 and snr == -math.inf


def test_summarize_takes_the_cached_json_form() -> None:
    tensors = [{"name": n, "type": "Q4_0", "rmse": r, "max_abs": r, "snr_db": s, "min_snr_db": 14, "ok": ok,
                "failure": None if ok else "SNR 9.0 dB < 14 dB"}
               for n, r, s, ok in [("a", 0.1, 20.0, True), ("b", 0.3, 9.0, False), ("c", 0.0, math.inf, True),
                                   ("d", 0.2, 15.0, True)]]
    s = summarize({"ok": False, "n_tensors": 4, "problems": [], "tensors": tensors}, worst=3)
    assert [w["name"] for w in s["worst"]] == ["b", "d", "a"]
    assert (s["n_failed"], s["n_compared"], s["min_snr_db"], s["max_rmse"]) == (1, 4, 9.0, 0.3)


@pytest.mark.slow  # needs the built test models
def test_cli_summary_first_full_table_behind_all(q8: Path) -> None:
    src = str(model_path("tiny-llama"))
    n = verify_file(q8).n_tensors
    short = cli(str(q8), "--source", src)
    assert short.returncode == 0, short.stderr
    assert f"0 of {n} tensors over their threshold" in short.stdout and "OK" in short.stdout
    assert len(short.stdout.splitlines()) < 12 < n            # a summary, not a row per tensor
    full = cli(str(q8), "--source", src, "--all")
    names = [t.name for t in verify_file(q8).tensors]
    assert all(any(line.startswith(name + " ") for line in full.stdout.splitlines()) for name in names)


@pytest.mark.slow  # needs the built test models
def test_cli_failure_is_exit_1_with_one_error_line(q8: Path) -> None:
    bad = cli(str(q8), "--source", str(model_path("tiny-llama")), "--min-snr-db", "90")
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: {q8} failed verification: ")
    assert "dB < 90 dB" in lines[0] and "FAILED" in bad.stdout


@pytest.mark.slow  # needs the built test models
def test_cli_json_is_strict_and_complete(q8: Path) -> None:
    base = [str(q8), "--source", str(model_path("tiny-llama"))]
    good = cli(*base, "--json")
    assert good.returncode == 0, good.stderr
    data = strict_json(good.stdout)
    assert data["ok"] is True and len(data["tensors"]) == data["n_tensors"]
    lossless = [t for t in data["tensors"] if t["rmse"] == 0]
    assert lossless and all(t["snr_db"] is None for t in lossless)   # infinite SNR is null
    assert data["summary"]["n_compared"] == data["n_tensors"]
    bad = cli(*base, "--min-snr-db", "90", "--json")
    assert bad.returncode == 1 and strict_json(bad.stdout)["ok"] is False
    assert bad.stderr.startswith("Error: ")


@pytest.mark.slow  # needs the built test models
def test_cli_on_paths_that_are_not_gguf_files(q8: Path, tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing.gguf", model_path("tiny-llama") / "config.json"):
        r = cli(str(path))
        assert r.returncode == 2 and r.stderr.startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(q8.read_bytes()[:5000])
    r = cli(str(cut))
    assert r.returncode == 1 and r.stderr.count(str(cut)) == 1, r.stderr


def test_a_type_gguf_py_cannot_decode_is_a_clear_exit_2(tmp_path: Path) -> None:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    path = tmp_path / "q8k.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(256)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b"])
    _, size = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_K]
    w.add_tensor("token_embd.weight", np.zeros((2, size), dtype=np.uint8),
                 raw_dtype=GGMLQuantizationType.Q8_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The types are checked before the source is opened, so any folder stands in for it.
    with pytest.raises(UnsupportedError, match="Q8_K"):
        verify_file(path, tmp_path)
    r = cli(str(path), "--source", str(tmp_path))
    assert r.returncode == 2 and "cannot dequantize" in r.stderr and "without --source" in r.stderr, r.stderr
    assert cli(str(path)).returncode == 0         # its structure is fine
