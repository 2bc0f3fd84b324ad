"""Stopping on a signal, and non-finite streaks (issue 9): what is saved, what is kept, and how a rerun goes on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simcli.distill.loop as loop
from simcli.compare.runs import compare_runs
from simcli.config.resolve import resolve_spec
from simcli.distill.events import TeacherFitProgress
from simcli.distill.loop import run_distillation
from simcli.distill.stop import StopRequest
from simcli.errors import RunFailed, Stopped
from simcli.rundir.layout import list_generators, list_states
from simcli.rundir.snapshots import load_latest_state
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.records import run_records


def tiny_spec(steps: int, *sets: str):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": steps}}, sets=list(sets))
    return spec


def records(run_dir: Path, kind: str = "status") -> list[dict]:
    return run_records(run_dir, kind)


def generator_update_calling(monkeypatch, at_call: int, action) -> None:
    """Run `action()` inside the at_call-th generator update (1-based) of the process, as a signal would arrive."""
    real, calls = loop.generator_update, {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "generator_update", wrapped)


def poison_from(monkeypatch, first_call: int) -> dict:
    """Generator updates from the first_call-th on report a non-finite loss (the update is skipped)."""
    real, calls = loop.generator_update, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, ok = real(*args, **kwargs)
        return (float("nan"), False) if calls["n"] >= first_call else (loss, ok)

    monkeypatch.setattr(loop, "generator_update", poisoned)
    return calls


# ---------------------------------------------------------------------------------------------- stop requests


def test_stop_request_finishes_the_iteration_saves_and_the_rerun_continues_exactly(tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_distillation(tiny_spec(30), straight)
    stop = StopRequest()
    generator_update_calling(monkeypatch, 13, lambda: stop.request(signal.SIGTERM))  # during iteration 13
    with pytest.raises(Stopped) as err:
        run_distillation(tiny_spec(30), stopped, stop=stop)
    monkeypatch.undo()
    assert err.value.exit_code == 143
    message = err.value.message
    assert message.startswith("stopped by SIGTERM at iteration 13 of 30: saved state-0000000.416.pt (iteration 13)"), message
    assert "generator-0000000.416.safetensors" in message and message.endswith("run the same command again to resume")
    assert "\n" not in message
    state, path, _ = load_latest_state(stopped)
    assert path.name == "state-0000000.416.pt" and state["progress"]["step"] == 13
    summary = run_distillation(tiny_spec(30), stopped)
    assert summary["steps"] == 30 and summary["resumed_from"].endswith("state-0000000.416.pt")
    assert records(straight) == records(stopped)  # the loss window saved at iteration 13 carries over exactly
    a, b = load_file(str(list_generators(straight)[-1])), load_file(str(list_generators(stopped)[-1]))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_during_the_teacher_fit_stops_after_the_fit_is_saved_and_claims_no_snapshot(tmp_path):
    stop = StopRequest()

    def on_event(event):
        if isinstance(event, TeacherFitProgress):
            stop.request(signal.SIGINT)

    with pytest.raises(Stopped) as err:
        run_distillation(tiny_spec(20), tmp_path, on_event, stop=stop)
    assert err.value.exit_code == 130
    assert "before its first iteration" in err.value.message and "no state was written yet" in err.value.message
    assert "teacher-fit.safetensors" in err.value.message and err.value.message.endswith("run the same command again to start")
    assert (tmp_path / "teacher-fit.safetensors").is_file() and not list_states(tmp_path) and not list_generators(tmp_path)
    fits = []
    assert run_distillation(tiny_spec(20), tmp_path, fits.append)["steps"] == 20
    assert not any(isinstance(e, TeacherFitProgress) for e in fits)  # the saved fit was used, not refitted


def test_a_stop_requested_before_the_set_up_touches_nothing(tmp_path):
    run_distillation(tiny_spec(10), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    stop = StopRequest()
    stop.request(signal.SIGUSR1)  # e.g. during the teacher's download
    with pytest.raises(Stopped) as err:
        run_distillation(tiny_spec(20), tmp_path, stop=stop)
    assert err.value.exit_code == 138
    assert "before the run started; nothing was written" in err.value.message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_second_sigint_aborts_at_once_and_other_repeats_are_ignored():
    stop = StopRequest()
    stop.handle(signal.SIGTERM)
    stop.handle(signal.SIGUSR1)
    assert stop.exit_code == 143 and stop.name == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT)
    first_ctrl_c = StopRequest()
    first_ctrl_c.handle(signal.SIGINT)
    assert first_ctrl_c.exit_code == 130
    with pytest.raises(KeyboardInterrupt):
        first_ctrl_c.handle(signal.SIGINT)


# ---------------------------------------------------------------------------------------------- non-finite streaks


def test_a_streak_across_a_snapshot_point_leaves_the_state_from_before_it(tmp_path, monkeypatch):
    run_distillation(tiny_spec(10), tmp_path)  # state at iteration 10
    poison_from(monkeypatch, 8)  # iterations 17.. (the 8th update of this process) are non-finite
    with pytest.raises(RunFailed) as err:
        run_distillation(tiny_spec(40, "training.max_nonfinite_steps=6"), tmp_path)
    # the streak crossed the snapshot point at iteration 20: no state was written during it
    assert [p.name for p in list_states(tmp_path)] == ["state-0000000.320.pt"]
    assert "iterations 17 to 22" in err.value.message and "state-0000000.320.pt (iteration 10), is kept" in err.value.message


def test_states_written_during_a_streak_are_removed_when_it_reaches_the_limit(tmp_path, monkeypatch):
    run_distillation(tiny_spec(10), tmp_path)
    poison_from(monkeypatch, 8)
    run_distillation(tiny_spec(20, "training.max_nonfinite_steps=100"), tmp_path)  # ends inside a streak (17..19)
    assert [p.name for p in list_states(tmp_path)] == ["state-0000000.320.pt", "state-0000000.640.pt"]
    monkeypatch.undo()
    poison_from(monkeypatch, 1)  # the rerun goes on failing: 3 more in a row reach the limit of 6
    with pytest.raises(RunFailed) as err:
        run_distillation(tiny_spec(40, "training.max_nonfinite_steps=6"), tmp_path)
    monkeypatch.undo()
    assert "iterations 17 to 22" in err.value.message and "removed state-0000000.640.pt" in err.value.message
    assert [p.name for p in list_states(tmp_path)] == ["state-0000000.320.pt"]
    assert not (tmp_path / "generator-0000000.640.safetensors").exists()
    # the user lowers the learning rates on the same directory: it resumes from iteration 10 with them
    lower = ("generator.optimizer.lr=0.0005", "online.optimizer.lr=0.0002")
    events = []
    summary = run_distillation(tiny_spec(40, *lower), tmp_path, events.append)
    assert summary["steps"] == 40 and summary["resumed_from"].endswith("state-0000000.320.pt")
    started = next(e for e in events if type(e).__name__ == "RunStarted")
    assert any("generator.optimizer.lr 0.001 -> 0.0005" in w for w in started.warnings), started.warnings
    change = records(tmp_path, "spec_change")
    assert change == [{"kind": "spec_change", "step": 10, "images_seen": 320, "kimg": 0.32, "changes": {
        "generator.optimizer.lr": {"old": 0.001, "new": 0.0005}, "online.optimizer.lr": {"old": 0.001, "new": 0.0002}}}]
    state, _, _ = load_latest_state(tmp_path)
    assert [g["lr"] for g in state["opt_generator"]["param_groups"]] == [0.0005]
    assert [g["lr"] for g in state["opt_online"]["param_groups"]] == [0.0002]


def test_an_interval_without_a_finite_iteration_logs_null_losses_and_its_count(tmp_path, monkeypatch):
    poison_from(monkeypatch, 8)  # iterations 7..9 of 10: the interval 5..10 has 2 finite and 3 non-finite
    run_distillation(tiny_spec(15, "training.max_nonfinite_steps=100"), tmp_path)
    status = records(tmp_path)
    assert [(r["step"], r["nonfinite_in_interval"]) for r in status] == [(5, 0), (10, 3), (15, 5)]
    assert isinstance(status[1]["loss_generator"], float) and status[1]["nonfinite_total"] == 3
    assert status[2]["loss_online"] is None and status[2]["loss_generator"] is None  # not 0
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()  # valid JSON: null
    _, summaries = compare_runs([tmp_path])  # simcli compare reads it
    assert summaries[0]["status_records"] == 3

