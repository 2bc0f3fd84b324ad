"""CLI tests: the typer app in-process, its messages, exit codes and output files."""
