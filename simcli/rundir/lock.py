"""The run-directory lock: one simcli process at a time writes into a run directory.

`RunDirLock(run_dir)` creates the directory if needed, opens `.simcli.lock` in it and takes an exclusive
`fcntl.flock` before anything else there is written; it records the holder's PID, host name and start time in
the file. The lock lives as long as the process holds it: `release()` (or leaving the `with` block) gives it
back and removes the file, and the OS releases it when the process dies, even by SIGKILL, so a stale file
left by a killed process never blocks the next run. A second process gets a UsageError naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from simcli.errors import UsageError, WriteFailed
from simcli.rundir.layout import LOCK_FILE

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is a no-op there
    fcntl = None  # type: ignore[assignment]


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """The PID, host and start time recorded in a run directory's lock file; None when there is none."""
    try:
        holder = json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another simcli process (PID unknown)"
    return f"simcli process PID {holder.get('pid')} on host {holder.get('host', '?')}" + (
        f" (since {holder['since']})" if holder.get("since") else ""
    )


class RunDirLock:
    """An exclusive lock on a run directory, held until release() or the end of the process."""

    def __init__(self, run_dir: Path, wait_for_holder_s: float = 1.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._owner = os.getpid()  # a forked child that inherits this object must not remove the file
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write to run directory {self.run_dir}: {exc.strerror or exc}", hint="choose another --out") from None
        if fcntl is None:
            return
        deadline = time.monotonic() + wait_for_holder_s
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise UsageError(f"cannot write to run directory {self.run_dir}: {exc.strerror or exc}", hint="choose another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = read_holder(self.run_dir)
                if holder is None and time.monotonic() < deadline:
                    time.sleep(0.02)  # the holder has the lock but has not written its PID yet
                    continue
                raise UsageError(
                    f"{self.run_dir} is in use by {_describe(holder)}",
                    hint="wait for that run to end or stop it; two processes must not write one run directory",
                ) from None
            # A holder that released the lock removed the file it locked: ours must still be the one at the path.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(record) + "\n").encode())
        except OSError as exc:
            self.release()
            raise WriteFailed(self.path, exc) from exc

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and give the lock back (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.getpid() == self._owner:
            with contextlib.suppress(OSError):
                self.path.unlink()  # still under the lock, so no other process holds this file yet
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
