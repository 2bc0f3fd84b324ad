"""Atomic file writes: a temporary name in the same directory, fsync, then os.replace.

An interrupted write never replaces a good file; a killed writer leaves only a `.NAME.tmp-PID` file, which
`remove_stale_temp_files` clears on the next start. A write the OS refused (disk full, I/O error, quota) becomes
simcli.errors.WriteFailed, naming the file and the cause, whatever the writer raised: writers do not all raise
OSError (safetensors raises SafetensorError "... (os error 28)", torch.save a RuntimeError from its zip writer,
numpy an OSError without errno). `write_error` finds the OS error behind such an exception; one with no OS error
behind it (a programming error, say) is raised as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simcli.errors import UsageError, WriteFailed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


LOW_SPACE_BYTES = 1 << 20
"""A filesystem with less free space than this is taken as full when a writer fails without saying why."""

_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, KeyError, IndexError, AssertionError, MemoryError,
                       RecursionError, NotImplementedError)
_WRITE_ERRNOS = tuple(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS", "EACCES", "EPERM")
                      if hasattr(errno, n))
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error ends (safetensors' errors)


def free_bytes(directory: Path) -> int | None:
    """Bytes this process may still write on the filesystem of `directory` (root may use the reserved blocks);
    None when it cannot be told."""
    try:
        if hasattr(os, "statvfs"):
            st = os.statvfs(directory)
            return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and the exceptions behind it (__cause__, __context__), each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is not None and all(e is not s for s in seen):
            seen.append(e)
            todo += [e.__cause__, e.__context__]
    return seen


def write_error(exc: Exception, directory: Path) -> OSError | None:
    """The OS error behind a writer's exception, or None when there is none (it is then not a write failure).

    In turn: an OSError with an errno in the exception chain; an errno that a message names (Rust's "(os error 28)",
    or the text of ENOSPC, EDQUOT, EIO, ...: "write(): fd 3 failed with No space left on device"); a full
    filesystem (less than LOW_SPACE_BYTES free), which is what torch.save's "unexpected pos" means; an OSError
    without errno. A programming error (TypeError, KeyError, MemoryError, ...) is never a write failure, whatever
    it was raised while handling."""
    if isinstance(exc, _PROGRAMMING_ERRORS):  # even one raised while an OSError was being handled
        return None
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return e
    for e in chain:
        text = str(e)
        if m := _RUST_OS_ERROR.search(text):
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        for code in _WRITE_ERRNOS:
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code))
    free = free_bytes(directory)
    if free is not None and free < LOW_SPACE_BYTES:
        return OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free:,} bytes free)")
    return next((e for e in chain if isinstance(e, OSError)), None)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through `write(tmp_path)`, fsync, and move into place; the old file survives any failure.

    A write the OS refused (disk full, I/O error, permissions), whatever the writer raised for it (see
    write_error), is raised as WriteFailed naming `path`; any other exception is raised as it was.
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
    except Exception as exc:
        cause = write_error(exc, path.parent)
        if cause is None:
            raise
        raise WriteFailed(path, cause) from exc
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
    """Delete temporary files, and sharded states' temporary folders (.state-<kimg>.dcp.tmp-PID), left by writes that
    were killed; returns what was removed. Other folders are never removed."""
    import shutil

    stale = [p for p in Path(directory).glob(".*.tmp-*") if p.is_file() or (p.is_dir() and p.name.startswith(".state-")
                                                                               and ".dcp.tmp-" in p.name)]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p)
        else:
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
