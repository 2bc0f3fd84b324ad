"""Integration tests: whole runs through the engine or the CLI (tiny networks, CPU; CUDA where marked)."""
