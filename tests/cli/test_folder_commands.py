"""verify and inspect on quantized safetensors folders, as a user types them: PPL/KLD through the engine with
thresholds (exit 0/1), the per-weight report without --data, the scheme and per-module bits in inspect, and bad
folders refused with one line (exit 2)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_commands import cli, error_line, strict_json
from tests.fixtures.paths import model_path

pytestmark = pytest.mark.slow   # needs the built test models

DATA = ("--data", "builtin:eval", "--ctx", "128", "--chunks", "3")


@pytest.fixture(scope="module")
def w4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("folders") / "tiny-W4A16"
    res = cli("convert", str(model_path("tiny-llama")), "--format", "compressed-tensors", "--scheme", "W4A16",
              "--group-size", "32", "-o", str(out))
    assert res.returncode == 0, res.stderr
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / folder.name
    shutil.copytree(folder, dest)
    return dest


def test_verify_data_scores_a_folder_and_applies_thresholds(w4: Path, tmp_path: Path) -> None:
    folder = copy_of(w4, tmp_path)
    src = str(model_path("tiny-llama"))
    ok = cli("verify", str(folder), "--source", src, *DATA, "--json")
    assert ok.returncode == 0, ok.stderr
    figures = strict_json(ok.stdout)
    assert isinstance(figures, dict)
    assert figures["n_chunks"] == 3 and figures["ctx"] == 128
    assert figures["kld_mean"] > 0 and figures["ppl"] > 0 and figures["ppl_source"] > 0
    assert 0 < figures["same_top1"] <= 1
    # the figures are kept beside the weights for publish's card
    record = json.loads((folder / "quantcli-verify.json").read_text())
    assert record["ok"] is True and record["kld_mean"] == figures["kld_mean"]
    # a threshold the folder meets passes; one it misses exits 1 naming the figure and the bound
    assert cli("verify", str(folder), "--source", src, *DATA, "--max-kld", str(figures["kld_mean"] * 2)).returncode == 0
    miss = cli("verify", str(folder), "--source", src, *DATA, "--max-kld", str(figures["kld_mean"] / 2))
    assert miss.returncode == 1
    assert "mean KL divergence" in error_line(miss) and "max_kld" in error_line(miss)
    assert json.loads((folder / "quantcli-verify.json").read_text())["ok"] is False
    ratio = cli("verify", str(folder), "--source", src, *DATA, "--max-ppl-ratio", "1.0000001")
    assert ratio.returncode == (1 if figures["ppl"] / figures["ppl_source"] > 1.0000001 else 0)


def test_verify_without_data_reports_each_weight(w4: Path) -> None:
    res = cli("verify", str(w4), "--source", str(model_path("tiny-llama")), "--json")
    assert res.returncode == 0, res.stderr
    report = strict_json(res.stdout)
    assert isinstance(report, dict)
    assert report["ok"] and report["quantized_modules"] == 14 and len(report["weights"]) == 14
    assert 10 < report["min_snr_db"] < 40
    text = cli("verify", str(w4), "--source", str(model_path("tiny-llama")), "--min-snr-db", "60")
    assert text.returncode == 1 and "SNR" in error_line(text)


def test_inspect_shows_the_scheme_and_per_module_bits(w4: Path) -> None:
    res = cli("inspect", str(w4), "--json")
    assert res.returncode == 0, res.stderr
    info = strict_json(res.stdout)
    assert isinstance(info, dict)
    q = info["quantization"]
    assert (q["quant_method"], q["format"], q["num_bits"], q["group_size"], q["symmetric"], q["method"]) == \
        ("compressed-tensors", "pack-quantized", 4, 32, True, "minmax")
    sizes = {t["name"]: t["bytes"] for t in info["tensors"]}
    for m in info["modules"]:
        stored = sum(v for k, v in sizes.items() if k.startswith(m["name"] + ".weight"))
        assert m["bytes"] == stored
        # 4-bit codes plus one float32 scale per 32 weights: 4 + 32/32 bits, a little more for weight_shape
        assert 5.0 <= m["bits_per_weight"] < 5.01
    text = cli("inspect", str(w4))
    assert text.returncode == 0 and "4-bit, group size 32, symmetric, method minmax" in text.stdout


def _edit(folder: Path, edit) -> None:  # type: ignore[no-untyped-def]
    config = json.loads((folder / "config.json").read_text())
    edit(config["quantization_config"])
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("edit", "words"), [
    (lambda qc: qc["config_groups"]["group_0"]["weights"].pop("symmetric"), "no 'symmetric'"),
    (lambda qc: qc.update(quant_method="exl3"), "'exl3'"),
    (lambda qc: qc["config_groups"]["group_0"]["weights"].update(group_size=64), "weight_scale"),
])
def test_bad_folders_exit_2_with_one_line(w4: Path, tmp_path: Path, edit, words: str) -> None:  # type: ignore[no-untyped-def]
    folder = copy_of(w4, tmp_path)
    _edit(folder, edit)
    src = str(model_path("tiny-llama"))
    for args in (("verify", str(folder), "--source", src), ("verify", str(folder), "--source", src, *DATA),
                 ("inspect", str(folder))):
        res = cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert words in error_line(res), res.stderr


def test_a_folder_against_another_models_source_exits_2(w4: Path) -> None:
    res = cli("verify", str(w4), "--source", str(model_path("tiny-qwen2")), *DATA)
    assert res.returncode == 2
    assert "are not the same model" in error_line(res)
