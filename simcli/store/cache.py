"""The download cache: where simcli keeps the files it downloads, whether it may download, and their sha256 records.

Environment:
    SIMCLI_CACHE        cache root (default: $XDG_CACHE_HOME/simcli, ~/.cache/simcli, ~/Library/Caches/simcli on
                        macOS, %LOCALAPPDATA%/simcli/Cache on Windows)
    SIMCLI_OFFLINE=1    never touch the network; files must already be in the cache

Callers choose where under `cache_dir()` their files go; this module knows no catalog of files.

Files beside a cached file X:
    X.part          bytes received so far; the next attempt resumes them with an HTTP Range request
    X.part.json     url and ETag/Last-Modified of the partial download, so a resume never splices two versions
    X.sha256.json   written when X is installed: url, size, sha256, downloaded_at, source ("download"/"manual")
    X.lock          advisory lock (POSIX) held while one process downloads X
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from simcli.rundir.atomic import write_json_atomic

CACHE_ENV = "SIMCLI_CACHE"
OFFLINE_ENV = "SIMCLI_OFFLINE"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DownloadRecord:
    """Contents of the `X.sha256.json` sidecar."""

    url: str
    size: int
    sha256: str
    downloaded_at: str  # ISO 8601, UTC
    source: str = "download"  # "download", or "manual" for a file first seen already in place


@dataclass(frozen=True)
class CacheCheck:
    """Result of `verify_cached`: `ok`, or a one-line `problem`."""

    path: Path
    size: int | None  # None when the file is missing
    ok: bool
    problem: str | None
    record: DownloadRecord | None
    sha256_checked: bool = False


# ---------------------------------------------------------------------------------------------- where and whether


def cache_dir() -> Path:
    """Cache root: $SIMCLI_CACHE, else the platform's user cache directory + 'simcli' (absolute path)."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return (Path(local) if local else Path.home() / "AppData" / "Local") / "simcli" / "Cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the XDG spec says relative values are to be ignored
        return Path(xdg) / "simcli"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "simcli"
    return Path.home() / ".cache" / "simcli"


def offline() -> bool:
    """True when SIMCLI_OFFLINE is 1/true/yes/on."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def part_path(dest: Path) -> Path:
    """X.part: the bytes of X received so far."""
    return dest.with_name(dest.name + ".part")


def record_path(dest: Path) -> Path:
    """X.sha256.json: the record of X (DownloadRecord)."""
    return dest.with_name(dest.name + ".sha256.json")


def part_meta_path(dest: Path) -> Path:
    """X.part.json: what X.part was downloaded from (url, ETag, Last-Modified)."""
    return dest.with_name(dest.name + ".part.json")


def lock_path(dest: Path) -> Path:
    """X.lock: held while one process downloads X."""
    return dest.with_name(dest.name + ".lock")


# ---------------------------------------------------------------------------------------------- records


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in CHUNK_BYTES blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def read_record(dest: Path) -> DownloadRecord | None:
    """The sidecar record of `dest`, or None when it is missing or unreadable."""
    try:
        raw = json.loads(record_path(dest).read_text())
        return DownloadRecord(
            url=str(raw["url"]),
            size=int(raw["size"]),
            sha256=str(raw["sha256"]),
            downloaded_at=str(raw.get("downloaded_at", "")),
            source=str(raw.get("source", "download")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_record(dest: Path, record: DownloadRecord) -> None:
    """Best effort: a cache that cannot take the sidecar still has a usable file."""
    with contextlib.suppress(OSError):
        write_json_atomic(record_path(dest), record.__dict__)


def now_utc() -> str:
    """Now, as ISO 8601 in UTC to the second (DownloadRecord.downloaded_at)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def verify_cached(
    dest: Path, *, expected_size: int | None = None, size_tolerance: int = 0, check_sha256: bool = False
) -> CacheCheck:
    """Re-check a cached file: its size against the sidecar record (exactly) and against expected +- tolerance,
    and with `check_sha256` its sha256 against the record (skipped, `sha256_checked=False`, without a record)."""
    dest = Path(dest)
    record = read_record(dest)
    if not dest.is_file():
        return CacheCheck(dest, None, False, f"{dest} does not exist", record)
    size = dest.stat().st_size
    problem = None
    if record is not None and record.size != size:
        problem = f"cached file {dest} is {size} bytes but was {record.size} bytes when installed (truncated?)"
    elif expected_size is not None and abs(size - expected_size) > size_tolerance:
        problem = (
            f"cached file {dest} is {size} bytes, expected about {expected_size} (+-{size_tolerance}); "
            "it is incomplete or not the right file"
        )
    checked = False
    if problem is None and check_sha256 and record is not None:
        checked = True
        if sha256_file(dest) != record.sha256:
            problem = f"sha256 of cached file {dest} does not match its record {record_path(dest)}"
    return CacheCheck(dest, size, problem is None, problem, record, checked)

