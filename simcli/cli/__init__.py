"""The command-line layer: Typer commands, rich output, and the map from errors to exit codes."""
