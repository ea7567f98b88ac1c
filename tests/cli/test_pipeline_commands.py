"""The pipeline commands as a user types them: download -> quantize -> verify, convert from a hub id through the
hub cache, cached re-runs, --json, determinism across runs and thread counts, --help on every command."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.pipeline.cache import file_sha256
from tests.fixtures.paths import REPO_ROOT, model_path
from tests.stages.hub_fixtures import HubRepo, model_files, write_hub_cache

COMMANDS = ("convert", "download", "quantize", "inspect", "verify", "publish", "batch", "version",
            "recipes list", "recipes show", "recipes schema")


def cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    full.update(QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
                HF_HOME=str(tmp_path / "hf"))
    full.update(env)
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=full, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture()
def hub_snapshot(tmp_path: Path) -> tuple[str, str]:
    """tiny-llama in the hub cache at $HF_HOME/hub as org/tiny-llama; returns (repo id, commit)."""
    repo = HubRepo("org/tiny-llama")
    sha = repo.add_commit(model_files(model_path("tiny-llama")))
    write_hub_cache(tmp_path / "hf" / "hub", repo)
    return repo.repo_id, sha


@pytest.mark.slow  # needs the built test models
def test_download_then_quantize_then_verify(tmp_path: Path, hub_snapshot: tuple[str, str]) -> None:
    repo_id, sha = hub_snapshot
    dl = cli(["download", f"{repo_id}@main"], tmp_path)
    assert dl.returncode == 0, dl.stderr
    snapshot = Path(dl.stdout.strip())
    assert snapshot.name == sha and f"commit {sha}" in dl.stderr
    q = cli(["quantize", str(snapshot), "--type", "Q8_0", "-o", str(tmp_path / "out")], tmp_path)
    assert q.returncode == 0, q.stderr
    target = tmp_path / "out" / "tiny-llama-Q8_0.gguf"
    assert f"wrote {target}" in q.stdout
    manifest = json.loads((tmp_path / "out" / "tiny-llama.q8_0.manifest.json").read_text())
    assert manifest["source"]["commit"] == sha and manifest["outputs"][0]["verify_level"] == "none"
    assert manifest["outputs"][0]["sha256"] == file_sha256(target)
    v = cli(["verify", str(target), "--source", str(snapshot), "--json"], tmp_path)
    assert v.returncode == 0, v.stderr
    assert json.loads(v.stdout)["ok"] is True
    again = cli(["quantize", str(snapshot), "--type", "Q8_0", "-o", str(tmp_path / "out"), "--json"], tmp_path)
    assert again.returncode == 0
    assert json.loads(again.stdout)["outputs"][0]["cached"] is True
    hub = cli(["quantize", repo_id, "--type", "Q8_0"], tmp_path)
    assert hub.returncode == 2 and "quantcli download" in hub.stderr


@pytest.mark.slow  # needs the built test models
def test_convert_a_hub_id_offline_records_the_commit_and_rerun_is_cached(tmp_path: Path,
                                                                         hub_snapshot: tuple[str, str]) -> None:
    repo_id, sha = hub_snapshot
    args = ["convert", repo_id, "--type", "Q4_0", "--verify", "none", "-o", str(tmp_path / "out"), "--json"]
    first = cli(args, tmp_path)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["repo_id"] == repo_id and report["commit"] == sha and not report["outputs"][0]["cached"]
    second = cli(args[:-1], tmp_path)
    assert second.returncode == 0
    assert "cached" in second.stdout and "skipped (--force redoes it)" in second.stdout
    forced = cli(args + ["--force"], tmp_path)
    assert json.loads(forced.stdout)["outputs"][0]["cached"] is False
    assert json.loads(forced.stdout)["outputs"][0]["sha256"] == report["outputs"][0]["sha256"]
    missing = cli(["convert", "org/not-cached", "--type", "Q8_0"], tmp_path)
    assert missing.returncode == 2 and "HF_HUB_OFFLINE" in missing.stderr


@pytest.mark.slow  # needs the built test models
def test_runs_are_byte_identical_across_runs_and_thread_counts(tmp_path: Path) -> None:
    model = str(model_path("tiny-llama"))
    shas = []
    for i, threads in enumerate(("1", "2", "2")):
        out = tmp_path / f"run{i}"
        r = cli(["quantize", model, "--recipe", str(REPO_ROOT / "recipes" / "q4_0.yaml"), "-o", str(out), "-t", threads,
                 "--json"], tmp_path)
        assert r.returncode == 0, r.stderr
        (o,) = json.loads(r.stdout)["outputs"]
        assert not o["cached"]
        shas.append(file_sha256(Path(o["path"])))
    assert shas[0] == shas[1] == shas[2]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str, tmp_path: Path) -> None:
    r = cli([*command.split(), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout
    if command not in ("recipes schema",):
        assert "Example" in r.stdout, f"`quantcli {command} --help` shows no example"


def test_shell_completion_is_offered(tmp_path: Path) -> None:
    # Typer finds the shell from the parent process, so ask from bash as a user would (under `make`, the parent
    # of the test's own subprocess is sh, which has no completion).
    # (a trailing command keeps bash from exec-ing python in its place)
    command = f"{shlex.quote(sys.executable)} -m quantcli.cli.app --show-completion; exit $?"
    r = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "SHELL": "/bin/bash"})
    assert r.returncode == 0, r.stderr
    assert "complete" in r.stdout and "quantcli" in r.stdout.lower()


def test_top_level_help_loads_no_heavy_module(tmp_path: Path) -> None:
    """`quantcli --help` must start fast: nothing of numpy, gguf, huggingface_hub, yaml or rich is imported."""
    code = ("import sys; sys.argv = ['quantcli', '--help']\n"
            "from quantcli.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = {'numpy', 'gguf', 'huggingface_hub', 'yaml', 'rich', 'safetensors'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Commands:" in r.stdout and "convert" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "[]"


# What a plain GGUF conversion never needs: the folder formats and INT methods, the engine, publishing and the
# hub client. Importing them cost a GGUF run start-up time that no core can overlap (issue 11).
NOT_FOR_GGUF = ("quantcli.pipeline.convert_int", "quantcli.pipeline.convert_split", "quantcli.plan.safetensors",
                "quantcli.stages.pack_safetensors", "quantcli.stages.publish", "quantcli.stages.model_card",
                "quantcli.io.gptq", "quantcli.io.awq", "quantcli.io.compressed_tensors", "quantcli.io.bnb",
                "quantcli.io.safetensors_writer", "quantcli.quant.algorithms", "quantcli.quant.int",
                "quantcli.engine", "quantcli.stages.verify_model", "huggingface_hub")


@pytest.mark.slow
def test_gguf_convert_imports_only_the_gguf_path(tmp_path: Path) -> None:
    out = tmp_path / "t.gguf"
    code = ("import sys\n"
            f"sys.argv = ['quantcli', 'convert', {str(model_path('tiny-llama'))!r}, '--type', 'Q8_0',\n"
            f"            '--verify', 'none', '-o', {str(out)!r}]\n"
            "from quantcli.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            f"unwanted = {NOT_FOR_GGUF!r}\n"
            "print(sorted(m for m in sys.modules if m.startswith(unwanted)), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert out.is_file()
    assert r.stderr.strip().splitlines()[-1] == "[]"
