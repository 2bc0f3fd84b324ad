"""The download store (simcli.store) against a loopback HTTP server the tests start themselves (no internet), the
EDM teacher and FID reference files built on it (simcli.teachers.edm_files, simcli.eval.references), and the
EDM catalog.

The server binds 127.0.0.1 on an ephemeral port, serves bytes the tests make, can honour or ignore Range and
If-Range, can leave out Content-Length, can drop the connection mid-body, and records every request so offline
runs can prove silence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from simcli.errors import UsageError
from simcli.eval.references import ensure_fid_reference_file, fid_reference_path
from simcli.store import cache as cache_mod
from simcli.store import download as dl
from simcli.store.download import DownloadError
from simcli.teachers.edm_catalog import (
    EDM_BASE_URL,
    EDM_TEACHERS,
    FID_REFERENCES,
    FID_REFS_BASE_URL,
    get_edm_teacher,
    get_fid_reference,
)
from simcli.teachers.edm_files import ensure_teacher_file, mirrored_url, teacher_path

PAYLOAD = os.urandom(300_000) + bytes(range(256)) * 100  # ~325 KB: several reads, well under a second


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.support_range = True
        self.send_length = True  # False: no Content-Length, the body ends when the connection closes
        self.drop_after: int | None = None  # close the connection after this many body bytes
        self.drops_left = 10**9  # how many responses to drop before answering in full
        self.stall_s = 0.0  # with drop_after: go silent this long instead of closing
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def put(self, path: str, data: bytes, etag: str | None = None) -> None:
        self.files[path] = data
        self.etags[path] = etag or '"' + hashlib.md5(data).hexdigest() + '"'


def _handler(state: _State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802
            with state.lock:
                state.requests.append({"path": self.path, **{k: v for k, v in self.headers.items()}})
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            etag = state.etags[self.path]
            start, status = 0, 200
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if state.support_range and rng and (if_range is None or if_range == etag):
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            if state.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            if state.support_range:
                self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            with state.lock:
                drop = state.drop_after is not None and state.drops_left > 0
                if drop:
                    state.drops_left -= 1
            if drop:
                self.wfile.write(body[: state.drop_after])
                self.wfile.flush()
                if state.stall_s:
                    time.sleep(state.stall_s)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server():
    state = _State()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SIMCLI_CACHE", str(root))
    monkeypatch.delenv("SIMCLI_OFFLINE", raising=False)
    monkeypatch.delenv("SIMCLI_EDM_MIRROR", raising=False)
    return root


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------- downloads


def test_download_writes_file_and_sha256_sidecar(server, cache):
    server.put("/f.bin", PAYLOAD)
    dest = cache_mod.cache_dir() / "sub" / "f.bin"
    seen: list[tuple[int, int | None]] = []
    out = dl.ensure_file(
        f"{server.base}/f.bin",
        dest,
        expected_size=len(PAYLOAD),
        size_tolerance=0,
        on_progress=lambda d, t: seen.append((d, t)),
        timeout_s=5,
    )
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert dest.parent == cache / "sub"
    record = json.loads(cache_mod.record_path(dest).read_text())
    assert record["sha256"] == _sha(PAYLOAD)
    assert record["size"] == len(PAYLOAD) and record["url"] == f"{server.base}/f.bin"
    assert record["downloaded_at"] and record["source"] == "download"
    assert not cache_mod.part_path(dest).exists()
    assert seen[0] == (0, len(PAYLOAD)) and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    check = cache_mod.verify_cached(dest, expected_size=len(PAYLOAD), check_sha256=True)
    assert check.ok and check.sha256_checked and check.record.sha256 == _sha(PAYLOAD)


def test_size_mismatch_is_refused_and_nothing_installed(server, cache):
    server.put("/f.bin", PAYLOAD)
    dest = cache / "f.bin"
    with pytest.raises(DownloadError, match=r"the server says .* expected about 335600 \(\+-100\); not installed") as err:
        dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD) + 10_000, size_tolerance=100, timeout_s=5)
    assert str(len(PAYLOAD)) in err.value.message and str(dest) in err.value.message
    assert not dest.exists() and not cache_mod.part_path(dest).exists() and not cache_mod.record_path(dest).exists()


def test_size_refused_without_content_length(server, cache):
    """A server that does not say the size: the body is counted as it arrives and refused once it is too long."""
    server.put("/f.bin", PAYLOAD)
    server.send_length = False
    dest = cache / "f.bin"
    with pytest.raises(DownloadError, match=r"the download of .* expected about 1000 \(\+-10\); not installed") as err:
        dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=1000, size_tolerance=10, timeout_s=5)
    assert str(dest) in err.value.message
    assert not dest.exists() and not cache_mod.part_path(dest).exists()
    assert dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5).read_bytes() == PAYLOAD


def test_size_refused_for_a_file_url(tmp_path, cache):
    # file:// exercises the non-HTTP path (no status code, Range ignored)
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = cache / "f.bin"
    with pytest.raises(DownloadError, match=rf"{len(PAYLOAD)} bytes, expected about 1000 \(\+-10\); not installed"):
        dl.ensure_file(src.as_uri(), dest, expected_size=1000, size_tolerance=10, timeout_s=5)
    assert not dest.exists()
    dl.ensure_file(src.as_uri(), dest, expected_size=len(PAYLOAD), timeout_s=5)
    assert dest.read_bytes() == PAYLOAD


def test_resume_partial_file_with_range(server, cache):
    server.put("/f.bin", PAYLOAD)
    dest = cache / "f.bin"
    cache.mkdir()
    cache_mod.part_path(dest).write_bytes(PAYLOAD[:123_456])
    seen: list[tuple[int, int | None]] = []
    dl.ensure_file(
        f"{server.base}/f.bin",
        dest,
        expected_size=len(PAYLOAD),
        on_progress=lambda d, t: seen.append((d, t)),
        timeout_s=5,
    )
    assert dest.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in server.requests] == ["bytes=123456-"]
    assert seen[0] == (123_456, len(PAYLOAD))
    assert json.loads(cache_mod.record_path(dest).read_text())["sha256"] == _sha(PAYLOAD)


def test_server_ignoring_range_restarts_cleanly(server, cache):
    server.put("/f.bin", PAYLOAD)
    server.support_range = False
    dest = cache / "f.bin"
    cache.mkdir()
    cache_mod.part_path(dest).write_bytes(b"\xff" * 50_000)  # wrong bytes: must be thrown away, not spliced
    dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0].get("Range") == "bytes=50000-"
    assert json.loads(cache_mod.record_path(dest).read_text())["sha256"] == _sha(PAYLOAD)


def test_interrupted_download_resumes_on_next_call(server, cache):
    server.put("/f.bin", PAYLOAD)
    server.drop_after, server.drops_left = 100_000, 1
    dest = cache / "f.bin"
    with pytest.raises(DownloadError, match="interrupted .*; 100000 bytes kept in .*, nothing installed at") as err:
        dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5, retries=0)
    assert "\n" not in err.value.message and str(dest) in err.value.message
    assert not dest.exists() and cache_mod.part_path(dest).stat().st_size == 100_000
    dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1]["Range"] == "bytes=100000-" and server.requests[-1]["If-Range"]
    assert json.loads(cache_mod.record_path(dest).read_text())["sha256"] == _sha(PAYLOAD)


def test_interruption_is_retried_within_one_call(server, cache):
    server.put("/f.bin", PAYLOAD)
    server.drop_after, server.drops_left = 70_000, 2
    dest = cache / "f.bin"
    dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert [r.get("Range") for r in server.requests] == [None, "bytes=70000-", "bytes=140000-"]


def test_changed_remote_file_is_not_spliced(server, cache):
    """If-Range: a partial download of an older version is restarted, not completed with the new bytes."""
    server.put("/f.bin", PAYLOAD, etag='"v1"')
    server.drop_after, server.drops_left = 100_000, 1
    dest = cache / "f.bin"
    with pytest.raises(DownloadError, match="interrupted .*; 100000 bytes kept in"):
        dl.ensure_file(f"{server.base}/f.bin", dest, timeout_s=5, retries=0)
    new = bytes(reversed(PAYLOAD))
    server.put("/f.bin", new, etag='"v2"')
    dl.ensure_file(f"{server.base}/f.bin", dest, timeout_s=5)
    assert dest.read_bytes() == new


def test_complete_part_file_416_restarts(server, cache):
    server.put("/f.bin", PAYLOAD)
    dest = cache / "f.bin"
    cache.mkdir()
    cache_mod.part_path(dest).write_bytes(PAYLOAD + b"extra")
    dl.ensure_file(f"{server.base}/f.bin", dest, timeout_s=5)
    assert dest.read_bytes() == PAYLOAD


def test_unreachable_server_names_url_and_path(cache):
    url = f"http://127.0.0.1:{_closed_port()}/edm/f.bin"
    dest = cache / "edm" / "f.bin"
    with pytest.raises(DownloadError, match=r"cannot download .* \(.*\); place the file by hand at") as err:
        dl.ensure_file(url, dest, timeout_s=2)
    exc = err.value
    assert url in exc.message and str(dest) in exc.message and "\n" not in exc.message
    assert exc.hint and str(dest) in exc.hint and "SIMCLI_CACHE" in exc.hint and exc.exit_code == 2
    assert not dest.exists()


def test_stalled_server_times_out_and_keeps_partial(server, cache):
    server.put("/f.bin", PAYLOAD)
    server.drop_after, server.stall_s = 40_000, 1.0
    dest = cache / "f.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="interrupted .*timed out") as err:
        dl.ensure_file(f"{server.base}/f.bin", dest, timeout_s=0.3, retries=0)
    assert time.monotonic() - t0 < 0.9
    assert "interrupted" in err.value.message and "timed out" in err.value.message
    assert not dest.exists() and cache_mod.part_path(dest).stat().st_size == 40_000


def test_http_404_is_a_usage_error(server, cache):
    with pytest.raises(UsageError, match="the server answered HTTP 404") as err:
        dl.ensure_file(f"{server.base}/missing.bin", cache / "m.bin", timeout_s=5)
    assert "404" in err.value.message and f"{server.base}/missing.bin" in err.value.message
    assert isinstance(err.value, DownloadError) and err.value.exit_code == 2


def test_interrupted_redownload_keeps_the_previous_file(server, cache):
    """A cached file that fails its checks (an older, smaller version here) is re-downloaded; when that is cut
    off, the file stays exactly as it was, record and all."""
    old = b"good old file" * 1000
    dest = cache / "f.bin"
    cache.mkdir()
    dest.write_bytes(old)
    cache_mod.record_path(dest).write_text(
        json.dumps({"url": "x", "size": len(old), "sha256": _sha(old), "downloaded_at": "then"})
    )
    server.put("/f.bin", PAYLOAD)
    server.support_range = False
    server.drop_after = 50_000  # every response is cut
    with pytest.raises(DownloadError, match=f"is {len(old)} bytes, expected about .*; re-downloading failed: download of .* interrupted") as err:
        dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5, retries=1)
    assert "\n" not in err.value.message
    assert dest.read_bytes() == old
    check = cache_mod.verify_cached(dest, check_sha256=True)
    assert check.ok and check.sha256_checked and check.record.sha256 == _sha(old)
    assert len(server.requests) == 2  # one retry, then give up


# ---------------------------------------------------------------------------------------------- EDM files / offline


def _tiny_teacher(data: bytes):
    """The real catalog entry with the test payload's size (the real file is 223 MB)."""
    return dataclasses.replace(get_edm_teacher("edm-cifar10"), approx_size_bytes=len(data), size_tolerance=0)


def test_ensure_teacher_file_downloads_once_via_mirror(server, cache, monkeypatch):
    entry = _tiny_teacher(PAYLOAD)
    server.put(f"/edm/pretrained/{entry.file_name}", PAYLOAD)
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"{server.base}/edm/")
    path = ensure_teacher_file(entry, timeout_s=5)
    assert path == cache / "edm" / "pretrained" / "edm-cifar10-32x32-uncond-vp.pkl" == teacher_path(entry)
    assert path.read_bytes() == PAYLOAD and len(server.requests) == 1
    assert ensure_teacher_file(entry, timeout_s=5, check_sha256=True) == path
    assert len(server.requests) == 1  # cached: no network


def test_ensure_fid_reference_file_downloads_via_mirror(server, cache, monkeypatch):
    ref = dataclasses.replace(get_fid_reference("cifar10-train"), approx_size_bytes=len(PAYLOAD), size_tolerance=0)
    assert mirrored_url(ref.url) == ref.url  # no mirror set: the official URL
    server.put(f"/edm/fid-refs/{ref.file_name}", PAYLOAD)
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"{server.base}/edm/")
    assert mirrored_url(ref.url) == f"{server.base}/edm/fid-refs/cifar10-32x32.npz"
    path = ensure_fid_reference_file(ref, timeout_s=5)
    assert path == cache / "edm" / "fid-refs" / "cifar10-32x32.npz" == fid_reference_path("cifar10-train")
    assert path.read_bytes() == PAYLOAD and [r["path"] for r in server.requests] == ["/edm/fid-refs/cifar10-32x32.npz"]
    assert ensure_fid_reference_file(ref, timeout_s=5, check_sha256=True) == path and len(server.requests) == 1


def test_offline_never_connects(server, cache, monkeypatch):
    entry = _tiny_teacher(PAYLOAD)
    server.put(f"/edm/pretrained/{entry.file_name}", PAYLOAD)
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"{server.base}/edm/")
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    with pytest.raises(DownloadError, match="is not cached and SIMCLI_OFFLINE is set; place the file by hand at") as err:
        ensure_teacher_file(entry, timeout_s=5)
    dest = teacher_path(entry)
    assert f"{server.base}/edm/pretrained/{entry.file_name}" in err.value.message
    assert str(dest) in err.value.message and "\n" not in err.value.message
    server.put("/x", PAYLOAD)
    with pytest.raises(DownloadError, match=f"{server.base}/x is not cached and SIMCLI_OFFLINE is set"):
        dl.ensure_file(f"{server.base}/x", cache / "x", timeout_s=5)
    assert server.requests == [] and not dest.exists()
    # a file placed by hand is used offline, and gets a 'manual' record
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    assert ensure_teacher_file(entry) == dest
    assert cache_mod.read_record(dest).source == "manual" and cache_mod.read_record(dest).sha256 == _sha(PAYLOAD)
    assert server.requests == []


def test_unreachable_teacher_message_names_url_and_cache_path(cache, monkeypatch):
    entry = get_edm_teacher("edm-imagenet64")
    port = _closed_port()
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"http://127.0.0.1:{port}/edm/")
    with pytest.raises(DownloadError, match=r"cannot download .* \(.*\); place the file by hand at") as err:
        ensure_teacher_file("edm-imagenet64", timeout_s=2)
    msg = err.value.message
    assert f"http://127.0.0.1:{port}/edm/pretrained/{entry.file_name}" in msg
    assert str(cache / "edm" / "pretrained" / entry.file_name) in msg and "\n" not in msg


def test_corrupt_cached_file_is_reported_and_kept_until_redownload_succeeds(server, cache, monkeypatch):
    entry = _tiny_teacher(PAYLOAD)
    dest = teacher_path(entry)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:1000])  # truncated copy
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"http://127.0.0.1:{_closed_port()}/edm/")
    check = cache_mod.verify_cached(dest, expected_size=entry.approx_size_bytes)
    assert not check.ok and "1000 bytes" in check.problem
    with pytest.raises(DownloadError, match="is 1000 bytes, expected about .*; re-downloading failed: cannot download") as err:
        ensure_teacher_file(entry, timeout_s=2)
    assert "1000 bytes" in err.value.message and str(dest) in err.value.message
    assert dest.read_bytes() == PAYLOAD[:1000]  # not silently deleted
    server.put(f"/edm/pretrained/{entry.file_name}", PAYLOAD)
    monkeypatch.setenv("SIMCLI_EDM_MIRROR", f"{server.base}/edm/")
    assert ensure_teacher_file(entry, timeout_s=5).read_bytes() == PAYLOAD


def test_sha256_check_catches_same_size_corruption(server, cache):
    server.put("/f.bin", PAYLOAD)
    dest = dl.ensure_file(f"{server.base}/f.bin", cache / "f.bin", expected_size=len(PAYLOAD), timeout_s=5)
    with open(dest, "r+b") as fh:
        fh.write(b"\x00\x01\x02")
    assert cache_mod.verify_cached(dest, expected_size=len(PAYLOAD)).ok  # size alone cannot tell
    check = cache_mod.verify_cached(dest, expected_size=len(PAYLOAD), check_sha256=True)
    assert not check.ok and check.sha256_checked and "sha256 of cached file" in check.problem
    # ensure_file with check_sha256 replaces it
    dl.ensure_file(f"{server.base}/f.bin", dest, expected_size=len(PAYLOAD), timeout_s=5, check_sha256=True)
    assert dest.read_bytes() == PAYLOAD
    check = cache_mod.verify_cached(dest, check_sha256=True)
    assert check.ok and check.sha256_checked


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "c"))
    assert cache_mod.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SIMCLI_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix":
        assert cache_mod.cache_dir() == tmp_path / "xdg" / "simcli"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_mod.cache_dir().is_absolute()


# ---------------------------------------------------------------------------------------------- catalog


def test_catalog_sanity():
    names = [
        "edm-cifar10",
        "edm-cifar10-cond",
        "edm-cifar10-ve",
        "edm-cifar10-cond-ve",
        "edm-ffhq64",
        "edm-ffhq64-ve",
        "edm-afhqv2-64",
        "edm-afhqv2-64-ve",
        "edm-imagenet64",
    ]
    assert list(EDM_TEACHERS) == names
    entries = list(EDM_TEACHERS.values())
    assert len({e.file_name for e in entries}) == 9 and all(n == e.name for n, e in EDM_TEACHERS.items())
    for e in entries:
        assert e.url == EDM_BASE_URL + e.file_name and e.file_name.startswith("edm-") and e.file_name.endswith(".pkl")
        assert e.approx_size_bytes > 0 and e.size_tolerance == 500_000 and e.num_params > 0
        # float32 weights dominate the pickle: 4 bytes per parameter plus < 1 MB of overhead
        assert 0 < e.approx_size_bytes - 4 * e.num_params < 1_000_000
        assert e.fid_reference in FID_REFERENCES and e.sampler.steps > 0 and e.paper_fid > 0
        assert ("-cond-" in e.file_name) == e.conditional and (e.arch == "ncsnpp") == e.file_name.endswith("-ve.pkl")
        assert get_edm_teacher(e.file_name) is e and get_edm_teacher(e.file_name[:-4]) is e
    assert EDM_TEACHERS["edm-cifar10"].file_name == "edm-cifar10-32x32-uncond-vp.pkl"
    assert EDM_TEACHERS["edm-imagenet64"].label_dim == 1000 and not EDM_TEACHERS["edm-imagenet64"].sampler.deterministic
    assert FID_REFERENCES["cifar10-train"].url == FID_REFS_BASE_URL + "cifar10-32x32.npz"
    assert {"cifar10-train", "ffhq64", "afhqv2-64", "imagenet64"} <= set(FID_REFERENCES)
    assert all(r.url.startswith(FID_REFS_BASE_URL) and r.approx_size_bytes > 0 for r in FID_REFERENCES.values())
    assert get_fid_reference("ffhq-64x64.npz").name == "ffhq64"
    with pytest.raises(UsageError, match="unknown EDM teacher 'edm-cifar100'") as err:
        get_edm_teacher("edm-cifar100")
    assert "edm-cifar10" in err.value.hint
