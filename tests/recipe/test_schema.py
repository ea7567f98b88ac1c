"""Recipes are strict: every mistake is an error naming file and line; built-ins all load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantcli.errors import RecipeError
from quantcli.recipe import builtin_names, builtin_path, load_recipe, parse_recipe, recipe_json_schema


def test_every_builtin_recipe_loads_and_has_a_valid_type() -> None:
    names = builtin_names()
    for expected in ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "release"):
        assert expected in names
    for name in names:
        recipe = load_recipe(builtin_path(name))
        assert (recipe.outputs or recipe.folders) and recipe.name == name


def test_shorthand_and_list_forms_have_the_same_canonical_output() -> None:
    a = parse_recipe("quantize:\n  type: q4_k_m\n", default_name="x")
    b = parse_recipe("outputs:\n  - type: Q4_K_M\n", default_name="x")
    assert a.canonical() == b.canonical()
    assert a.outputs[0].type == "Q4_K_M" and a.outputs[0].file == "{model}-{type}.gguf"


def test_overrides_are_parsed() -> None:
    r = parse_recipe("quantize:\n  type: Q5_K_M\n  output_tensor_type: q8_0\n  tensor_types:\n    'attn_v': Q8_0\n")
    assert r.outputs[0].output_tensor_type == "Q8_0"
    assert r.outputs[0].tensor_types == (("attn_v", "Q8_0"),)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("quantize:\n  type: Q4_K_M\n  typo: 1\n", 3, "unknown key 'typo'"),
        ("quantize:\n  type: Q9_K\n", 2, "not a known type"),
        ("quantize:\n  type: Q4_0\n  pure: maybe\n", 3, "pure must be a bool"),
        ("quantize:\n  type: Q4_0\nverify:\n  min_snr_db: loud\n", 4, "must be a float"),
        ("quantize:\n  type: Q4_0\n  tensor_types:\n    '(': Q8_0\n", 4, "not a valid regex"),
        ("quantize:\n  type: Q4_0\n  file: '{model}-{size}.gguf'\n", 3, "{size}"),
        ("outputs:\n  - type: Q4_0\n  - type: Q4_0\n", 2, "same file name"),
        ("name: x\n", 1, "exactly one of"),
        ("quantize: [1, 2\n", 2, "not valid YAML"),
        ("quantize:\n  type: Q4_0\n  type: Q8_0\n", 3, "repeats the key"),
    ],
)
def test_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def test_json_schema_covers_the_format() -> None:
    schema = recipe_json_schema()
    json.dumps(schema)
    assert "Q4_K_M" in schema["properties"]["quantize"]["properties"]["type"]["enum"]
    assert schema["additionalProperties"] is False
