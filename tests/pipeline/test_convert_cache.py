"""Recipes with many outputs from one read, the stage cache (skip, --force, corrupt entries, changed files,
partial resume) and the run manifest, through pipeline.convert as the CLI uses it."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from quantcli.io.checkpoint import Checkpoint
from quantcli.pipeline import convert as convert_module
from quantcli.pipeline.cache import file_sha256
from quantcli.pipeline.convert import ConvertRequest, convert
from quantcli.recipe import load_recipe
from quantcli.stages import quantize as quantize_stage
from tests.gguf_files import stored_tensors

# needs the built test models (make models)
pytestmark = pytest.mark.slow


def request(model: Path, recipe: Path, out: Path, cache: Path, **kw: object) -> ConvertRequest:
    return ConvertRequest(model=str(model), recipe=load_recipe(recipe), output=out, cache_dir=cache, manifest=True,
                          threads=2, **kw)  # type: ignore[arg-type]


class Recorder:
    """Counts source reads and what each write call was asked to write."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: Counter[str] = Counter()
        self.writes: list[list[str]] = []
        real_write = quantize_stage.write_ggufs

        for method in ("read_raw", "map_raw"):     # a read copies the tensor or maps its pages
            def read(ckpt: Checkpoint, name: str, real=getattr(Checkpoint, method)):  # type: ignore[no-untyped-def]
                self.reads[name] += 1
                return real(ckpt, name)
            monkeypatch.setattr(Checkpoint, method, read)

        def write_ggufs(outputs, ckpt, **kw):  # type: ignore[no-untyped-def]
            self.writes.append([p.name for _, p in outputs])
            return real_write(outputs, ckpt, **kw)

        monkeypatch.setattr(quantize_stage, "write_ggufs", write_ggufs)


def test_release_recipe_writes_three_types_from_one_read(tiny_llama: Path, release3: Path, tmp_path: Path,
                                                        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(monkeypatch)
    out = tmp_path / "out"
    result = convert(request(tiny_llama, release3, out, cache_dir))
    names = [o.path.name for o in result.outputs]
    assert names == ["tiny-llama-F16.gguf", "tiny-llama-Q8_0.gguf", "tiny-llama-Q4_0.gguf"]
    assert rec.writes == [names]
    # every source tensor was read exactly once for the three files
    assert rec.reads and set(rec.reads.values()) == {1}
    for o, expected in zip(result.outputs, ("F16", "Q8_0", "Q4_0")):
        types = Counter(t.qtype.name for t in stored_tensors(o.path).values() if len(t.shape) > 1 and t.shape[1] > 1)
        assert types.most_common(1)[0][0] == expected
        assert o.sha256 == file_sha256(o.path) and not o.cached and o.verify["ok"]
    manifest = json.loads(result.manifest.read_text())
    assert result.manifest == out / "tiny-llama.release3.manifest.json"
    assert [e["file"] for e in manifest["outputs"]] == names
    assert [e["sha256"] for e in manifest["outputs"]] == [file_sha256(out / n) for n in names]
    assert manifest["recipe"]["name"] == "release3" and len(manifest["recipe"]["outputs"]) == 3
    assert manifest["source"]["fingerprint"]["kind"] == "local-folder"
    assert manifest["versions"]["quantcli"] and manifest["backend"]
    assert all(e["verify_summary"]["ok"] and e["cache"] == "written" for e in manifest["outputs"])


def test_second_run_skips_everything_and_force_redoes_it(tiny_llama: Path, release3: Path, tmp_path: Path,
                                                         cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = convert(request(tiny_llama, release3, out, cache_dir))
    stamps = {o.path: (o.path.stat().st_mtime_ns, o.sha256) for o in first.outputs}
    rec = Recorder(monkeypatch)
    second = convert(request(tiny_llama, release3, out, cache_dir))
    assert rec.writes == [] and not rec.reads
    assert all(o.cached and o.verify_cached for o in second.outputs)
    assert {o.path: (o.path.stat().st_mtime_ns, o.sha256) for o in second.outputs} == stamps
    assert [e["cache"] for e in json.loads(second.manifest.read_text())["outputs"]] == ["hit"] * 3
    forced = convert(request(tiny_llama, release3, out, cache_dir, force=True))
    assert len(rec.writes) == 1 and len(rec.writes[0]) == 3
    assert not any(o.cached for o in forced.outputs)
    for o in forced.outputs:
        assert o.path.stat().st_mtime_ns != stamps[o.path][0]
        assert o.sha256 == stamps[o.path][1]          # redone, and byte-identical


def test_only_missing_outputs_are_rewritten(tiny_llama: Path, release3: Path, tmp_path: Path, cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    first = convert(request(tiny_llama, release3, out, cache_dir, verify="none"))
    first.outputs[1].path.unlink()
    rec = Recorder(monkeypatch)
    again = convert(request(tiny_llama, release3, out, cache_dir, verify="none"))
    assert rec.writes == [["tiny-llama-Q8_0.gguf"]]
    assert [o.cached for o in again.outputs] == [True, False, True]
    assert again.outputs[1].sha256 == first.outputs[1].sha256


def test_corrupt_cache_entry_is_a_miss_with_a_warning(tiny_llama: Path, release3: Path, tmp_path: Path,
                                                      cache_dir: Path) -> None:
    out = tmp_path / "out"
    first = convert(request(tiny_llama, release3, out, cache_dir, verify="none"))
    records = sorted(cache_dir.rglob("*.json"))
    assert len(records) == 3
    records[0].write_text('{"format": 1, "key": ')          # truncated JSON
    records[1].write_text(json.dumps({"format": 1, "key": 5}))  # wrong field type
    warnings: list[str] = []
    again = convert(request(tiny_llama, release3, out, cache_dir, verify="none"), warn=warnings.append)
    assert sum("unreadable" in w for w in warnings) == 2
    assert sorted(o.cached for o in again.outputs) == [False, False, True]
    assert [o.sha256 for o in again.outputs] == [o.sha256 for o in first.outputs]


def test_output_changed_since_it_was_cached_is_rebuilt(tiny_llama: Path, release3: Path, tmp_path: Path,
                                                       cache_dir: Path) -> None:
    out = tmp_path / "out"
    first = convert(request(tiny_llama, release3, out, cache_dir, verify="none"))
    target = first.outputs[2].path
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF                                         # same size, different bytes
    target.write_bytes(bytes(data))
    warnings: list[str] = []
    again = convert(request(tiny_llama, release3, out, cache_dir, verify="none"), warn=warnings.append)
    assert any("changed since it was made" in w for w in warnings)
    assert not again.outputs[2].cached and again.outputs[2].sha256 == first.outputs[2].sha256
    assert file_sha256(target) == first.outputs[2].sha256


def test_a_changed_input_file_misses_the_cache(tiny_llama: Path, tmp_path: Path, cache_dir: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for p in tiny_llama.iterdir():
        if not p.name.startswith("."):
            os.symlink(p, model / p.name)
    config = model / "config.json"
    config.unlink()
    config.write_text((tiny_llama / "config.json").read_text())
    recipe = tmp_path / "q8.yaml"
    recipe.write_text("quantize: {type: Q8_0}\n")
    out = tmp_path / "out"
    convert(request(model, recipe, out, cache_dir, verify="none"))
    assert convert(request(model, recipe, out, cache_dir, verify="none")).outputs[0].cached
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    assert not convert(request(model, recipe, out, cache_dir, verify="none")).outputs[0].cached


def test_thread_count_is_not_part_of_the_key_and_does_not_change_bytes(tiny_llama: Path, tmp_path: Path,
                                                                        cache_dir: Path) -> None:
    recipe = tmp_path / "q4.yaml"
    recipe.write_text("quantize: {type: Q4_0}\n")
    out = tmp_path / "out"
    two = convert(request(tiny_llama, recipe, out, cache_dir, verify="none"))
    one = convert(ConvertRequest(model=str(tiny_llama), recipe=load_recipe(recipe), output=out, cache_dir=cache_dir,
                                 threads=1, verify="none"))
    assert one.outputs[0].cached                     # a batch job with 1 thread reuses an all-cores run
    forced = convert(ConvertRequest(model=str(tiny_llama), recipe=load_recipe(recipe), output=out, cache_dir=cache_dir,
                                    threads=1, verify="none", force=True))
    assert not forced.outputs[0].cached              # really re-encoded with one thread ...
    assert forced.outputs[0].sha256 == two.outputs[0].sha256   # ... to the same bytes


def test_switching_backend_misses_the_cache(tiny_llama: Path, tmp_path: Path, cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "q8.yaml"
    recipe.write_text("quantize: {type: Q8_0}\n")
    out = tmp_path / "out"
    monkeypatch.setenv("QUANTCLI_BACKEND", "auto")          # whatever the suite runs on, start from auto ...
    first = convert(request(tiny_llama, recipe, out, cache_dir, verify="none"))
    monkeypatch.setenv("QUANTCLI_BACKEND", "reference")     # ... then switch to the NumPy reference
    second = convert(request(tiny_llama, recipe, out, cache_dir, verify="none"))
    assert not second.outputs[0].cached and second.outputs[0].sha256 == first.outputs[0].sha256


def test_library_default_neither_caches_nor_writes_a_manifest(tiny_llama: Path, tmp_path: Path,
                                                              cache_dir: Path) -> None:
    recipe = tmp_path / "q8.yaml"
    recipe.write_text("quantize: {type: Q8_0}\n")
    out = tmp_path / "out"
    for _ in range(2):
        result = convert(ConvertRequest(model=str(tiny_llama), recipe=load_recipe(recipe), output=out, verify="none"))
        assert not result.outputs[0].cached and result.manifest is None
    assert sorted(p.name for p in out.iterdir()) == ["tiny-llama-Q8_0.gguf"]
    assert not cache_dir.exists()


def test_hub_snapshot_folder_is_fingerprinted_by_commit_and_blobs(tiny_llama: Path, tmp_path: Path,
                                                                  cache_dir: Path) -> None:
    from tests.stages.hub_fixtures import HubRepo, model_files, write_hub_cache

    repo = HubRepo("org/tiny-llama")
    sha = repo.add_commit(model_files(tiny_llama))
    storage = write_hub_cache(tmp_path / "hub", repo)
    recipe = tmp_path / "q8.yaml"
    recipe.write_text("quantize: {type: Q8_0}\n")
    result = convert(request(storage / "snapshots" / sha, recipe, tmp_path / "out", cache_dir, verify="none"))
    assert result.outputs[0].path.name == "tiny-llama-Q8_0.gguf"      # named after the repo, not the commit
    source = json.loads(result.manifest.read_text())["source"]
    assert source["repo_id"] == "org/tiny-llama" and source["commit"] == sha
    assert source["fingerprint"] == {"kind": "hub-snapshot", "commit": sha,
                                     "files": {k: v for k, v in result.snapshot.files.items()}}


def test_convert_module_keeps_resolve_source(tiny_llama: Path) -> None:
    assert convert_module.resolve_source(str(tiny_llama)) == tiny_llama
