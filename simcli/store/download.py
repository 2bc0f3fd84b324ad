"""Download a file into the cache: resumable, size-checked, sha256-recorded (`ensure_file`).

Engine code: it never prints. Progress reaches the caller only through `on_progress(done_bytes, total_bytes)`
(total is None when the server does not say), and every failure is a `DownloadError` (a `UsageError`, exit
code 2) whose one-line message names the URL and the exact path where the file can be placed by hand.
Where files go and how they are checked afterwards is `simcli.store.cache`; which files there are (URLs,
sizes, places in the cache) is the callers' business.

A cached file X only ever appears by an atomic rename of a complete, size-checked X.part: a failed download
leaves whatever X was there before untouched.
"""

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from simcli import __version__
from simcli.errors import UsageError
from simcli.rundir.atomic import write_json_atomic
from simcli.store.cache import (
    CACHE_ENV,
    CHUNK_BYTES,
    OFFLINE_ENV,
    DownloadRecord,
    lock_path,
    now_utc,
    offline,
    part_meta_path,
    part_path,
    sha256_file,
    verify_cached,
    write_record,
)

PROGRESS_EVERY_BYTES = 1 << 20  # on_progress is called at most once per MiB, plus at the start and the end
DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = f"simcli/{__version__} (python-urllib)"

DownloadProgressFn = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) while a file downloads."""


class DownloadError(UsageError):
    """A file could not be fetched or installed; `url` and `dest` say which and where it belongs."""

    def __init__(self, message: str, hint: str | None = None, *, url: str, dest: Path):
        super().__init__(_one_line(message), _one_line(hint) if hint else None)
        self.url = url
        self.dest = dest


# ---------------------------------------------------------------------------------------------- fetching


class _NetworkError(Exception):
    """Internal: the network failed; `progressed` when bytes arrived first (worth another attempt)."""

    def __init__(self, reason: str, progressed: bool):
        super().__init__(reason)
        self.reason = reason
        self.progressed = progressed


class _Restart(Exception):
    """Internal: the partial file cannot be resumed; drop it and start over."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc_reason = exc.reason
        return _one_line(exc_reason if isinstance(exc_reason, str) else f"{type(exc_reason).__name__}: {exc_reason}")
    return _one_line(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__


def _manual_hint(dest: Path) -> str:
    return f"download it elsewhere and copy it to {dest}, or set {CACHE_ENV} to a cache that has it"


def _refuse_offline(url: str, dest: Path, extra: str = "") -> None:
    if offline():
        raise DownloadError(
            f"{url} is not cached and {OFFLINE_ENV} is set; place the file by hand at {dest}{extra}",
            hint=f"download it elsewhere and copy it to {dest}, or unset {OFFLINE_ENV}",
            url=url,
            dest=dest,
        )


def _discard_part(dest: Path) -> None:
    for p in (part_path(dest), part_meta_path(dest)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _size_refused(url: str, dest: Path, got: int, expected: int, tol: int, what: str) -> DownloadError:
    _discard_part(dest)
    return DownloadError(
        f"{what} {url} is {got} bytes, expected about {expected} (+-{tol}); not installed at {dest}",
        hint="the server may serve an error page or a different file; check the URL or copy the file by hand",
        url=url,
        dest=dest,
    )


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """'bytes START-END/TOTAL' -> (START, TOTAL or None)."""
    if not value or not value.strip().lower().startswith("bytes "):
        return None
    try:
        span, _, total = value.strip()[6:].partition("/")
        start = int(span.split("-")[0])
        return start, (None if total.strip() in ("", "*") else int(total))
    except ValueError:
        return None


def _content_length(resp) -> int | None:
    try:
        value = resp.headers.get("Content-Length")
        return int(value) if value is not None else None
    except ValueError:
        return None


def _attempt(
    url: str, dest: Path, expected_size: int | None, tol: int, on_progress: DownloadProgressFn | None, timeout_s: float
) -> tuple[int, str]:
    """One request into X.part (resuming it when possible). Returns (size, sha256) of the complete part."""
    part, meta_path = part_path(dest), part_meta_path(dest)
    offset = part.stat().st_size if part.is_file() else 0
    meta: dict = {}
    if offset:
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads(meta_path.read_text())
        if (meta and meta.get("url") != url) or (expected_size is not None and offset > expected_size + tol):
            _discard_part(dest)
            offset, meta = 0, {}
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            raise _Restart from exc
        raise DownloadError(
            f"cannot download {url}: the server answered HTTP {exc.code} {exc.reason}; nothing installed at {dest}",
            hint=_manual_hint(dest),
            url=url,
            dest=dest,
        ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _NetworkError(_reason(exc), progressed=False) from exc
    except ValueError as exc:  # malformed URL
        raise DownloadError(
            f"cannot download {url}: {_one_line(str(exc))}", hint=_manual_hint(dest), url=url, dest=dest
        ) from exc

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// answers have no status
        if offset and status == 206:
            parsed = _parse_content_range(resp.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                raise _Restart
            total = parsed[1]
        else:  # 200: the server ignored Range (or If-Range said the file changed): start over
            offset, total = 0, _content_length(resp)
        if total is not None and expected_size is not None and abs(total - expected_size) > tol:
            raise _size_refused(url, dest, total, expected_size, tol, "the server says")
        needed = (total if total is not None else expected_size or 0) - offset
        try:
            free = shutil.disk_usage(dest.parent).free
        except OSError:
            free = None
        if free is not None and needed > free:
            raise DownloadError(
                f"not enough disk space for {url}: {needed} bytes needed, {free} free in {dest.parent}",
                hint=f"free some space or set {CACHE_ENV} to a larger disk",
                url=url,
                dest=dest,
            )
        new_meta = {
            "url": url,
            "etag": resp.headers.get("ETag"),
            "last_modified": resp.headers.get("Last-Modified"),
            "total": total,
        }
        hasher = hashlib.sha256()
        try:
            write_json_atomic(meta_path, new_meta)
            if offset:
                with open(part, "rb") as fh:
                    while block := fh.read(CHUNK_BYTES):
                        hasher.update(block)
            fh = open(part, "ab" if offset else "wb")
        except OSError as exc:
            raise _write_failed(url, dest, exc) from exc
        done = start = reported = offset
        read = getattr(resp, "read1", resp.read)  # read1: whatever arrived, so a stall loses no received bytes
        with fh:
            if on_progress is not None:
                on_progress(done, total)
            while True:
                try:
                    chunk = read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _NetworkError(_reason(exc), progressed=done > start) from exc
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise _write_failed(url, dest, exc) from exc
                hasher.update(chunk)
                done += len(chunk)
                if expected_size is not None and done > expected_size + tol:
                    fh.close()
                    raise _size_refused(url, dest, done, expected_size, tol, "the download of")
                if on_progress is not None and done - reported >= PROGRESS_EVERY_BYTES:
                    on_progress(done, total)
                    reported = done
            if on_progress is not None and done != reported:
                on_progress(done, total)
            if total is not None and done < total:
                raise _NetworkError(f"connection closed after {done} of {total} bytes", progressed=done > start)
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise _write_failed(url, dest, exc) from exc
    if expected_size is not None and abs(done - expected_size) > tol:
        raise _size_refused(url, dest, done, expected_size, tol, "the download of")
    return done, hasher.hexdigest()


def _write_failed(url: str, dest: Path, exc: OSError) -> DownloadError:
    return DownloadError(
        f"cannot write the download of {url} next to {dest}: {_reason(exc)}",
        hint=f"make {dest.parent} writable or set {CACHE_ENV} to another directory",
        url=url,
        dest=dest,
    )


@contextlib.contextmanager
def _locked(url: str, dest: Path) -> Iterator[None]:
    """Serialise downloads of one file across processes (POSIX flock; no-op elsewhere)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path(dest), "a+b")
    except OSError as exc:
        raise _write_failed(url, dest, exc) from exc
    with fh:
        try:
            import fcntl
        except ImportError:  # Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fetch_locked(
    url: str,
    dest: Path,
    expected_size: int | None,
    tol: int,
    on_progress: DownloadProgressFn | None,
    timeout_s: float,
    retries: int,
) -> Path:
    tries = restarts = 0
    while True:
        try:
            size, digest = _attempt(url, dest, expected_size, tol, on_progress, timeout_s)
            break
        except _Restart:
            _discard_part(dest)
            restarts += 1
            if restarts > 1:
                raise DownloadError(
                    f"cannot resume the download of {url} into {dest}", hint=_manual_hint(dest), url=url, dest=dest
                ) from None
        except _NetworkError as exc:
            if exc.progressed and tries < retries:
                tries += 1
                continue
            part = part_path(dest)
            kept = part.stat().st_size if part.is_file() else 0
            if kept:
                raise DownloadError(
                    f"download of {url} interrupted ({exc.reason}); {kept} bytes kept in {part}, nothing installed "
                    f"at {dest}",
                    hint=f"run the same command again to resume, or {_manual_hint(dest)}",
                    url=url,
                    dest=dest,
                ) from exc
            raise DownloadError(
                f"cannot download {url} ({exc.reason}); place the file by hand at {dest}",
                hint=_manual_hint(dest),
                url=url,
                dest=dest,
            ) from exc
    try:
        os.replace(part_path(dest), dest)
    except OSError as exc:
        raise _write_failed(url, dest, exc) from exc
    with contextlib.suppress(OSError):
        part_meta_path(dest).unlink()
    write_record(dest, DownloadRecord(url=url, size=size, sha256=digest, downloaded_at=now_utc()))
    return dest


def ensure_file(
    url: str,
    dest: Path,
    *,
    expected_size: int | None = None,
    size_tolerance: int = 0,
    on_progress: DownloadProgressFn | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check_sha256: bool = False,
    retries: int = 2,
) -> Path:
    """`dest` when it is cached and valid (no network), else download `url` there; returns `dest`.

    Cached and valid: `verify_cached` passes (size against the sidecar record and `expected_size +-
    size_tolerance`; with `check_sha256` also the sha256). A cached file first seen without a sidecar (copied in
    by hand) gets a 'manual' record.

    Otherwise (unless SIMCLI_OFFLINE, which refuses) bytes go to `dest.part`, under `dest.lock`: a partial one is
    resumed with a Range request (a server that ignores Range gets a fresh start); the size is checked against
    `expected_size +- size_tolerance` (from the headers before the body, then at the end); the sha256 is computed
    on the way; the file is renamed into place atomically and `dest.sha256.json` records it. An interruption
    after some bytes arrived is retried up to `retries` times. `timeout_s` bounds each socket operation
    (connect, each read), not the whole download. Every failure is a DownloadError and leaves any existing
    `dest` untouched: a cached file that fails the checks is kept until a re-download succeeds, and if that
    fails the error names both problems.
    """
    dest = Path(dest).absolute()
    check = verify_cached(dest, expected_size=expected_size, size_tolerance=size_tolerance, check_sha256=check_sha256)
    if check.ok:
        if check.record is None and os.access(dest.parent, os.W_OK):
            write_record(
                dest,
                DownloadRecord(
                    url=url, size=check.size or 0, sha256=sha256_file(dest), downloaded_at=now_utc(), source="manual"
                ),
            )
        return dest
    bad = check.problem if check.size is not None else None
    _refuse_offline(url, dest, extra=f" ({bad})" if bad else "")
    try:
        with _locked(url, dest):
            again = verify_cached(
                dest, expected_size=expected_size, size_tolerance=size_tolerance, check_sha256=check_sha256
            )
            if again.ok:  # another process installed it while we waited for the lock
                return dest
            return _fetch_locked(url, dest, expected_size, size_tolerance, on_progress, timeout_s, retries)
    except DownloadError as exc:
        if bad:
            raise DownloadError(
                f"{bad}; re-downloading failed: {exc.message}", hint=exc.hint, url=url, dest=dest
            ) from None
        raise

