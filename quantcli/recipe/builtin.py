"""The built-in recipes shipped in the package (quantcli/recipes, a copy of the repository's recipes/)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import RecipeError
from .schema import Recipe, load_recipe


def _folder() -> Path:
    return Path(str(resources.files("quantcli") / "recipes"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in _folder().glob("*.yaml"))


def builtin_path(name: str) -> Path:
    path = _folder() / f"{name.lower()}.yaml"
    if not path.exists():
        raise RecipeError(f"there is no built-in recipe {name!r}.", hint=f"Built-ins: {', '.join(builtin_names())}.")
    return path


def resolve_recipe(name_or_path: str) -> Recipe:
    """A recipe from a file path, or a built-in by name (`q4_k_m`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_recipe(path)
    return load_recipe(builtin_path(name_or_path))
