"""Recipes: strict YAML describing what to produce (types, overrides, file names) and the verify thresholds."""
from .schema import OutputSpec, Recipe, VerifySpec, load_recipe, parse_recipe, recipe_json_schema
from .builtin import builtin_names, builtin_path, resolve_recipe

__all__ = ["OutputSpec", "Recipe", "VerifySpec", "load_recipe", "parse_recipe", "recipe_json_schema",
           "builtin_names", "builtin_path", "resolve_recipe"]
