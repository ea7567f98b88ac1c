"""quantcli's Typer app: it only wires the command modules together (each command lives in its own module)."""
from __future__ import annotations

import typer

from . import convert, inspect, recipes, verify, version

app = typer.Typer(
    name="quantcli",
    help="Convert Hugging Face models into quantized GGUF files that llama.cpp, Ollama and LM Studio load.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("convert")(convert.convert)
app.command("inspect")(inspect.inspect)
app.command("verify")(verify.verify)
app.command("version")(version.version)
app.add_typer(recipes.app, name="recipes")


def main() -> None:
    app()
