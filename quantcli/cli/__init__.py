"""The Typer CLI: one module per command; parsing and printing only."""
