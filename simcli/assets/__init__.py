"""Files that ship inside the package: the digits teacher, its feature network and reference statistics.

A leaf: `asset_path` finds a file whether simcli runs from a checkout or an installed wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from simcli.errors import UsageError


def asset_path(relative: str) -> Path:
    """The path of a shipped file, e.g. 'digits/teacher.safetensors'; UsageError when the install lacks it."""
    path = Path(str(files("simcli.assets").joinpath(relative)))
    if not path.is_file():
        raise UsageError(f"the shipped file {relative} is missing from {path.parent}", hint="reinstall simcli")
    return path
