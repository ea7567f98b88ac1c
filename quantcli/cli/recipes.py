"""`quantcli recipes list|show|schema`: the built-in recipes and the recipe format."""
# no `from __future__ import annotations`: typer would compile every string annotation at each start

from typing import Annotated

import typer

from ._common import JsonOpt, out, print_json, run

app = typer.Typer(help="List, show and describe recipes.", no_args_is_help=True, rich_markup_mode="rich")


@app.command("list")
def list_(json: JsonOpt = False) -> None:
    """List the built-in recipes.

    [bold]Example[/]: quantcli recipes list
    """
    def body() -> None:
        from ..recipe import builtin_names, builtin_path, load_recipe

        rows = [(n, load_recipe(builtin_path(n))) for n in builtin_names()]
        if json:
            print_json([{"name": n, "description": r.description, "outputs": _outputs(r)} for n, r in rows])
            return
        from rich.table import Table

        table = Table("name", "outputs", "description")
        for n, r in rows:
            table.add_row(n, ", ".join(_outputs(r)), r.description)
        out.print(table)

    run(body)


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Built-in name or recipe file.")], json: JsonOpt = False) -> None:
    """Show a recipe in its canonical form (every default filled in).

    [bold]Example[/]: quantcli recipes show q4_k_m
    """
    def body() -> None:
        import yaml

        from ..recipe import resolve_recipe

        canonical = resolve_recipe(name).canonical()
        if json:
            print_json(canonical)
        else:
            out.print(yaml.safe_dump(_plain(canonical), sort_keys=False), end="", highlight=False)

    run(body)


@app.command("schema")
def schema() -> None:
    """Print the recipe JSON Schema (for editors): quantcli recipes schema > recipe.schema.json"""
    def body() -> None:
        from ..recipe import recipe_json_schema

        print_json(recipe_json_schema())

    run(body)


def _outputs(recipe) -> list[str]:  # type: ignore[no-untyped-def]
    """GGUF outputs by type; folder outputs as format:scheme, with the method when it is not plain RTN."""
    folders = [f"{f.format}:{f.scheme or 'default'}" + ("" if f.method == "minmax" else f"+{f.method}")
               for f in recipe.folders]
    return [o.type for o in recipe.outputs] + folders


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
