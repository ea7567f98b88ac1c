"""Runs the stages in order for one model and recipe; the CLI calls this and only prints what it returns."""
