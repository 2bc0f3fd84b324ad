"""Signals during `simcli distill` (issue 9): SIGTERM, SIGUSR1 and SIGINT finish the iteration, save and stop with
one line and the signal's exit code; a second Ctrl-C aborts at once; nothing claims a snapshot that does not exist."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

import simcli.distill.loop as loop
from simcli.config.resolve import resolve_spec
from simcli.distill.loop import run_distillation
from simcli.rundir.layout import list_generators
from simcli.rundir.snapshots import load_latest_state
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.records import live_status_records as status_records
from tests.helpers.records import signal_when

REPO = Path(__file__).resolve().parents[2]
TINY = ("--teacher", "gmm-ring8", "--preset", "tiny")


def stopped_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("simcli: ")]
    assert len(lines) == 1 and stderr.splitlines()[-1] == lines[0], stderr
    assert "Traceback" not in stderr and "error" not in lines[0], stderr
    return lines[0]


def test_sigterm_saves_the_iteration_it_arrived_in_and_the_same_command_continues_exactly(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "simcli", "distill", *TINY, "--steps", "200", "--set", "teacher_fit.steps=20", "--out", str(run_dir)]
    env = {**os.environ, "NO_COLOR": "1", "SIMCLI_DEBUG": ""}
    env.pop("SIMCLI_DEBUG")
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
        seen: list[int] = []

        def started() -> bool:
            seen[:] = [r["step"] for r in status_records(run_dir)]
            return bool(seen)

        code = signal_when(proc, started, signal.SIGTERM)
        seen = seen[-1]
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code == 143, stderr
    line = stopped_line(stderr)
    state, path, _ = load_latest_state(run_dir)
    step = state["progress"]["step"]
    assert seen <= step < 200, (seen, step)  # the iteration the signal arrived in, not a snapshot point
    assert line.startswith(f"simcli: stopped by SIGTERM at iteration {step} of 200: saved {path.name} (iteration {step})"), line
    assert line.endswith("run the same command again to resume"), line

    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {path.name} at iteration {step} of 200" in resumed.stderr

    straight = tmp_path / "straight"  # the same spec, uninterrupted
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": 200}},
                           sets=["teacher_fit.steps=20"])
    run_distillation(spec, straight)
    assert json.loads((straight / "config.json").read_text()) == json.loads((run_dir / "config.json").read_text())
    assert status_records(run_dir) == status_records(straight)  # every loss, number for number
    a, b = load_file(str(list_generators(straight)[-1])), load_file(str(list_generators(run_dir)[-1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a, _, _ = load_latest_state(straight)
    final, _, _ = load_latest_state(run_dir)
    for key in ("generator", "online", "ema"):
        assert all(torch.equal(state_a[key][k], final[key][k]) for k in state_a[key])


def _signal_inside_update(monkeypatch, at_call: int, *signals: int) -> None:
    real, calls = loop.generator_update, {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            for s in signals:
                os.kill(os.getpid(), s)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "generator_update", wrapped)


def test_sigusr1_stops_with_the_requeue_code_and_the_handlers_are_restored(cli, tiny_run_copy, monkeypatch):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    _signal_inside_update(monkeypatch, 3, signal.SIGUSR1)  # iterations 20, 21, 22: stops after 23
    result = cli("distill", *TINY, "--out", tiny_run_copy, "--steps", 40)
    assert result.exit_code == 138, result.output
    line = stopped_line(result.stderr)
    assert line.startswith("simcli: stopped by SIGUSR1 at iteration 23 of 40: saved state-0000000.736.pt (iteration 23)"), line
    assert {s: signal.getsignal(s) for s in before} == before


ACK = ("simcli: Ctrl-C: stopping after this iteration and saving; "
       "press Ctrl-C again to quit at once without saving")


def test_a_second_ctrl_c_aborts_at_once_and_names_the_snapshot_kept(cli, tiny_run_copy, monkeypatch):
    _signal_inside_update(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    result = cli("distill", *TINY, "--out", tiny_run_copy, "--steps", 40)
    assert result.exit_code == 130, result.output
    line = stopped_line(result.stderr.replace(ACK + "\n", ""))
    assert line == ("simcli: interrupted; the last snapshot, state-0000000.640.pt (iteration 20), is kept; "
                    "run the same command again to resume"), line
    assert load_latest_state(tiny_run_copy)[0]["progress"]["step"] == 20


def test_a_first_ctrl_c_is_acknowledged_at_once_while_the_iteration_runs(cli, tiny_run_copy, monkeypatch):
    """The acknowledgement comes while the iteration is still running (here: held for up to 5 s until it is seen),
    not when it ends; then the run saves that iteration and stops as before."""
    real, calls, seen = loop.generator_update, {"n": 0}, {}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 22 of the resumed run
            os.kill(os.getpid(), signal.SIGINT)
            start = time.monotonic()
            while time.monotonic() - start < 5 and ACK not in sys.stderr.buffer.getvalue().decode():
                time.sleep(0.01)
            seen["after_s"] = time.monotonic() - start if ACK in sys.stderr.buffer.getvalue().decode() else None
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "generator_update", wrapped)
    result = cli("distill", *TINY, "--out", tiny_run_copy, "--steps", 40)
    assert seen["after_s"] is not None and seen["after_s"] < 1.0, (seen, result.stderr)
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("simcli: ")]
    assert lines == [ACK, "simcli: stopped by SIGINT at iteration 23 of 40: saved state-0000000.736.pt (iteration 23) "
                          f"and generator-0000000.736.safetensors in {tiny_run_copy}; run the same command again to resume"], lines


def test_the_acknowledgement_is_printed_once_by_rank_0_only(monkeypatch, capsys):
    from simcli.distill.stop import StopRequest, announce_on_stderr

    said: list[str] = []
    stop = StopRequest(announce=said.append)
    stop.handle(signal.SIGINT)
    deadline = time.monotonic() + 5
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    assert said == [ACK] and stop.exit_code == 130
    try:
        stop.handle(signal.SIGINT)  # the second one quits at once
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
    other = StopRequest(announce=said.append)
    other.handle(signal.SIGTERM)  # a SIGTERM says nothing until the run stops (cluster logs stay one line)
    time.sleep(0.2)
    assert said == [ACK] and other.exit_code == 143
    monkeypatch.setenv("RANK", "1")
    announce_on_stderr("from rank 1")
    monkeypatch.setenv("RANK", "0")
    announce_on_stderr("from rank 0")
    assert capsys.readouterr().err == "from rank 0\n"


def test_ctrl_c_before_any_snapshot_does_not_claim_one(cli, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        (tmp_path / "run").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_distillation", interrupted)
    result = cli("distill", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 130, result.output
    line = stopped_line(result.stderr)
    assert line == "simcli: interrupted; no snapshot was written yet; run the same command again to start", line


def test_under_torchrun_the_copy_of_a_ctrl_c_that_torchrun_passes_on_does_not_quit(monkeypatch):
    """A terminal's Ctrl-C reaches every worker, and torchrun passes it on to them again a moment later: that copy is
    not a second Ctrl-C (the run still saves); a real second Ctrl-C, later, quits at once."""
    from simcli.distill.stop import TORCHRUN_DUPLICATE_S, StopRequest

    monkeypatch.setenv("WORLD_SIZE", "2")
    stop = StopRequest(announce=lambda text: None)
    stop.handle(signal.SIGINT)
    stop.handle(signal.SIGINT)  # torchrun's copy
    assert stop.requested and stop.exit_code == 130
    time.sleep(TORCHRUN_DUPLICATE_S + 0.05)
    try:
        stop.handle(signal.SIGINT)
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: no copies, a second Ctrl-C quits at once
    alone = StopRequest(announce=lambda text: None)
    alone.handle(signal.SIGINT)
    try:
        alone.handle(signal.SIGINT)
        raise AssertionError("no KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
