"""Atomic file writes: a temporary name in the same directory, fsync, then os.replace.

An interrupted write never replaces a good file; a killed writer leaves only a `.NAME.tmp-PID` file, which
`remove_stale_temp_files` clears on the next start. An OSError while writing (disk full, I/O error) becomes
simcli.errors.WriteFailed, naming the file and the cause.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simcli.errors import UsageError, WriteFailed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp_path)`, fsync, and move into place; the old file survives any failure.

    An OSError on the way (disk full, I/O error, permissions) is raised as WriteFailed naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers create 0600 files; give ordinary permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteFailed:
        raise
    except OSError as exc:
        raise WriteFailed(path, exc) from exc
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass  # a leftover temporary file is cleared by remove_stale_temp_files on the next start


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Atomically write bytes."""
    atomic_write(path, lambda p: p.write_bytes(data))


def write_json_atomic(path: Path, data: Any) -> None:
    """Atomically write pretty JSON."""
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temporary files left by writes that were killed; returns what was removed."""
    stale = [p for p in Path(directory).glob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def check_png_path(path: Path, option: str = "--plot") -> None:
    """Refuse an output PNG path that cannot be written (wrong suffix, a directory, no parent), before any work."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{option} writes a PNG, got '{path.name}'", hint="name the file FILE.png")
    if path.is_dir():
        raise UsageError(f"{path} is a directory", hint=f"{option} names the .png file to write")
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist", hint=f"create it, or choose another {option}")
