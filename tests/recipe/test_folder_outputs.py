"""Recipes with safetensors folder outputs: parsing and refusals (file:line), the canonical form, the built-in
w4a16 and w4a16-gptq recipes, how the calibrate section reaches the folder outputs, and (slow) whole runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantcli.errors import RecipeError
from quantcli.pipeline.convert_int import folder_requests
from quantcli.recipe import load_recipe, parse_recipe, resolve_recipe
from quantcli.recipe.schema import FolderOutputSpec
from tests.fixtures.paths import model_path

MIXED = """\
name: mixed
calibrate:
  chunks: 8
outputs:
  - type: Q8_0
  - format: compressed-tensors
    scheme: w4a16
    group_size: 32
    dir: "{model}-{scheme}-rtn"
  - format: compressed-tensors
    group_size: 32
    method: gptq
    options: {damp: 0.05, act_order: true}
    ignore: ["re:.*down_proj"]
"""


def test_folder_outputs_are_parsed_beside_gguf_ones() -> None:
    r = parse_recipe(MIXED)
    assert [o.type for o in r.outputs] == ["Q8_0"]
    assert r.folders == (
        FolderOutputSpec("compressed-tensors", scheme="W4A16", group_size=32, dir="{model}-{scheme}-rtn"),
        FolderOutputSpec("compressed-tensors", group_size=32, method="gptq",
                         options=(("damp", 0.05), ("act_order", True)), ignore=("re:.*down_proj",)))
    canon = r.canonical()
    assert canon["folders"][1]["options"] == {"damp": 0.05, "act_order": True}
    json.dumps(canon)


def test_gguf_recipes_keep_their_canonical_form() -> None:
    canon = parse_recipe("quantize: {type: Q4_K_M}\n").canonical()
    assert "folders" not in canon and sorted(canon) == ["calibrate", "description", "name", "outputs", "publish",
                                                        "verify"]
    assert parse_recipe("quantize: {type: Q4_K_M, format: gguf}\n").canonical() == canon


@pytest.mark.parametrize("text, line, message", [
    ("quantize:\n  format: onnx\n", 2, "format: 'onnx' is not an output format"),
    ("quantize:\n  format: compressed-tensors\n  type: Q4_0\n", 3, "unknown key 'type'"),
    ("quantize:\n  format: compressed-tensors\n  scheme: W3A16\n", 3, "unknown scheme 'W3A16'"),
    ("quantize:\n  format: compressed-tensors\n  method: awq\n  options: {act_order: true}\n", 4,
     "--method awq has no option 'act_order'"),
    ("quantize:\n  format: compressed-tensors\n  options: {damp: 0.1}\n", 3, "--method minmax takes no options"),
    ("quantize:\n  format: compressed-tensors\n  method: gptq\n  options: {damp: lots}\n", 4, "is not a number"),
    ("quantize:\n  format: compressed-tensors\n  dir: '{model}/{scheme}'\n", 3, "must be a plain folder name"),
    ("quantize:\n  format: compressed-tensors\n  dir: '{type}'\n", 3, "uses {type}"),
    ("quantize:\n  format: compressed-tensors\n  ignore: lm_head\n", 3, "ignore must be a list"),
    ("outputs:\n  - format: compressed-tensors\n  - format: compressed-tensors\n", 2, "the same folder"),
])
def test_bad_folder_outputs_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert f"{path}:{line}:" in str(info.value) and message in str(info.value)


def test_builtin_w4a16_recipes() -> None:
    rtn, gptq = resolve_recipe("w4a16"), resolve_recipe("w4a16-gptq")
    assert not rtn.outputs and rtn.folders == (FolderOutputSpec("compressed-tensors", scheme="W4A16"),)
    assert gptq.folders[0].method == "gptq" and dict(gptq.folders[0].options) == {"damp": 0.01}
    assert gptq.calibrate is not None and (gptq.calibrate.ctx, gptq.calibrate.chunks) == (512, 128)


def test_the_calibrate_section_feeds_only_calibrated_folder_outputs(tmp_path: Path) -> None:
    reqs = folder_requests(parse_recipe(MIXED), "m", tmp_path / "out", threads=2)
    rtn, gptq = reqs
    assert (rtn.calibrate, rtn.chunks, rtn.method_options) == (None, None, ())
    assert (gptq.calibrate, gptq.chunks, gptq.method, dict(gptq.method_options)) == (
        None, 8, "gptq", {"damp": 0.05, "act_order": True})
    assert all(r.parent == tmp_path / "out" and r.threads == 2 for r in reqs)
    assert folder_requests(parse_recipe(MIXED), "m", None, calibrate="c.txt")[1].calibrate == "c.txt"
    with pytest.raises(Exception, match="names a file"):
        folder_requests(parse_recipe(MIXED), "m", Path("x.gguf"))


def test_the_pipeline_takes_the_recipes_folder_outputs(tmp_path: Path) -> None:
    from quantcli.pipeline.convert import ConvertRequest
    from quantcli.pipeline.runner import folder_requests_of

    reqs = folder_requests_of(ConvertRequest(model="m", recipe=parse_recipe(MIXED), output=tmp_path / "o"))
    assert [(r.method, r.parent) for r in reqs] == [("minmax", tmp_path / "o"), ("gptq", tmp_path / "o")]


@pytest.mark.slow
def test_a_mixed_recipe_writes_the_gguf_and_every_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantcli.cli.app import app
    from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry, Option
    from tests.fixtures.block_methods import StandIn

    # gptq is not on this branch: a stand-in under its name records the options the recipe gave
    monkeypatch.setitem(CALIBRATED, "gptq", MethodEntry("gptq", "tests.fixtures.block_methods:StandIn", (
        Option("damp", float, 0.01, ""), Option("act_order", bool, False, ""),
        Option("static_groups", bool, False, "")), ""))
    monkeypatch.setenv("QUANTCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mixed.yaml").write_text(MIXED.replace("chunks: 8", "chunks: 3\n  ctx: 64"))
    r = CliRunner().invoke(app, ["convert", str(model_path("tiny-llama")), "--recipe", "mixed.yaml", "-o", "out",
                                 "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["recipe"] == "mixed" and len(rec["outputs"]) == 3
    assert sorted(os.listdir(tmp_path / "out")) == ["tiny-llama-Q8_0.gguf", "tiny-llama-W4A16-gptq",
                                                     "tiny-llama-W4A16-rtn", "tiny-llama.imatrix.gguf",
                                                     "tiny-llama.mixed.manifest.json"]
    g = rec["outputs"][2]
    assert g["method"] == "gptq" and g["options"] == {"damp": 0.05, "act_order": True, "static_groups": True}
    assert (g["calibration"]["chunks"], g["calibration"]["ctx"], g["calibration"]["data"]) == (3, 64,
                                                                                                "builtin:calibration")
    assert StandIn.last is not None and StandIn.last.options == g["options"]
    assert "model.layers.0.mlp.down_proj.weight" not in g["quantized"] and len(g["quantized"]) == 12
    cfg = json.loads((tmp_path / "out" / "tiny-llama-W4A16-gptq" / "config.json").read_text())
    assert cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] == "weight"
