"""quantcli's Typer app: it only wires the command modules together (each command lives in its own module)."""
from __future__ import annotations

import typer

from . import batch, calibrate, convert, download, inspect, publish, quantize, recipes, verify, version
from ._common import hide_flag_types

HELP_OPTION_NAMES = ["-h", "--help"]

app = typer.Typer(
    name="quantcli",
    help="Convert Hugging Face models into quantized GGUF files that llama.cpp, Ollama and LM Studio load.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": HELP_OPTION_NAMES},
)
app.command("convert", short_help="Hub id or folder -> GGUF files (all stages, cached).")(convert.convert)
app.command("calibrate", short_help="Calibration text -> importance matrix (llama.cpp's imatrix).")(calibrate.calibrate)
app.command("download", short_help="Fetch a hub model into the shared Hugging Face cache.")(download.download)
app.command("quantize", short_help="The quantize stage alone, on a local snapshot.")(quantize.quantize)
app.command("inspect")(inspect.inspect)
app.command("verify", short_help="Check a GGUF's structure, and its error against the source.")(verify.verify)
app.command("version", short_help="Versions and the active quantization backend.")(version.version)
app.command("publish", short_help="Upload GGUF files, quantized folders and a model card to the hub.")(publish.publish)
app.command("batch", short_help="Models x recipes from a YAML file, for CI.")(batch.batch)
app.add_typer(recipes.app, name="recipes")


def main() -> None:
    command = typer.main.get_command(app)
    # The top-level help uses click's plain layout: typer's rich help renderer imports markdown and pygments
    # machinery worth about 0.1 s, and `quantcli --help` must start in under half a second. Every command's
    # own --help keeps the rich layout with its examples.
    command.rich_markup_mode = None  # type: ignore[attr-defined]
    hide_flag_types(command, HELP_OPTION_NAMES)
    command(prog_name="quantcli")


if __name__ == "__main__":
    main()
