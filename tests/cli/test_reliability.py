"""Every bad input of the pipeline commands listed in docs/reliability.md: the message, the exit code, and
that nothing was left behind (no file under a final name, no partial file, no staging folder).
Interrupts are in tests/pipeline/test_interrupt.py, broken models in a batch in tests/pipeline/test_batch.py,
hub errors (gated, private, missing revision, pickled only) in tests/stages/test_download.py."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.paths import REPO_ROOT, model_path


def cli(args: list[str], tmp_path: Path, *, module: str = "quantcli.cli.app", preexec=None,  # type: ignore[no-untyped-def]
        **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "QC_"))}
    full.update(QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1",
                HF_HOME=str(tmp_path / "hf"))
    full.update(env)
    return subprocess.run([sys.executable, "-m", module, *args], env=full, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900, preexec_fn=preexec)


def leftovers(folder: Path) -> list[str]:
    """Anything a failed run must not leave: GGUFs, partial files, manifests, publish staging folders."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*")
                  if p.suffix == ".gguf" or "partial" in p.name or p.name.endswith(".manifest.json")
                  or p.name.startswith(".quantcli-publish-"))


def expect(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert r.returncode == code, f"exit {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, f"{w!r} not in: {r.stderr}"


def test_model_that_is_neither_folder_nor_hub_id(tmp_path: Path) -> None:
    r = cli(["convert", "./no-such-model", "--type", "Q8_0", "-o", str(tmp_path / "out")], tmp_path)
    expect(r, 2, "neither a local folder nor a hub id")
    assert not (tmp_path / "out").exists()


def test_hub_id_not_in_cache_while_offline(tmp_path: Path) -> None:
    r = cli(["convert", "org/absent", "--type", "Q8_0", "-o", str(tmp_path / "out")], tmp_path)
    expect(r, 2, "HF_HUB_OFFLINE is set", "quantcli download org/absent")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hf" / "hub" / "models--org--absent" / "snapshots").exists()


def test_download_of_something_that_is_not_a_hub_id(tmp_path: Path) -> None:
    expect(cli(["download", "./folder"], tmp_path), 2, "is not a hub model id", "org/name@revision")


def test_quantize_given_a_hub_id(tmp_path: Path) -> None:
    r = cli(["quantize", "org/name", "--type", "Q8_0", "-o", str(tmp_path / "out")], tmp_path)
    expect(r, 2, "is not a local folder", "quantcli download org/name")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # needs the built test models
def test_disk_too_small_for_the_planned_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out)], tmp_path,
            module="tests.pipeline.fault_cli", QC_FAKE_FREE_BYTES="1000000")
    expect(r, 3, "GB free but the output needs", "Free disk space")
    assert leftovers(out) == []


@pytest.mark.slow  # needs the built test models
def test_file_system_refuses_a_write_midway(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()

    def limit() -> None:   # the kernel fails writes past 5 MB with EFBIG, as a full disk fails with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (5_000_000, 5_000_000))

    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out)], tmp_path, preexec=limit)
    expect(r, 3, "failed: File too large", "Free disk space or choose another output folder")
    assert leftovers(out) == []


@pytest.mark.slow  # needs the built test models
def test_output_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(blocker / "out")], tmp_path)
    expect(r, 3, "cannot write to", "Choose an output folder you can write to")
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow  # needs the built test models
def test_unknown_verify_level(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "--verify", "bogus", "-o", str(out)], tmp_path)
    expect(r, 2, "is not a level", "none, structure, full")
    assert leftovers(out) == []


@pytest.mark.slow  # needs the built test models
def test_corrupt_cache_entry_warns_and_rebuilds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "--verify", "none", "-o", str(out)]
    assert cli(args, tmp_path).returncode == 0
    (record,) = list((tmp_path / "cache").rglob("*.json"))
    record.write_bytes(b"\x00garbage")
    r = cli(args, tmp_path)
    assert r.returncode == 0 and "unreadable" in r.stderr and "ignoring it and redoing the work" in r.stderr
    assert f"wrote {out / 'tiny-llama-Q8_0.gguf'}" in r.stdout
    assert json.loads(next(out.glob("*.manifest.json")).read_text())["outputs"][0]["cache"] == "written"


def test_invalid_batch_file(tmp_path: Path) -> None:
    batch = tmp_path / "batch.yaml"
    batch.write_text("models: [org/a]\nrecipes: [q8_0]\nparallel: 2\n")
    expect(cli(["batch", str(batch)], tmp_path), 2, f"{batch}:3: unknown key 'parallel'", "Allowed keys")
    expect(cli(["batch", str(tmp_path / "missing.yaml")], tmp_path), 2, "cannot read batch file")


def small_gguf(folder: Path, name: str = "m-Q8_0.gguf") -> Path:
    from gguf import GGUFWriter

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    w = GGUFWriter(str(path), "llama")
    w.add_uint32("general.file_type", 7)
    w.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_publish_bad_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    expect(cli(["publish", str(empty), "--repo", "me/x", "--dry-run"], tmp_path), 2, "has no .gguf files")
    folder = tmp_path / "out"
    gguf = small_gguf(folder)
    expect(cli(["publish", str(folder), "--repo", "me/x", "--max-shard-size", "2X", "--dry-run"], tmp_path),
           2, "'2X' is not a size")
    expect(cli(["publish", str(folder), "--dry-run"], tmp_path), 2, "no repo to publish to", "--repo")
    expect(cli(["publish", str(folder), "--repo", "just-a-name", "--dry-run"], tmp_path), 2, "is not a repo id")
    expect(cli(["publish", str(folder), "--repo", "me/模型", "--dry-run"], tmp_path), 2, "is not a repo id", "ASCII")
    manifest = {"format": 1, "created": "2026-01-01T00:00:00Z", "source": {}, "recipe": {"name": "q8_0"},
                "outputs": [{"file": gguf.name, "type": "Q8_0", "bytes": gguf.stat().st_size,
                             "verify_summary": {"ok": False, "min_snr_db": 3.0}}]}
    (folder / "m.q8_0.manifest.json").write_text(json.dumps(manifest))
    expect(cli(["publish", str(folder), "--repo", "me/x", "--dry-run"], tmp_path), 2, "failed verification")
    manifest["outputs"][0]["verify_summary"]["ok"] = True
    manifest["outputs"][0]["bytes"] += 1
    (folder / "m.q8_0.manifest.json").write_text(json.dumps(manifest))
    expect(cli(["publish", str(folder), "--repo", "me/x", "--dry-run"], tmp_path), 2, "its manifest says")
    assert leftovers(folder) == [gguf.name, "m.q8_0.manifest.json"]
    broken = small_gguf(tmp_path / "broken")
    broken.write_bytes(broken.read_bytes()[:40])
    expect(cli(["publish", str(broken.parent), "--repo", "me/x", "--dry-run"], tmp_path), 2, "is not a valid GGUF file")


@pytest.mark.slow  # needs the built test models
def test_recipe_names_cannot_write_outside_the_output_folder(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "a" / "b" / "c"
    recipe = tmp_path / "r.yaml"
    for text in ('name: ../../../victim.txt\nquantize: {type: Q8_0, file: "{recipe}"}\n',    # the GGUF
                 "name: ../../../victim\nquantize: {type: Q8_0}\n",                        # the manifest alone
                 f"name: {tmp_path}/victim\nquantize: {{type: Q8_0}}\n"):                  # an absolute name
        recipe.write_text(text)
        r = cli(["convert", str(model_path("tiny-llama")), "--recipe", str(recipe), "-o", str(out)], tmp_path)
        expect(r, 2, "is not a plain file name", "without '/'")
        assert victim.read_text() == "precious"
        assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and "cache" not in p.parts) == ["r.yaml", "victim.txt"]


@pytest.mark.slow  # needs the built test models
def test_two_outputs_resolving_to_one_file_are_refused_before_writing(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text('name: r\noutputs:\n  - {type: Q8_0, file: "x-{recipe}.gguf"}\n  - {type: Q4_0, file: "x-r.gguf"}\n')
    out = tmp_path / "out"
    r = cli(["convert", str(model_path("tiny-llama")), "--recipe", str(recipe), "-o", str(out)], tmp_path)
    expect(r, 2, "would both write", "Give each output its own `file:` template or type.")
    assert "Free disk space" not in r.stderr and not out.exists()


@pytest.mark.slow  # needs the built test models
def test_dash_o_with_a_file_suffix(tmp_path: Path) -> None:
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(tmp_path / "out.bin")], tmp_path)
    expect(r, 2, "'.bin', which is not a GGUF file name", "Name the output file *.gguf")
    assert not (tmp_path / "out.bin").exists()
    upper = tmp_path / "out" / "M.GGUF"
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "--verify", "none", "-o", str(upper)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert upper.is_file() and (tmp_path / "out" / "M.manifest.json").is_file()


@pytest.mark.slow  # needs the built test models
def test_a_folder_in_the_way_of_an_output_is_named_not_blamed_on_disk_space(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "tiny-llama-Q8_0.gguf").mkdir(parents=True)
    r = cli(["convert", str(model_path("tiny-llama")), "--type", "Q8_0", "-o", str(out)], tmp_path)
    expect(r, 3, "tiny-llama-Q8_0.gguf is a folder", "Remove or rename that folder")
    assert "Free disk space" not in r.stderr and leftovers(out) == ["tiny-llama-Q8_0.gguf"]


@pytest.mark.slow  # needs the built test models
def test_an_output_that_fails_structure_verify_is_removed_and_never_cached(tmp_path: Path) -> None:
    recipe = tmp_path / "two.yaml"
    recipe.write_text("name: two\noutputs:\n  - type: Q8_0\n  - type: F16\n")
    out = tmp_path / "out"
    args = ["convert", str(model_path("tiny-llama")), "--recipe", str(recipe), "-o", str(out)]
    r = cli(args, tmp_path, module="tests.pipeline.fault_cli", QC_BREAK_TYPE="Q8_0")
    expect(r, 1, "tiny-llama-Q8_0.gguf is not a valid GGUF file", "it was removed, not left under its final name")
    assert leftovers(out) == ["tiny-llama-F16.gguf", "tiny-llama.two.manifest.json"]
    manifest = json.loads((out / "tiny-llama.two.manifest.json").read_text())
    assert [o["file"] for o in manifest["outputs"]] == ["tiny-llama-F16.gguf"]     # only what is on disk
    again = cli(args + ["--json"], tmp_path)
    assert again.returncode == 0, again.stderr
    cached = {Path(o["path"]).name: o["cached"] for o in json.loads(again.stdout)["outputs"]}
    assert cached == {"tiny-llama-Q8_0.gguf": False, "tiny-llama-F16.gguf": True}
