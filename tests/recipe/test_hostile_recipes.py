"""Recipes and batch files written to break the loader: tags, deep nesting, bad bytes, bad templates, type names
gguf-py knows but quantcli cannot write. Each is a RecipeError/InputError naming the file (and line)."""
from __future__ import annotations

from pathlib import Path

import pytest

from quantcli.errors import InputError, RecipeError
from quantcli.pipeline.batch import load_batch, parse_batch
from quantcli.pipeline.convert import recipe_from_type
from quantcli.quant.base import registered_types, writable_types
from quantcli.quant.mixes.options import parse_ggml_type, parse_tensor_type_option
from quantcli.recipe import load_recipe, parse_recipe, recipe_json_schema
from quantcli.recipe.templates import template_problem


@pytest.mark.parametrize("text, message", [
    ("quantize: !foo {type: Q8_0}\n", "r.yaml:1: YAML tag '!foo' is not allowed"),
    ("quantize: {type: !!python/name:os.system Q8_0}\n", "r.yaml:1: YAML tag 'tag:yaml.org,2002:python/name:os.system'"),
    ("quantize:\n  type: Q8_0\n  pure: !!binary aGk=\n", "r.yaml:3: YAML tag"),
    ("quantize: " + "[" * 5000 + "]" * 5000 + "\n", "nests deeper than any recipe"),
    ("quantize: {type: Q8_0, file: '{model'}\n", "is not a valid template"),
    ("quantize: {type: Q8_0, file: \"a\\0b.gguf\"}\n", "contains a NUL character"),
    ("quantize: {type: Q8_0, file: '{model.upper}.gguf'}\n", "uses {model.upper}"),
    ("quantize: {type: Q8_0, file: '{model:>300000000}.gguf'}\n", "formats a field"),
    ("quantize: {type: Q8_0, tensor_types: {attn_v: I8}}\n", "'I8' is not a type quantcli can write"),
    ("quantize: {type: Q8_0, output_tensor_type: MXFP4}\n", "'MXFP4' is not a type quantcli can write"),
    ("quantize: {type: Q8_0, token_embedding_type: Q8_1}\n", "'Q8_1' is not a type quantcli can write"),
])
def test_hostile_recipe_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    assert message in str(info.value)


def test_recipe_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"quantize: {type: Q8_0}\ndescription: \xff\n")
    with pytest.raises(InputError, match="r.yaml is not UTF-8 text"):
        load_recipe(path)


def test_writable_types_are_exactly_the_encoders_and_floats() -> None:
    names = {t.name for t in writable_types()}
    assert names == {"F32", "F16", "BF16"} | {t.name for t in registered_types()}
    schema = recipe_json_schema()["properties"]["quantize"]["properties"]
    assert set(schema["output_tensor_type"]["enum"]) == names
    assert set(schema["tensor_types"]["additionalProperties"]["enum"]) == names


@pytest.mark.parametrize("name", ["Q8_1", "MXFP4", "I8", "F64", "Q9_K"])
def test_command_line_types_outside_the_writable_set_are_refused(name: str) -> None:
    with pytest.raises(InputError, match=f"'{name}' is not a"):
        parse_ggml_type(name, "--output-tensor-type")
    with pytest.raises(InputError, match=f"--tensor-type attn_v={name}: '{name}'"):
        parse_tensor_type_option(f"attn_v={name}")
    with pytest.raises(InputError):
        recipe_from_type("Q4_K_M", output_tensor_type=name)


def test_writable_types_parse_in_any_case() -> None:
    for t in writable_types():
        assert parse_ggml_type(t.name.lower()) == t


BATCH = "models: [./m]\nrecipes: [q8_0]\n"


@pytest.mark.parametrize("output, message", [
    ("out/{model.x}", "uses {model.x}"),
    ("out/{model.upper}", "uses {model.upper}"),
    ('"out/{model:>300000000}"', "formats a field ({model:>300000000})"),
    ("out/{model!r}", "formats a field"),
    ("'out/{model'", "is not a valid template"),
    ("out/{type}", "uses {type}"),
])
def test_batch_output_templates_are_checked_before_use(tmp_path: Path, output: str, message: str) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(RecipeError) as info:
        parse_batch(BATCH + f"output: {output}\n", "b.yaml", base=tmp_path)
    assert "b.yaml:3:" in str(info.value) and message in str(info.value)


def test_batch_entry_output_is_checked_too(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    text = "models:\n  - model: ./m\n    output: out/{model[0]}\nrecipes: [q8_0]\n"
    with pytest.raises(RecipeError, match=r"b.yaml:3: output 'out/\{model\[0\]\}' uses"):
        parse_batch(text, "b.yaml", base=tmp_path)


def test_batch_threads_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(RecipeError, match="threads must be from 0"):
        parse_batch(BATCH + "threads: 99999999999\n", "b.yaml", base=tmp_path)


def test_batch_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_bytes(b"models: [x]\n# \xff\n")
    with pytest.raises(InputError, match="b.yaml is not UTF-8 text"):
        load_batch(path)


def test_batch_with_yaml_tags(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(RecipeError, match="b.yaml:1: YAML tag '!env'"):
        parse_batch("models: !env [./m]\nrecipes: [q8_0]\n", "b.yaml", base=tmp_path)


def test_template_problem_accepts_the_plain_fields() -> None:
    assert template_problem("{model}-{type}.gguf", ("model", "type")) is None
    assert template_problem("literal {{braces}} {model}", ("model",)) is None
