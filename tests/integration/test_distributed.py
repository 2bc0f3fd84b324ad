"""Runs shared out over processes (gloo on the CPU) against the same runs in one process.

The same global batch and micro-batch give the same run for any number of processes: the same losses, the same
weights, the same evaluation; a run started with 2 processes resumes with 1. Each process is started the way
torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins with simcli.world.join_world.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simcli.config.resolve import resolve_spec
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.processes import assert_same_losses, assert_same_weights, free_port, records, run_processes
from tests.helpers.records import run_records
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm


def edm_spec(teacher: Path, steps: int, *sets: str):
    return tiny_edm_spec(teacher, steps, *sets, snapshot_every_kimg=0.04)


def gmm_spec(steps: int, *sets: str):
    spec, _ = resolve_spec(
        "gmm-ring8", describe_teacher_name, preset="tiny",
        flags={"training": {"duration_steps": steps, "batch_size": 64, "batch_gpu": 16}},
        sets=["logging.status_every_kimg=0.064", "logging.eval_every_kimg=0.32", "evaluation.num_samples=500",
              "evaluation.batch_size=100", "teacher_fit.steps=50", *sets],
    )
    return spec


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny.pkl")


def test_two_processes_give_the_one_process_run(tmp_path, teacher):
    spec = edm_spec(teacher, 10)
    run_processes(1, spec, tmp_path / "one")
    run_processes(2, spec, tmp_path / "two")
    assert_same_losses(tmp_path / "one", tmp_path / "two", 10)
    assert_same_weights(tmp_path / "one", tmp_path / "two", "generator-0000000.080.safetensors")
    one = torch.load(tmp_path / "one" / "state-0000000.080.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "state-0000000.080.pt", weights_only=True)
    for net in ("generator", "online", "ema"):
        for key, value in one[net].items():
            torch.testing.assert_close(value, two[net][key], rtol=1e-5, atol=1e-6, msg=f"{net}.{key}")
    assert one["progress"]["micro_batch"] == two["progress"]["micro_batch"] == 4
    # Only rank 0 wrote: one metrics record per iteration, not two.
    assert len(records(tmp_path / "two", "status")) == 10


def test_a_run_started_with_two_processes_resumes_with_one(tmp_path, teacher):
    run_processes(1, edm_spec(teacher, 10), tmp_path / "straight")
    run_processes(2, edm_spec(teacher, 5), tmp_path / "resumed")
    run_processes(1, edm_spec(teacher, 10), tmp_path / "resumed")
    assert_same_losses(tmp_path / "straight", tmp_path / "resumed", 10)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed", "generator-0000000.080.safetensors")


def test_evaluation_is_shared_out_and_gives_the_one_process_values(tmp_path):
    spec = gmm_spec(10)
    run_processes(1, spec, tmp_path / "one", evaluate=True)
    run_processes(2, spec, tmp_path / "two", evaluate=True)
    ea, eb = records(tmp_path / "one", "eval"), records(tmp_path / "two", "eval")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [5, 10]
    for x, y in zip(ea, eb, strict=True):
        assert x["n"] == y["n"] == 500
        for key in ("mmd", "sw2", "precision", "mode_weight_l1"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), key


def test_micro_batches_the_processes_cannot_share_are_refused(tmp_path, teacher):
    from simcli.distill.batches import resolve_micro_batch
    from simcli.errors import UsageError

    assert resolve_micro_batch(8, 4, 2, None) == (4, [])
    assert resolve_micro_batch(8, None, 2, None) == (4, [])
    assert resolve_micro_batch(8, None, 1, 4) == (4, [])  # a 2-process run resumed by 1 keeps its micro-batch
    micro, warnings = resolve_micro_batch(8, None, 4, 8)  # one micro-batch of 8 cannot be shared by 4
    assert micro == 2 and "--batch-gpu 8" in warnings[0]
    with pytest.raises(UsageError, match="2 micro-batches cannot be shared by 4 processes"):
        resolve_micro_batch(8, 4, 4, None)
    with pytest.raises(UsageError, match="cannot be shared by 3 processes"):
        resolve_micro_batch(8, None, 3, None)


def test_torchrun_launches_one_run_that_rank_0_reports(tmp_path, teacher):
    """The command line under torchrun: one JSON document, one metrics log, the run shared by 2 processes."""
    import subprocess
    import sys

    def distill(out: Path, *launcher: str) -> subprocess.CompletedProcess:
        args = ["-m", "simcli", "distill", "--teacher", str(teacher), "--out", str(out), "--steps", "4",
                "--batch-size", "8", "--batch-gpu", "4", "--device", "cpu", "--preset", "tiny", "--json",
                "--set", "logging.status_every_kimg=0.008", "--set", "logging.grid_samples=0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, timeout=300)

    two = distill(tmp_path / "two", "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)  # one document: rank 1 prints nothing
    assert summary["processes"] == 2 and summary["micro_batch"] == 4 and summary["steps"] == 4
    assert two.stderr.count("starting at iteration 0") == 1
    assert [r["processes"] for r in records(tmp_path / "two", "status")] == [2] * 4
    one = distill(tmp_path / "one")
    assert one.returncode == 0, one.stderr
    assert_same_losses(tmp_path / "one", tmp_path / "two", 4)


# ------------------------------------------------------------------ processes that stop answering (issue 16, item 7)
#
# torchrun with 2 processes on the gmm-ring8 tiny run (300 iterations, a status record every iteration, one snapshot
# at the end): after iteration 30 rank 1 is killed, or stopped (SIGSTOP), or stopped and then torchrun gets a
# SIGTERM (as from SLURM). Rank 0 ends with one line naming rank 1 and saves the last finished iteration; the same
# command resumes it and ends with the weights and records of a run that was never interrupted.

LOST_STEPS = 300
LOST_TIMEOUT_MIN = 0.2  # 12 s


def _lost_rank_command(out: Path, *sets: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
            "-m", "simcli", "distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", str(out),
            "--steps", str(LOST_STEPS), "--batch-size", "32", "--batch-gpu", "16", "--device", "cpu",
            "--set", "teacher_fit.steps=20", "--set", "logging.status_every_kimg=0.032",
            "--set", "logging.snapshot_every_kimg=1000", "--set", f"training.collective_timeout_min={LOST_TIMEOUT_MIN}",
            *(arg for s in sets for arg in ("--set", s))]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}


def _last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    steps = [0]
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line).get("step", 0))
        except json.JSONDecodeError:  # being written
            pass
    return max(steps)


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of this rank (its child with RANK=rank in its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != parent:
                continue
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except (OSError, IndexError, ValueError):
            continue
        if env.get(b"RANK") == str(rank).encode():
            return int(entry.name)
    return None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _interrupt(out: Path, tmp_path: Path, action: str, at_step: int = 30, *sets: str) -> tuple[float, str]:
    """Run the torchrun command and, once rank 0 recorded iteration at_step (or, for 'fit+sigterm', once the teacher
    fit reported progress), act: 'kill' (SIGKILL rank 1), 'stop' (SIGSTOP it), 'stop+sigterm' (then SIGTERM to
    torchrun) or 'fit+sigterm' (SIGTERM to torchrun). Returns the seconds from the action that ends the wait (the
    SIGTERM when there is one) to rank 0's exit, and torchrun's stderr."""
    import signal
    import subprocess
    import time

    err_path = tmp_path / f"{action}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_lost_rank_command(out, *sets), stdout=subprocess.DEVNULL, stderr=err, env=_env())
        rank1 = None
        try:
            deadline = time.monotonic() + 240
            if action == "fit+sigterm":
                while "fitting the network" not in err_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
            else:
                while _last_step(out) < at_step and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
            assert proc.poll() is None, err_path.read_text()
            rank0, rank1 = _worker_pid(proc.pid, 0), _worker_pid(proc.pid, 1)
            assert rank0 and rank1
            if action != "fit+sigterm":
                os.kill(rank1, signal.SIGKILL if action == "kill" else signal.SIGSTOP)
            start = time.monotonic()
            if action in ("stop+sigterm", "fit+sigterm"):
                time.sleep(1.0 if action == "stop+sigterm" else 0.0)
                os.kill(proc.pid, signal.SIGTERM)
                start = time.monotonic()
            while _running(rank0) and time.monotonic() - start < 120:
                time.sleep(0.02)
            seconds = time.monotonic() - start
        finally:
            if rank1 is not None and _running(rank1):  # still stopped: torchrun would wait 30 s before killing it
                os.kill(rank1, signal.SIGKILL)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return seconds, err_path.read_text()


def _simcli_lines(stderr: str) -> list[str]:
    assert "internal error" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("simcli: ")]


def _resume_and_compare(out: Path, straight: Path, state: str, step: int, *sets: str) -> None:
    import subprocess

    resumed = subprocess.run(_lost_rank_command(out, *sets), capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {state} at iteration {step} of {LOST_STEPS}" in resumed.stderr, resumed.stderr
    assert run_records(out, "status") == run_records(straight, "status")
    name = f"state-{LOST_STEPS * 32 / 1000:011.3f}.pt"
    a, b = torch.load(straight / name, weights_only=True), torch.load(out / name, weights_only=True)
    for net in ("generator", "online", "ema"):
        assert a[net].keys() == b[net].keys() and all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    for opt in ("opt_generator", "opt_online"):
        for index, values in a[opt]["state"].items():
            assert all(torch.equal(v, b[opt]["state"][index][k]) for k, v in values.items()), opt


@pytest.fixture(scope="module")
def straight_two_process_run(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run(_lost_rank_command(out), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_torchrun_a_killed_rank_is_named_by_rank_0_and_the_rerun_resumes_exactly(tmp_path, straight_two_process_run):
    import re

    from simcli.peers import OBSERVE_S

    out = tmp_path / "run"
    seconds, stderr = _interrupt(out, tmp_path, "kill")
    (line,) = _simcli_lines(stderr)
    match = re.fullmatch(r"simcli: error: rank 1 stopped answering \(killed or hung\): its connection closed, "
                         rf"(during iteration \d+|after iteration \d+) of {LOST_STEPS}; saved (state-[\d.]+\.pt), the last "
                         r"finished iteration \((\d+)\); run the same command again to resume from \2", line)
    assert match, line
    assert seconds < OBSERVE_S + 10, (seconds, stderr)
    state, step = match.group(2), int(match.group(3))
    assert step >= 30 and (out / state).is_file()
    _resume_and_compare(out, straight_two_process_run, state, step)


@pytest.mark.slow
def test_torchrun_a_stopped_rank_is_named_after_the_collective_timeout_and_the_rerun_resumes_exactly(
        tmp_path, straight_two_process_run):
    import re

    out = tmp_path / "run"
    seconds, stderr = _interrupt(out, tmp_path, "stop")
    (line,) = _simcli_lines(stderr)
    match = re.fullmatch(r"simcli: error: rank 1 stopped answering \(killed or hung\): no sign of life for 12 s "
                         rf"\(training.collective_timeout_min 0.2\), (during|after) iteration \d+ of {LOST_STEPS}; saved "
                         r"(state-[\d.]+\.pt), the last finished iteration \((\d+)\); run the same command again to resume "
                         r"from \2", line)
    assert match, line
    assert LOST_TIMEOUT_MIN * 60 <= seconds < LOST_TIMEOUT_MIN * 60 + 8, (seconds, stderr)
    state, step = match.group(2), int(match.group(3))
    assert step >= 30
    _resume_and_compare(out, straight_two_process_run, state, step)


@pytest.mark.slow
def test_torchrun_a_sigterm_while_a_rank_is_stopped_saves_the_last_finished_iteration(tmp_path, straight_two_process_run):
    import re

    from simcli.peers import STOP_SILENCE_S

    out = tmp_path / "run"
    seconds, stderr = _interrupt(out, tmp_path, "stop+sigterm")
    (line,) = _simcli_lines(stderr)
    match = re.fullmatch(rf"simcli: stopped by SIGTERM at iteration (\d+) of {LOST_STEPS} \(rank 1 stopped answering "
                         r"\(killed or hung\): no sign of life for \d+ s\): saved (state-[\d.]+\.pt) \(iteration \1\) and "
                         rf"generator-[\d.]+\.safetensors in {re.escape(str(out))}; run the same command again to resume", line)
    assert match, line
    assert seconds < STOP_SILENCE_S + 8, (seconds, stderr)  # torchrun kills its workers 30 s after its SIGTERM
    step, state = int(match.group(1)), match.group(2)
    assert step >= 30
    _resume_and_compare(out, straight_two_process_run, state, step)


@pytest.mark.slow
def test_torchrun_a_sigterm_during_the_teacher_fit_saves_the_fit_and_the_rerun_goes_on(tmp_path):
    """Rank 0 fits the network to the mixture while rank 1 waits: a SIGTERM saves the fit's progress within a step
    (not after the fit: torchrun kills its workers 30 s after passing the signal on), and the rerun goes on from it
    to the network and run of a fit that was never stopped."""
    import re
    import subprocess

    fit = ("teacher_fit.steps=4000",)
    straight = tmp_path / "straight"
    done = subprocess.run(_lost_rank_command(straight, *fit), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "run"
    seconds, stderr = _interrupt(out, tmp_path, "fit+sigterm", 0, *fit)
    (line,) = _simcli_lines(stderr)
    match = re.fullmatch(r"simcli: stopped by SIGTERM during the teacher fit, at step (\d+) of 4000: saved its progress in "
                         rf"{re.escape(str(out))}/\.teacher-fit\.partial\.pt; run the same command again to go on with the fit",
                         line)
    assert match, line
    assert 0 < int(match.group(1)) < 4000 and seconds < 5, (seconds, stderr)
    assert not (out / "teacher-fit.safetensors").exists()
    resumed = subprocess.run(_lost_rank_command(out, *fit), capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"fitting the network to the analytic teacher: step {match.group(1)}/4000" in resumed.stderr
    assert not (out / ".teacher-fit.partial.pt").exists()
    a, b = load_file(straight / "teacher-fit.safetensors"), load_file(out / "teacher-fit.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    name = f"generator-{LOST_STEPS * 32 / 1000:011.3f}.safetensors"
    a, b = load_file(straight / name), load_file(out / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
