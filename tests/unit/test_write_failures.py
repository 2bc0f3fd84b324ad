"""Writers that fail without an OSError (safetensors, torch.save, numpy) still end in one WriteFailed naming the file;
metrics.jsonl appends are fsynced, and a log that lags behind the state is told on resume (issue 16)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import simcli.rundir.atomic as atomic
import simcli.rundir.metrics as metrics
from simcli.errors import RunFailed, WriteFailed
from simcli.rundir.atomic import atomic_write, write_error
from simcli.rundir.layout import METRICS_FILE
from simcli.rundir.metrics import append_record, lag_warning

ENOSPC_TEXT = os.strerror(errno.ENOSPC)


def full_disk(monkeypatch, free_blocks: int = 3) -> None:
    """Make os.statvfs report a filesystem with `free_blocks` blocks of 4 KiB free (a disk that is full)."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, free_blocks, free_blocks, *st[5:]))

    monkeypatch.setattr(atomic.os, "statvfs", statvfs)


def half_then(error: BaseException):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise error

    return write


def torch_zip_failure() -> RuntimeError:
    """What torch.save raises on a full disk (measured on a 512 KiB tmpfs): no errno anywhere in the chain."""
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    exc.__context__ = RuntimeError("basic_ios::clear: iostream error")
    return exc


def _with_context(error: Exception, context: Exception) -> Exception:
    error.__context__ = context
    return error


def _from(cause: OSError) -> RuntimeError:
    exc = RuntimeError("the writer failed")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("error", "disk_full", "want_errno", "want_text"),
    [
        # safetensors 0.8 on a full disk: a SafetensorError, not an OSError, with Rust's "(os error 28)"
        (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), False,
         errno.ENOSPC, ENOSPC_TEXT),
        # torch.save with _use_new_zipfile_serialization=False on a full disk
        (RuntimeError("write(): fd 3 failed with No space left on device"), False, errno.ENOSPC, ENOSPC_TEXT),
        # torch.save's zip writer: nothing names the cause; the filesystem is full
        (torch_zip_failure(), True, errno.ENOSPC, f"{ENOSPC_TEXT} (12,288 bytes free)"),
        # numpy's np.save on a full disk: an OSError without errno
        (OSError("1000000 requested and 65520 written"), True, errno.ENOSPC, f"{ENOSPC_TEXT} (12,288 bytes free)"),
        # any writer whose exception has the OS error behind it
        (_from(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))), False, errno.EDQUOT, os.strerror(errno.EDQUOT)),
    ],
    ids=["safetensors", "torch-legacy", "torch-zip-disk-full", "numpy-disk-full", "chained-quota"],
)
def test_a_refused_write_is_one_write_failed_whatever_the_writer_raised(tmp_path, monkeypatch, error, disk_full,
                                                                        want_errno, want_text):
    target = tmp_path / "shard-00003.safetensors"
    target.write_bytes(b"good")
    if disk_full:
        full_disk(monkeypatch)
    with pytest.raises(WriteFailed) as info:
        atomic_write(target, half_then(error))
    err = info.value
    assert err.message == f"cannot write {target}: {want_text}"
    assert err.errno == want_errno and err.filename == str(target) and err.exit_code == 1 and isinstance(err, RunFailed)
    assert err.__cause__ is error and "\n" not in err.message
    assert target.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_real_safetensors_error_names_the_file(tmp_path):
    """save_file into a directory that is not there: safetensors' own SafetensorError ("... (os error 2)")."""
    target = tmp_path / "gone" / "null.safetensors"
    with pytest.raises(WriteFailed) as info:
        atomic_write(target, lambda p: save_file({"a": torch.zeros(3)}, str(p)))
    assert info.value.message == f"cannot write {target}: {os.strerror(errno.ENOENT)}"
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize("disk_full", [False, True])
@pytest.mark.parametrize(
    "error",
    [TypeError("save_file() got an unexpected keyword argument"), KeyError("tokens"), MemoryError(),
     SafetensorError("You are trying to save a non contiguous tensor"), RuntimeError("killed midway"),
     _with_context(TypeError("a bug in an except block"), FileNotFoundError(errno.ENOENT, "No such file"))],
    ids=["TypeError", "KeyError", "MemoryError", "SafetensorError-not-io", "RuntimeError", "TypeError-in-handler"],
)
def test_programming_errors_are_raised_as_they_were(tmp_path, monkeypatch, error, disk_full):
    """Nothing behind them says the OS refused a write: they stay what they are (a full disk only decides for errors
    that could be write failures: not for TypeError, KeyError, MemoryError)."""
    target = tmp_path / "x.safetensors"
    if disk_full:
        full_disk(monkeypatch)
    could_be_a_write = isinstance(error, (SafetensorError, RuntimeError))
    if disk_full and could_be_a_write:
        with pytest.raises(WriteFailed, match=ENOSPC_TEXT):
            atomic_write(target, half_then(error))
    else:
        with pytest.raises(type(error)) as info:
            atomic_write(target, half_then(error))
        assert info.value is error
    assert list(tmp_path.iterdir()) == []


def test_write_error_reads_the_free_space_of_the_files_filesystem(tmp_path, monkeypatch):
    assert write_error(RuntimeError("unexpected pos 576 vs 534"), tmp_path) is None  # this disk is not full
    full_disk(monkeypatch, free_blocks=0)
    cause = write_error(RuntimeError("unexpected pos 576 vs 534"), tmp_path)
    assert cause.errno == errno.ENOSPC and cause.strerror == f"{ENOSPC_TEXT} (0 bytes free)"


def test_numpy_and_torch_writers_still_work(tmp_path):
    atomic_write(tmp_path / "a.npy", lambda p: np.save(open(p, "wb"), np.arange(3)))
    atomic_write(tmp_path / "b.pt", lambda p: torch.save({"a": torch.arange(3)}, p))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    assert torch.load(tmp_path / "b.pt")["a"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- durable appends


def test_every_append_is_fsynced_and_a_new_log_its_directory_too(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else str(fd))
        real(fd)

    monkeypatch.setattr(metrics.os, "fsync", fsync)
    for step in (5, 10, 15):
        append_record(tmp_path, {"kind": "status", "step": step})
    log, directory = os.path.realpath(tmp_path / METRICS_FILE), os.path.realpath(tmp_path)
    if Path("/proc/self/fd").is_dir():
        assert synced == [log, directory, log, log]
    else:
        assert len(synced) == 4
    assert (tmp_path / METRICS_FILE).read_text().splitlines()[-1] == '{"kind": "status", "step": 15}'


# ---------------------------------------------------------------------------------------------- a log behind its state


def test_a_log_that_lags_behind_the_state_is_named_in_one_line(tmp_path):
    for step in (10, 20):
        append_record(tmp_path, {"kind": "status", "step": step})
    append_record(tmp_path, {"kind": "eval", "step": 30})  # not a status record
    warning = lag_warning(tmp_path, 35, 30)
    assert warning == (f"{METRICS_FILE} ends at iteration 20, but the state at iteration 35 was written after the "
                       "status record of iteration 30: the records in between were lost (not on disk when the process "
                       "or machine stopped) and stay missing; the log goes on from iteration 35")
    assert lag_warning(tmp_path, 35, 20) is None and lag_warning(tmp_path, 24, 20) is None
    assert lag_warning(tmp_path / "new", 7, 0) is None  # no status record was due yet
    assert lag_warning(tmp_path / "new", 30, 30).startswith(f"{METRICS_FILE} has no status record, but the state at "
                                                            "iteration 30")
