"""Batches: parsing with file:line errors, a good and a broken model, --continue-on-error, --jobs, --matrix,
the JSON report and the exit code, through the CLI as a CI job runs it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.errors import RecipeError
from quantcli.pipeline.batch import matrix, parse_batch
from quantcli.pipeline.cache import file_sha256


def run_cli(args: list[str], cache: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1", **env)
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=full, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture()
def broken_model(tiny_llama: Path, tmp_path: Path) -> Path:
    """tiny-llama with its weights cut short: the header promises more bytes than the file holds."""
    folder = tmp_path / "broken-llama"
    folder.mkdir()
    for p in tiny_llama.iterdir():
        if p.name != "model.safetensors" and not p.name.startswith("."):
            shutil.copy(p, folder / p.name)
    data = (tiny_llama / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder


def write_batch(tmp_path: Path, models: list[str], recipes: str = "[q8_0]") -> Path:
    path = tmp_path / "batch.yaml"
    lines = ["output: out/{model}", "verify: structure", "models:"] + [f"  - {m}" for m in models]
    path.write_text("\n".join(lines) + f"\nrecipes: {recipes}\n")
    return path


@pytest.mark.slow  # needs the built test models
def test_parse_resolves_paths_against_the_batch_file_and_names_jobs(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "r.yaml").write_text("quantize: {type: Q4_0}\n")
    text = f"""models:
  - {tiny_llama}
  - org/hub-model@v2
  - model: ./local
    name: mine
    recipes: [f16]
recipes: [q8_0, r.yaml]
"""
    batch = parse_batch(text, "b.yaml", base=tmp_path)
    assert [j.id for j in batch.jobs] == ["tiny-llama.q8_0", "tiny-llama.r", "hub-model.q8_0", "hub-model.r", "mine.f16"]
    assert batch.jobs[2].model == "org/hub-model@v2"
    assert batch.jobs[4].model == str((tmp_path / "local").resolve())
    assert batch.jobs[1].recipe == str((tmp_path / "r.yaml").resolve())
    assert batch.jobs[0].output == str((tmp_path / "out" / "tiny-llama").resolve())
    m = matrix(batch)
    assert m["include"][0] == {"job": "tiny-llama.q8_0", "name": "tiny-llama", "model": str(tiny_llama), "recipe": "q8_0"}
    assert m["include"][-1]["name"] == "mine"


@pytest.mark.parametrize("text, line, words", [
    ("models: [a/b]\nrecipes: [q8_0]\nthreads: many\n", 3, "threads must be a int"),
    ("models: [a/b]\nrecipes: [q8_0]\njobs: 2\n", 3, "unknown key 'jobs'"),
    ("models: [a/b]\nrecipes:\n  - q9_9\n", 3, "neither a recipe file nor a built-in"),
    ("models: []\nrecipes: [q8_0]\n", 1, "non-empty list"),
    ("models:\n  - a/b\n  - a/b\nrecipes: [q8_0]\n", 3, "appears twice"),
    ("models:\n  - model: a/b\n    recipe: q8_0\n", 3, "unknown key 'recipe'"),
    ("models: [a/b]\nrecipes: [q8_0]\nverify: maybe\n", 3, "verify must be one of"),
    ("models: [a/b\n", 2, "not valid YAML"),
])
def test_invalid_batch_files_name_the_line(text: str, line: int, words: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        parse_batch(text, "batch.yaml", base=tmp_path)
    assert f"batch.yaml:{line}:" in str(info.value) and words in str(info.value)


@pytest.mark.slow  # needs the built test models
def test_one_good_one_broken_model_continue_on_error(tiny_llama: Path, broken_model: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, [str(broken_model), str(tiny_llama)])
    r = run_cli(["batch", str(batch), "--continue-on-error", "--json"], tmp_path / "cache")
    assert r.returncode == 2, r.stderr          # the failed job's own exit code: its model is bad input
    assert "Error: 1 of 2 jobs failed (first: broken-llama.q8_0: " in r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert report["summary"] == {"jobs": 2, "ok": 1, "failed": 1, "not_run": 0, "outputs_written": 1, "outputs_cached": 0}
    broken, good = report["jobs"]
    assert broken["id"] == "broken-llama.q8_0" and broken["status"] == "failed" and broken["exit_code"] == 2
    assert "model.safetensors" in broken["error"] and "download it again" in broken["error"]
    assert good["id"] == "tiny-llama.q8_0" and good["status"] == "ok"
    # The good output is complete: on disk, matching its sha256, verified, with its manifest.
    (out,) = good["outputs"]
    assert Path(out["path"]) == tmp_path / "out" / "tiny-llama" / "tiny-llama-Q8_0.gguf"
    assert file_sha256(Path(out["path"])) == out["sha256"] and out["verify_ok"] is True
    manifest = json.loads(Path(good["manifest"]).read_text())
    assert manifest["outputs"][0]["sha256"] == out["sha256"]
    # Nothing left of the broken job.
    assert not list((tmp_path / "out" / "broken-llama").glob("*.gguf")) if (tmp_path / "out" / "broken-llama").exists() else True
    assert not list((tmp_path / "out").rglob(".*partial*"))
    assert "[1/2] broken-llama.q8_0: failed" in r.stderr and "[2/2] tiny-llama.q8_0: ok" in r.stderr


@pytest.mark.slow  # needs the built test models
def test_without_continue_on_error_the_first_failure_stops_the_batch(tiny_llama: Path, broken_model: Path,
                                                                      tmp_path: Path) -> None:
    batch = write_batch(tmp_path, [str(broken_model), str(tiny_llama)])
    r = run_cli(["batch", str(batch)], tmp_path / "cache")
    assert r.returncode == 2
    assert "0 of 2 jobs succeeded" in r.stdout and "not run" in r.stdout
    assert not (tmp_path / "out" / "tiny-llama").exists()


@pytest.mark.slow  # needs the built test models
def test_parallel_jobs_rerun_from_cache_and_matrix(tiny_llama: Path, broken_model: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, [str(tiny_llama), str(broken_model)], recipes="[q8_0, q4_0]")
    cache = tmp_path / "cache"
    first = run_cli(["batch", str(batch), "--jobs", "2", "--continue-on-error", "--json"], cache)
    assert first.returncode == 2, first.stderr
    report = json.loads(first.stdout)
    assert [(j["id"], j["status"]) for j in report["jobs"]] == [
        ("tiny-llama.q8_0", "ok"), ("tiny-llama.q4_0", "ok"), ("broken-llama.q8_0", "failed"), ("broken-llama.q4_0", "failed")]
    only_good = run_cli(["batch", str(batch), "--job", "tiny-llama.q8_0", "--job", "tiny-llama.q4_0", "--json"], cache)
    assert only_good.returncode == 0, only_good.stderr
    again = json.loads(only_good.stdout)
    assert again["ok"] and again["summary"]["outputs_cached"] == 2 and again["summary"]["outputs_written"] == 0
    m = run_cli(["batch", str(batch), "--matrix"], cache)
    assert m.returncode == 0 and "\n" not in m.stdout.strip()
    assert [e["job"] for e in json.loads(m.stdout)["include"]] == [j["id"] for j in report["jobs"]]
    unknown = run_cli(["batch", str(batch), "--job", "nope"], cache)
    assert unknown.returncode == 2 and "has no job 'nope'" in unknown.stderr


def test_the_ci_workflow_in_the_docs_is_valid_and_uses_real_options() -> None:
    import re

    import yaml

    from tests.fixtures.paths import REPO_ROOT

    text = (REPO_ROOT / "docs" / "ci.md").read_text()
    block = re.search(r"```yaml\nname: quantize\n(.*?)```", text, re.S)
    assert block is not None
    workflow = yaml.safe_load("name: quantize\n" + block.group(1))
    assert set(workflow["jobs"]) == {"plan", "quantize", "publish"}
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("quantcli batch batch.yaml --matrix" in s for s in steps)
    assert any('--job "${{ matrix.job }}" --json' in s for s in steps)
    assert workflow["jobs"]["quantize"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    from typer.testing import CliRunner

    from quantcli.cli.app import app

    help_text = CliRunner().invoke(app, ["batch", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--matrix", "--job", "--json", "--jobs", "--continue-on-error"):
        assert option in help_text
