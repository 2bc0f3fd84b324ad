"""Resume equivalence, interrupted checkpoint writes and the non-finite guard, on tiny CPU runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simcli.distill.loop as loop
import simcli.rundir.snapshots as checkpoint
from simcli.config.resolve import resolve_spec
from simcli.distill.events import NonFiniteStep
from simcli.distill.loop import run_distillation
from simcli.errors import RunFailed
from simcli.rundir.layout import list_generators, list_states
from simcli.rundir.snapshots import load_latest_state
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.records import run_records


def tiny_spec(steps: int, *sets: str):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": steps}}, sets=list(sets))
    return spec


def records(run_dir: Path) -> list[dict]:
    return run_records(run_dir)


@pytest.mark.parametrize("method", ["sim", "sid", "di"])
def test_resumed_run_repeats_the_uninterrupted_run(tmp_path, method):
    extra = (f"loss.method={method}", "network.dropout=0.1", "training.batch_gpu=16")
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_distillation(tiny_spec(30, *extra), straight)
    run_distillation(tiny_spec(10, *extra), split)
    summary = run_distillation(tiny_spec(30, *extra), split)
    assert summary["resumed_from"] is not None and summary["resumed_from"].endswith("state-0000000.320.pt")
    assert records(straight) == records(split)  # same losses at every status step, exactly
    assert len(records(straight)) == 6
    a = load_file(str(list_generators(straight)[-1]))
    b = load_file(str(list_generators(split)[-1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a, _, _ = load_latest_state(straight)
    state_b, _, _ = load_latest_state(split)
    for key in ("generator", "online", "ema"):
        assert all(torch.equal(state_a[key][k], state_b[key][k]) for k in state_a[key])


def test_rerun_of_a_finished_run_changes_nothing(tmp_path):
    run_distillation(tiny_spec(10), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "config.json"}
    summary = run_distillation(tiny_spec(10), tmp_path)
    assert summary["steps"] == 10
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "config.json"} == before


def test_interrupted_state_write_keeps_previous_state_loadable(tmp_path, monkeypatch):
    run_distillation(tiny_spec(10), tmp_path)
    good = list_states(tmp_path)[-1]
    good_bytes = good.read_bytes()

    def crash_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # save_state writes through a Python file object
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        run_distillation(tiny_spec(20), tmp_path)
    monkeypatch.undo()
    assert list_states(tmp_path)[-1] == good and good.read_bytes() == good_bytes
    assert not list(tmp_path.glob(".*.tmp-*"))  # the half-written temp file is gone
    state, path, warnings = load_latest_state(tmp_path)
    assert path == good and state["progress"]["step"] == 10 and warnings == []
    assert run_distillation(tiny_spec(20), tmp_path)["steps"] == 20


def test_killed_write_leftovers_and_a_truncated_state_are_survived(tmp_path):
    run_distillation(tiny_spec(10), tmp_path)
    run_distillation(tiny_spec(20), tmp_path)
    newest, previous = list_states(tmp_path)[-1], list_states(tmp_path)[-2]
    newest.write_bytes(newest.read_bytes()[:100])  # as if a non-atomic copy was cut short
    (tmp_path / ".state-0000000.960.pt.tmp-999").write_bytes(b"junk")  # a writer killed with SIGKILL
    events = []
    summary = run_distillation(tiny_spec(20), tmp_path, events.append)
    started = next(e for e in events if type(e).__name__ == "RunStarted")
    assert started.resumed_from == previous and started.start_step == 10
    assert any("skipped unreadable" in w for w in started.warnings)
    assert summary["steps"] == 20
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_nonfinite_guard_stops_after_k_in_a_row_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    run_distillation(tiny_spec(10), tmp_path)
    kept = {p.name: p.read_bytes() for p in tmp_path.glob("*-*.*")}
    real_update = loop.generator_update
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, _ = real_update(*args, **kwargs)
        return float("nan"), False

    monkeypatch.setattr(loop, "generator_update", poisoned)
    events = []
    with pytest.raises(RunFailed, match="3 iterations in a row"):
        run_distillation(tiny_spec(30, "training.max_nonfinite_steps=3"), tmp_path, events.append)
    assert calls["n"] == 3
    assert [e.consecutive for e in events if isinstance(e, NonFiniteStep)] == [1, 2, 3]
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*-*.*")} == kept


def test_nonfinite_steps_are_skipped_not_applied(tmp_path, monkeypatch):
    """A step with a non-finite gradient leaves the generator's weights unchanged."""
    from simcli.distill import steps

    spec = tiny_spec(1)
    real = steps.sim_generator_loss

    def nan_loss(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(steps, "sim_generator_loss", nan_loss)
    events = []
    run_distillation(spec, tmp_path, events.append)
    assert sum(isinstance(e, NonFiniteStep) for e in events) == 1
    fit = load_file(str(tmp_path / "teacher-fit.safetensors"))
    state, _, _ = load_latest_state(tmp_path)
    assert all(torch.equal(state["generator"][k], fit[k]) for k in fit)


@pytest.fixture()
def threads():
    """torch's CPU thread count, put back after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_a_resume_with_another_thread_count_warns_and_records_the_new_one(tmp_path, threads):
    from simcli.distill.events import RunStarted

    threads(2)
    run_distillation(tiny_spec(10), tmp_path)
    assert load_latest_state(tmp_path)[0]["progress"]["cpu_threads"] == 2
    for count, steps, warned in ((2, 15, False), (1, 20, True), (1, 25, False)):
        threads(count)
        events: list[object] = []
        run_distillation(tiny_spec(steps), tmp_path, events.append)
        started = next(e for e in events if isinstance(e, RunStarted))
        said = [w for w in started.warnings if "CPU threads" in w]
        assert said == (["this run computed with 2 CPU threads until iteration 15, now with 1: its numbers from here "
                         "on differ from those of an uninterrupted run (pass --threads 2 to keep them)"] if warned else [])
    assert load_latest_state(tmp_path)[0]["progress"]["cpu_threads"] == 1
