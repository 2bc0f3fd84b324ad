"""A metrics.jsonl that lags behind the state a run resumes from (records not on disk when the machine went down) is
told in one line; a resume whose log is whole says nothing (issue 16)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from simcli.distill.events import Heartbeat, RunStarted
from simcli.distill.loop import run_distillation
from simcli.distill.stop import StopRequest
from simcli.errors import Stopped
from simcli.rundir.layout import METRICS_FILE
from tests.integration.test_resume import tiny_spec  # batch 32: a status every 5 iterations, a state every 10

HEARTBEATS = "logging.heartbeat_every_s=1e-9"  # a Heartbeat after every iteration without a status record


def lag_warnings(events: list) -> list[str]:
    (started,) = [e for e in events if isinstance(e, RunStarted)]
    return [w for w in started.warnings if w.startswith(METRICS_FILE) and "lost" in w]


def keep_status_records(run_dir: Path, steps: list[int]) -> None:
    """Leave only the status records of `steps` in metrics.jsonl, as a machine that went down leaves it."""
    path = run_dir / METRICS_FILE
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] in steps]
    path.write_text("".join(line + "\n" for line in lines))


def stopped_at(run_dir: Path, step: int) -> None:
    """Run towards 30 iterations and stop (SIGTERM) after `step`: the state is of iteration `step`."""
    stop = StopRequest()

    def on_event(event) -> None:
        if isinstance(event, Heartbeat) and event.step == step:
            stop.request(signal.SIGTERM)

    with pytest.raises(Stopped):
        run_distillation(tiny_spec(30, HEARTBEATS), run_dir, on_event, stop=stop)


def test_a_log_behind_the_state_is_one_warning_naming_the_iterations(tmp_path):
    run_distillation(tiny_spec(20), tmp_path)
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()] == [5, 10, 15, 20]
    keep_status_records(tmp_path, [5, 10])  # 15 and 20 were lost; the state of iteration 20 was not
    events: list = []
    run_distillation(tiny_spec(30), tmp_path, events.append)
    assert lag_warnings(events) == [
        f"{METRICS_FILE} ends at iteration 10, but the state at iteration 20 was written after the status record of "
        "iteration 20: the records in between were lost (not on disk when the process or machine stopped) and stay "
        "missing; the log goes on from iteration 20"]
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()] == [5, 10, 25, 30]


def test_a_state_between_status_records_is_not_a_lag_but_a_lost_record_before_it_is(tmp_path):
    stopped_at(tmp_path / "whole", 12)  # the state of iteration 12, whose last status record is of iteration 10
    events: list = []
    run_distillation(tiny_spec(20), tmp_path / "whole", events.append)
    assert lag_warnings(events) == []
    stopped_at(tmp_path / "lost", 12)
    keep_status_records(tmp_path / "lost", [5])
    events.clear()
    run_distillation(tiny_spec(20), tmp_path / "lost", events.append)
    (warning,) = lag_warnings(events)
    assert warning.startswith(f"{METRICS_FILE} ends at iteration 5, but the state at iteration 12 was written after "
                              "the status record of iteration 10:")
