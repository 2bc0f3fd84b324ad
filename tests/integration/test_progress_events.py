"""Timing-driven progress: heartbeats from the loop (display only, never in metrics.jsonl) and teacher-fit progress
by time as well as by steps, with fake clocks."""

from __future__ import annotations

import pytest
import torch

import simcli.distill.loop as loop
import simcli.distill.reports as reports
from simcli.config.resolve import resolve_spec
from simcli.config.spec import NetworkSpec
from simcli.distill.events import Heartbeat, RunStarted, Status
from simcli.distill.loop import run_distillation
from simcli.distill.teacher_fit import fit_mlp_denoiser, mlp_architecture
from simcli.nets.registry import build_network
from simcli.teachers.gmm import ring
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.records import run_records


def tiny_spec(steps: int, *sets: str):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": steps}}, sets=list(sets))
    return spec


@pytest.fixture
def slow_iterations(monkeypatch):
    """A fake loop clock on which every iteration takes 31 s."""
    now = [0.0]
    monkeypatch.setattr(reports, "_now", lambda: now[0])
    iteration = loop.Distillation.iteration

    def slow(self):
        iteration(self)
        now[0] += 31.0

    monkeypatch.setattr(loop.Distillation, "iteration", slow)
    return now


def records(run_dir) -> list[dict]:
    return run_records(run_dir)


def test_heartbeats_come_after_31_s_without_a_status_and_stay_out_of_metrics(tmp_path, slow_iterations):
    events: list[object] = []
    run_distillation(tiny_spec(10), tmp_path / "slow", events.append)  # batch 32: a status every 5 iterations
    beats = [e for e in events if isinstance(e, Heartbeat)]
    assert [b.step for b in beats] == [1, 2, 3, 4, 6, 7, 8, 9]  # every iteration but the status ones
    assert beats[0] == Heartbeat(step=1, total_steps=10, images_seen=32, elapsed_s=31.0)
    assert [e.record["step"] for e in events if isinstance(e, Status)] == [5, 10]
    # metrics.jsonl holds the status records only, the same as a run without heartbeats
    run_distillation(tiny_spec(10, "logging.heartbeat_every_s=null"), tmp_path / "quiet", events.append)
    assert records(tmp_path / "slow") == records(tmp_path / "quiet")
    assert [r["kind"] for r in records(tmp_path / "slow")] == ["status", "status"]


def test_heartbeats_follow_the_spec_interval_and_resume_reports_the_earlier_wall_time(tmp_path, slow_iterations):
    events: list[object] = []
    run_distillation(tiny_spec(10, "logging.heartbeat_every_s=40"), tmp_path, events.append)
    assert [b.step for b in events if isinstance(b, Heartbeat)] == [2, 4, 7, 9]  # 62 s, 124 s, ... since the last
    events.clear()
    run_distillation(tiny_spec(20, "logging.heartbeat_every_s=40"), tmp_path, events.append)  # a resumable change
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.start_step == 10 and started.elapsed_s == pytest.approx(310.0)  # the first process's 10 x 31 s
    assert next(e for e in events if isinstance(e, Heartbeat)).elapsed_s == pytest.approx(372.0)


def test_teacher_fit_reports_by_time_as_well_as_by_steps():
    def fit(report_every_s):
        ticks = iter(range(10**6))  # one second per clock reading
        torch.manual_seed(0)
        net = build_network(mlp_architecture(2, NetworkSpec(hidden_dim=16, num_layers=2, embedding_dim=8)))
        calls: list[int] = []
        history = fit_mlp_denoiser(ring(), net, steps=20, batch_size=16, lr=1e-3, sigma_min=0.002, sigma_max=80.0, seed=0,
                                   device=torch.device("cpu"), on_progress=lambda step, loss: calls.append(step),
                                   report_every=250, report_every_s=report_every_s, clock=lambda: float(next(ticks)))
        return calls, history

    by_time, history = fit(2.0)
    assert len(by_time) >= 5 and by_time == sorted(by_time) and by_time[-1] == 20
    untimed, untimed_history = fit(None)
    assert untimed == [20] and history == untimed_history  # the returned history does not depend on timing
