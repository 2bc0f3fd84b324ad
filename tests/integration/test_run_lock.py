"""The run-directory lock (simcli.rundir.lock) against real second processes, and its use by the distillation."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simcli.config.resolve import resolve_spec
from simcli.distill.events import RunStarted
from simcli.distill.loop import Distillation, run_distillation
from simcli.errors import UsageError
from simcli.rundir.layout import LOCK_FILE
from simcli.rundir.lock import RunDirLock, read_holder
from simcli.teachers.registry import describe_teacher_name

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fcntl.flock is POSIX")

HOLDER = """
import sys, time
from simcli.rundir.lock import RunDirLock
lock = RunDirLock(sys.argv[1])
print("locked", flush=True)
time.sleep(300)
"""


@pytest.fixture
def holder():
    """Start a real second process that takes the lock on a directory and keeps it; killed at the end."""
    procs = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked", "the holder process did not take the lock"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def tiny_spec(steps: int):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": steps}})
    return spec


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path, holder):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    recorded = read_holder(run_dir)
    assert recorded["pid"] == proc.pid and recorded["host"] == socket.gethostname()
    with pytest.raises(UsageError, match=f"PID {proc.pid} on host ") as info:
        RunDirLock(run_dir)
    message = info.value.message
    assert f"PID {proc.pid}" in message and f"host {socket.gethostname()}" in message and str(run_dir) in message
    assert "\n" not in message and info.value.exit_code == 2
    assert read_holder(run_dir)["pid"] == proc.pid  # the refused attempt did not touch the holder's record


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_lock_is_free_again_when_the_holder_dies(tmp_path, holder, how):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    os.kill(proc.pid, how)
    proc.wait(timeout=30)
    assert (run_dir / LOCK_FILE).exists()  # a killed holder cannot remove its file; the stale file blocks nothing
    with RunDirLock(run_dir) as lock:
        assert lock.held and read_holder(run_dir)["pid"] == os.getpid()
    assert not (run_dir / LOCK_FILE).exists()  # a clean release removes the file
    RunDirLock(run_dir).release()


def test_release_is_idempotent_and_the_same_process_is_refused_too(tmp_path):
    lock = RunDirLock(tmp_path)
    with pytest.raises(UsageError, match=f"PID {os.getpid()}"):
        RunDirLock(tmp_path)
    lock.release()
    lock.release()
    assert not lock.held
    RunDirLock(tmp_path).release()


def test_an_unwritable_place_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write to run directory"):
        RunDirLock(blocker / "run")


def test_a_distillation_holds_the_lock_for_its_whole_run(tmp_path):
    run_dir = tmp_path / "run"
    refused = []

    def on_event(event):
        if isinstance(event, RunStarted):
            with pytest.raises(UsageError, match=f"PID {os.getpid()} on host ") as info:
                RunDirLock(run_dir)
            refused.append(info.value.message)

    run_distillation(tiny_spec(3), run_dir, on_event)
    assert len(refused) == 1 and f"PID {os.getpid()}" in refused[0]
    assert not (run_dir / LOCK_FILE).exists()
    RunDirLock(run_dir).release()  # released at the end of the run


def test_a_distillation_refused_by_the_lock_writes_nothing(tmp_path, holder):
    run_dir = tmp_path / "run"
    proc = holder(run_dir)
    with pytest.raises(UsageError, match=f"PID {proc.pid}"):
        Distillation(tiny_spec(3), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


def test_a_failed_set_up_releases_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    run_distillation(tiny_spec(2), run_dir)
    changed, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", sets=["seed=5"])
    with pytest.raises(UsageError, match="different spec"):
        Distillation(changed, run_dir)
    with Distillation(tiny_spec(2), run_dir) as d:  # the lock was given back
        assert d.done
    assert not (run_dir / LOCK_FILE).exists()


def test_the_console_script_is_refused_while_a_run_holds_the_directory(tmp_path):
    run_dir = tmp_path / "run"
    simcli = Path(sys.executable).parent / "simcli"
    env = {k: v for k, v in os.environ.items() if k != "SIMCLI_DEBUG"}
    with RunDirLock(run_dir):
        proc = subprocess.run([str(simcli), "distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", str(run_dir)],
                              capture_output=True, text=True, timeout=120, env={**env, "NO_COLOR": "1", "COLUMNS": "200"})
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error: "), proc.stderr
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in lines[0]
