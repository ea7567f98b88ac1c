"""The stage runner: a recipe mixing a GGUF and a W4A16 folder in one run (one manifest, the same bytes as each
converted alone, cache hits on a re-run), batch with a folder recipe, the model-level threshold of a recipe's
verify section (a miss exits 1 naming the figure and the limit), and the option checks of pipeline/options.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantcli.errors import InputError, RecipeError
from quantcli.pipeline.cache import file_sha256, folder_files
from quantcli.pipeline.options import ConvertFlags, request_from_flags
from quantcli.recipe import parse_recipe

MIXED = """\
name: mixed
outputs:
  - type: Q4_K_M
  - format: compressed-tensors
    scheme: W4A16
    group_size: 32
"""

# thresholds that tiny-llama (random weights) at Q4_0 cannot meet, and a loose one it meets
STRICT = """\
name: strict
quantize: {type: Q4_0}
verify:
  max_kld: 0.000001
  ctx: 32
  chunks: 2
"""
LOOSE = STRICT.replace("max_kld: 0.000001", "max_ppl_ratio: 1000").replace("name: strict", "name: loose")


def cli(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QUANTCLI_NO_PROGRESS="1", QUANTCLI_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "quantcli.cli.app", *args], env=env, capture_output=True, text=True,
                          timeout=900, cwd=cwd)


# ---- option combinations: one place, the messages users got from the CLI ----

def test_folder_format_with_gguf_options_is_refused() -> None:
    with pytest.raises(InputError, match="takes --scheme/--method/--bits/--group-size/--sym/--ignore, not the GGUF"):
        request_from_flags(ConvertFlags(model="m", format="compressed-tensors", type="Q8_0"))


def test_gguf_with_folder_options_is_refused() -> None:
    with pytest.raises(InputError, match="apply to folder formats"):
        request_from_flags(ConvertFlags(model="m", scheme="W4A16"))
    with pytest.raises(InputError, match="apply to folder formats"):
        request_from_flags(ConvertFlags(model="m", method="awq"))


def test_recipe_with_type_flags_is_refused() -> None:
    with pytest.raises(InputError, match="--recipe cannot be combined"):
        request_from_flags(ConvertFlags(model="m", recipe="q8_0", type="Q4_0"))


def test_flags_become_the_request_of_their_path() -> None:
    folder = request_from_flags(ConvertFlags(model="m", format="compressed-tensors", scheme="W8A16", group_size=0))
    assert folder.recipe.outputs == () and len(folder.folders) == 1
    assert (folder.folders[0].scheme, folder.folders[0].group_size) == ("W8A16", 0)
    gguf = request_from_flags(ConvertFlags(model="m", type="Q4_K_M", method="gptq", calibrate="x.txt"))
    assert (gguf.method, gguf.recipe.outputs[0].type, gguf.folders) == ("gptq", "Q4_K_M", ())
    split = request_from_flags(ConvertFlags(model="m", method="splitquant", splitquant_branches=True))
    assert type(split.folders[0]).__name__ == "SplitConvertRequest" and split.folders[0].branches


# ---- the recipe's verify section ----

def test_verify_text_keys_need_a_model_level_threshold() -> None:
    with pytest.raises(RecipeError, match=r":4: verify.data sets the text of the model-level check"):
        parse_recipe("name: x\nquantize: {type: Q8_0}\nverify:\n  data: builtin:eval\n")
    with pytest.raises(RecipeError, match="verify.ctx must be a whole number of at least 4"):
        parse_recipe("quantize: {type: Q8_0}\nverify:\n  max_kld: 0.1\n  ctx: 2\n")
    with pytest.raises(RecipeError, match="verify.max_ppl_ratio must be a finite number above 0"):
        parse_recipe("quantize: {type: Q8_0}\nverify:\n  max_ppl_ratio: 0\n")
    spec = parse_recipe(STRICT).verify
    assert (spec.max_kld, spec.ctx, spec.chunks, spec.data, spec.model_level) == (0.000001, 32, 2, None, True)


# ---- whole runs on tiny-llama ----

@pytest.mark.slow
def test_a_mixed_recipe_is_one_run_with_one_manifest(tiny_llama: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "mixed.yaml").write_text(MIXED)
    r = cli(["convert", str(tiny_llama), "--recipe", "mixed.yaml", "-o", "out", "--json"], cache, tmp_path)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert [Path(o["path"]).name for o in rec["outputs"]] == ["tiny-llama-Q4_K_M.gguf", "tiny-llama-W4A16"]
    out = tmp_path / "out"
    manifest = json.loads((out / "tiny-llama.mixed.manifest.json").read_text())
    assert rec["manifest"] == str(Path("out") / "tiny-llama.mixed.manifest.json")
    gguf, folder = manifest["outputs"]
    assert (gguf["kind"], gguf["file"], gguf["cache"]) == ("gguf", "tiny-llama-Q4_K_M.gguf", "written")
    assert gguf["sha256"] == file_sha256(out / "tiny-llama-Q4_K_M.gguf")
    assert (folder["kind"], folder["file"], folder["type"], folder["cache"]) == (
        "folder", "tiny-llama-W4A16", "W4A16", "written")
    assert folder["files"] == folder_files(out / "tiny-llama-W4A16") and "model.safetensors" in folder["files"]
    assert {s["stage"] for s in gguf["stages"]} == {"pack", "verify"}
    assert [s["stage"] for s in manifest["stages"]][:2] == ["download", "calibrate"]

    # each output converted alone gives the same bytes
    alone = tmp_path / "alone"
    alone.mkdir()
    r1 = cli(["convert", str(tiny_llama), "--type", "Q4_K_M", "-o", "a.gguf"], cache, alone)
    r2 = cli(["convert", str(tiny_llama), "--format", "compressed-tensors", "--scheme", "W4A16", "--group-size",
              "32", "-o", "w4"], cache, alone)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    assert file_sha256(alone / "a.gguf") == gguf["sha256"]
    assert folder_files(alone / "w4") == folder["files"]
    single = json.loads((alone / "w4.manifest.json").read_text())     # a lone folder's manifest sits beside it
    assert single["outputs"][0]["files"] == folder["files"]

    # a re-run hits the cache for both outputs and re-hashes them
    again = cli(["convert", str(tiny_llama), "--recipe", "mixed.yaml", "-o", "out", "--json"], cache, tmp_path)
    assert again.returncode == 0, again.stderr
    assert [o["cached"] for o in json.loads(again.stdout)["outputs"]] == [True, True]
    manifest = json.loads((out / "tiny-llama.mixed.manifest.json").read_text())
    assert [o["cache"] for o in manifest["outputs"]] == ["hit", "hit"]
    # a folder edited since it was made is rebuilt, not reused
    (out / "tiny-llama-W4A16" / "config.json").write_text("{}")
    third = cli(["convert", str(tiny_llama), "--recipe", "mixed.yaml", "-o", "out", "--json"], cache, tmp_path)
    assert third.returncode == 0, third.stderr
    assert [o["cached"] for o in json.loads(third.stdout)["outputs"]] == [True, False]
    assert "changed since it was made" in third.stderr
    assert folder_files(out / "tiny-llama-W4A16") == folder["files"]


@pytest.mark.slow
def test_batch_runs_a_folder_recipe(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "mixed.yaml").write_text(MIXED)
    (tmp_path / "w8.yaml").write_text("name: w8\nquantize: {format: compressed-tensors, scheme: W8A16, group_size: 0}\n")
    (tmp_path / "batch.yaml").write_text(f"output: out/{{model}}\nmodels: [{tiny_llama}]\nrecipes: [mixed.yaml, w8.yaml]\n")
    r = cli(["batch", "batch.yaml", "--json"], tmp_path / "cache", tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads(r.stdout)
    mixed, w8 = report["jobs"]
    assert mixed["status"] == "ok" and w8["status"] == "ok"
    assert [o["type"] for o in mixed["outputs"]] == ["Q4_K_M", "W4A16"]
    assert [o["type"] for o in w8["outputs"]] == ["W8A16"]
    for o in mixed["outputs"] + w8["outputs"]:
        assert set(o) == {"path", "type", "bytes", "sha256", "cached", "verify_ok"}
        assert o["verify_ok"] is True and o["cached"] is False and o["bytes"] > 0
    folder = Path(mixed["outputs"][1]["path"])
    assert folder.is_dir() and mixed["outputs"][1]["sha256"] == json.loads(
        Path(mixed["manifest"]).read_text())["outputs"][1]["sha256"]
    assert Path(w8["manifest"]).name == "tiny-llama.w8.manifest.json"
    assert report["summary"]["outputs_written"] == 3


@pytest.mark.slow
def test_a_missed_model_threshold_exits_1_naming_the_figure(tiny_llama: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "strict.yaml").write_text(STRICT)
    (tmp_path / "loose.yaml").write_text(LOOSE)
    r = cli(["convert", str(tiny_llama), "--recipe", "strict.yaml", "-o", "out"], cache, tmp_path)
    assert r.returncode == 1, r.stderr
    assert "mean KL divergence" in r.stderr and "is above max_kld 1e-06" in r.stderr
    manifest = json.loads((tmp_path / "out" / "tiny-llama.strict.manifest.json").read_text())
    figures = manifest["outputs"][0]["model_verify"]
    assert figures["ok"] is False and figures["kld_mean"] > 1e-6 and figures["n_chunks"] == 2
    assert f"{figures['kld_mean']:.6f}" in r.stderr
    # the loose recipe passes with the same figures, which come from the cache the second time
    ok = cli(["convert", str(tiny_llama), "--recipe", "loose.yaml", "-o", "out", "--json"], cache, tmp_path)
    assert ok.returncode == 0, ok.stderr
    first = json.loads(ok.stdout)["outputs"]
    assert len(first) == 1
    again = cli(["convert", str(tiny_llama), "--recipe", "loose.yaml", "-o", "out"], cache, tmp_path)
    assert again.returncode == 0 and ", cached: ok" in again.stdout
    loose = json.loads((tmp_path / "out" / "tiny-llama.loose.manifest.json").read_text())["outputs"][0]
    assert loose["model_verify"]["ok"] is True and loose["model_verify"]["kld_mean"] == figures["kld_mean"]
    assert [s["status"] for s in loose["stages"] if s["stage"] == "verify_model"] == ["hit"]


def test_batch_jobs_writing_one_folder_are_refused_when_loaded(tmp_path: Path) -> None:
    from quantcli.pipeline.batch import parse_batch

    model = tmp_path / "tiny-llama"     # the batch file is checked before any model is read
    model.mkdir()

    (tmp_path / "a.yaml").write_text("name: a\nquantize: {format: compressed-tensors, scheme: W8A16, dir: same}\n")
    (tmp_path / "b.yaml").write_text("name: b\nquantize: {format: bnb-nf4, dir: same}\n")
    text = f"output: out\nmodels: [{model}]\nrecipes: [a.yaml, b.yaml]\n"
    with pytest.raises(RecipeError, match=r"job 'tiny-llama.a' \(folder output same\) and job 'tiny-llama.b' "
                                          r"\(folder output same\) would both write"):
        parse_batch(text, "batch.yaml", base=tmp_path)
    parse_batch(text.replace("output: out", "output: out/{recipe}"), "batch.yaml", base=tmp_path)
