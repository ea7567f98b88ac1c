"""The download stage against the real huggingface_hub code: a hub cache laid out as the hub lays it out
(offline, HF_HUB_OFFLINE=1), and a local HTTP server answering the hub API (online: fetch, gated, private,
missing revision, pickled-only)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from quantcli.errors import InputError
from quantcli.stages.download import HubRef, download, snapshot_of_folder

from .hub_fixtures import FakeHub, HubRepo, blob_id, write_hub_cache

REPO = "org/tiny"


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    weights = save({"model.embed_tokens.weight": rng.standard_normal((8, 4)).astype(np.float32)})
    return {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "seed": seed}).encode(),
        "tokenizer.json": b'{"model": {"type": "BPE"}}',
        "tokenizer_config.json": b"{}",
        "model.safetensors": weights,
        "pytorch_model.bin": b"PICKLE-NEVER-FETCHED",
        "README.md": b"# tiny",
        "onnx/model.onnx": b"not for us",
    }


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def make_repo() -> tuple[HubRepo, str, str]:
    repo = HubRepo(REPO)
    old = repo.add_commit(tiny_files(1), refs=("v1.0",), label="old")
    new = repo.add_commit(tiny_files(2), refs=("main",), label="new")
    return repo, old, new


def test_hub_id_parsing_accepts_revisions_and_rejects_paths() -> None:
    assert HubRef.parse("org/name") == HubRef("org/name", None)
    assert HubRef.parse("org/name@v1.0") == HubRef("org/name", "v1.0")
    assert HubRef.parse("org/name@refs/pr/1") == HubRef("org/name", "refs/pr/1")
    for bad in ("name", "a/b/c", "./org/name", "org/na me", "org/..", "org/name@"):
        assert HubRef.parse(bad) is None, bad


def test_offline_download_returns_the_cached_snapshot_with_commit_and_blob_ids(tmp_path: Path, offline: None) -> None:
    repo, _, new = make_repo()
    write_hub_cache(tmp_path, repo)
    snap = download(REPO, cache_dir=tmp_path, progress=False)
    assert snap.path == tmp_path / "models--org--tiny" / "snapshots" / new
    assert snap.commit == new and snap.revision == "main" and snap.repo_id == REPO
    files = tiny_files(2)
    assert snap.files["model.safetensors"] == blob_id("model.safetensors", files["model.safetensors"])
    assert snap.files["config.json"] == blob_id("config.json", files["config.json"])
    assert snap.fetched == ()
    assert (snap.path / "config.json").read_bytes() == files["config.json"]


def test_offline_download_pins_a_tag_and_a_commit(tmp_path: Path, offline: None) -> None:
    repo, old, new = make_repo()
    write_hub_cache(tmp_path, repo)
    assert download(f"{REPO}@v1.0", cache_dir=tmp_path, progress=False).commit == old
    assert download(f"{REPO}@{new}", cache_dir=tmp_path, progress=False).commit == new


def test_offline_download_of_an_uncached_model_says_how_to_fetch_it(tmp_path: Path, offline: None) -> None:
    with pytest.raises(InputError) as info:
        download("org/absent", cache_dir=tmp_path, progress=False)
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message and "quantcli download org/absent" in message
    repo, _, _ = make_repo()
    write_hub_cache(tmp_path, repo)
    with pytest.raises(InputError, match="not \\(completely\\) in the hub cache"):
        download(f"{REPO}@v9", cache_dir=tmp_path, progress=False)


def test_offline_snapshot_missing_its_weights_is_an_error_not_a_partial_model(tmp_path: Path, offline: None) -> None:
    repo, _, new = make_repo()
    storage = write_hub_cache(tmp_path, repo, with_trees=False)
    (storage / "snapshots" / new / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no .safetensors weights"):
        download(REPO, cache_dir=tmp_path, progress=False)


def test_snapshot_folder_passed_as_a_path_is_recognised(tmp_path: Path) -> None:
    repo, _, new = make_repo()
    storage = write_hub_cache(tmp_path, repo)
    snap = snapshot_of_folder(storage / "snapshots" / new)
    assert snap.repo_id == REPO and snap.commit == new and snap.name == "tiny"
    assert "model.safetensors" in snap.files
    plain = snapshot_of_folder(tmp_path)
    assert plain.commit is None and plain.files == {}


# ---- online, against a local server that answers like the hub ---------------------------------------------

def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    full.update(env)
    full["QUANTCLI_NO_PROGRESS"] = "1"
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=full, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture()
def hub() -> FakeHub:
    repo, _, _ = make_repo()
    gated = HubRepo("org/gated", gated=True)
    gated.add_commit(tiny_files(3))
    private = HubRepo("org/private", private=True)
    private.add_commit(tiny_files(4))
    pickled = HubRepo("org/pickled")
    pickled.add_commit({k: v for k, v in tiny_files(5).items() if k != "model.safetensors"})
    with FakeHub([repo, gated, private, pickled]) as server:
        yield server


def test_online_download_fetches_only_conversion_files_then_reuses_the_cache(tmp_path: Path, hub: FakeHub) -> None:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url}
    first = run_cli(["download", REPO], env)
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.strip())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                       "tokenizer_config.json"]
    assert "fetched 4 of 4 files" in first.stderr
    assert not any(p.endswith((".bin", "README.md", ".onnx")) for _, p in hub.requests if "/resolve/" in p)
    second = run_cli(["download", REPO, "--json"], env)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["fetched"] == [] and report["path"] == str(folder)
    assert report["commit"] == folder.name
    # The same model offline, the server no longer asked.
    n = len(hub.requests)
    third = run_cli(["download", REPO], {**env, "HF_HUB_OFFLINE": "1"})
    assert third.returncode == 0, third.stderr
    assert Path(third.stdout.strip()) == folder and len(hub.requests) == n


def test_gated_model_without_token_says_to_accept_terms_and_set_hf_token(tmp_path: Path, hub: FakeHub) -> None:
    r = run_cli(["download", "org/gated"], {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url})
    assert r.returncode == 2
    assert "gated" in r.stderr and "HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "hub" / "models--org--gated" / "snapshots").exists()


def test_private_model_needs_a_token_and_works_with_one(tmp_path: Path, hub: FakeHub) -> None:
    env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url}
    r = run_cli(["download", "org/private"], env)
    assert r.returncode == 2
    assert "private and no token is set" in r.stderr and "HF_TOKEN" in r.stderr
    ok = run_cli(["download", "org/private"], {**env, "HF_TOKEN": hub.token})
    assert ok.returncode == 0, ok.stderr
    assert (Path(ok.stdout.strip()) / "model.safetensors").is_file()


def test_missing_revision_names_the_revision(tmp_path: Path, hub: FakeHub) -> None:
    r = run_cli(["download", f"{REPO}@nope"], {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url})
    assert r.returncode == 2
    assert "has no revision 'nope'" in r.stderr


def test_repo_with_only_pickled_weights_is_refused_without_fetching_them(tmp_path: Path, hub: FakeHub) -> None:
    r = run_cli(["download", "org/pickled"], {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url})
    assert r.returncode == 2
    assert "no .safetensors weights" in r.stderr and "pytorch_model.bin" in r.stderr
    assert not any(p.endswith(".bin") for _, p in hub.requests if "/resolve/" in p)
