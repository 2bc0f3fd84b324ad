"""Precision, memory layout and the generator-step samples in whole runs: they run, resume exactly, and do
what they say (one generator forward fewer; the same numbers in another memory layout)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import simcli.distill.loop as loop
from simcli.distill.loop import run_distillation
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny.pkl")


def spec_for(teacher: Path, steps: int, *sets: str):
    return tiny_edm_spec(teacher, steps, *sets, snapshot_every_kimg=0.024)


def losses(run_dir: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss_online"], r["loss_generator"]) for r in rows if r["kind"] == "status"]


def status(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "status"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_runs_resume_exactly_and_stay_near_fp32(tmp_path, teacher, precision):
    sets = (f"training.precision={precision}",)
    run_distillation(spec_for(teacher, 6, *sets), tmp_path / "straight")
    run_distillation(spec_for(teacher, 3, *sets), tmp_path / "resumed")
    run_distillation(spec_for(teacher, 6, *sets), tmp_path / "resumed")
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")  # the loss scaler's state is resumed too
    run_distillation(spec_for(teacher, 6), tmp_path / "fp32")
    low, full = losses(tmp_path / "straight"), losses(tmp_path / "fp32")
    assert low[0][0] == pytest.approx(full[0][0], rel=0.02)  # the first online loss: rounding only
    # afterwards the runs drift apart (different rounding, different updates), but not far
    assert sum(o for o, _ in low) == pytest.approx(sum(o for o, _ in full), rel=0.15)
    records = status(tmp_path / "straight")
    assert all(r["nonfinite_in_interval"] == 0 for r in records)
    if precision == "fp16":
        assert records[-1]["loss_scale_generator"] > 0 and "loss_scale_overflows_online" in records[-1]
        state = torch.load(sorted((tmp_path / "straight").glob("state-*.pt"))[-1], weights_only=True)
        assert state["progress"]["loss_scalers"]["generator"]["enabled"] is True
    else:
        assert "loss_scale_generator" not in records[-1]


def test_channels_last_gives_the_same_run_without_dropout(tmp_path):
    """The same numbers up to rounding. (With dropout the masks differ: torch draws them in memory order.)"""
    teacher = write_tiny_edm(tmp_path / "no-dropout.pkl", dropout=0.0)
    run_distillation(spec_for(teacher, 4), tmp_path / "default")
    run_distillation(spec_for(teacher, 4, "training.channels_last=true"), tmp_path / "channels-last")
    for a, b in zip(losses(tmp_path / "default"), losses(tmp_path / "channels-last"), strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-5)


def count_generator_forwards(monkeypatch) -> dict:
    """Count forward passes of the generator network (the one the generator optimiser trains)."""
    counts = {"n": 0}
    real_set_up = loop.Distillation._set_up

    def set_up(self, *args, **kwargs):
        real_set_up(self, *args, **kwargs)
        self.nets.generator.register_forward_hook(lambda *a: counts.__setitem__("n", counts["n"] + 1))

    monkeypatch.setattr(loop.Distillation, "_set_up", set_up)
    return counts


def test_generator_step_samples_save_one_generator_forward_and_feed_the_online_update(tmp_path, teacher, monkeypatch):
    counts = count_generator_forwards(monkeypatch)
    run_distillation(spec_for(teacher, 3), tmp_path / "fresh")
    fresh = counts["n"]
    counts["n"] = 0
    targets, made = [], []
    real_online, real_generator = loop.online_update, loop.generator_update

    def online_spy(*args, **kwargs):
        targets.append([s.x0.clone() for s in kwargs["samples"]])
        return real_online(*args, **kwargs)

    def generator_spy(*args, **kwargs):
        out = real_generator(*args, **kwargs)
        made.append([s.x0.clone() for s in kwargs["keep_samples"]])
        return out

    monkeypatch.setattr(loop, "online_update", online_spy)
    monkeypatch.setattr(loop, "generator_update", generator_spy)
    events = []
    run_distillation(spec_for(teacher, 3, "online.sample_source=generator-step"), tmp_path / "reuse", events.append)
    (started,) = [e for e in events if isinstance(e, loop.RunStarted)]
    assert any("SPEED-OPTIONS.md" in w and "FID" in w for w in started.warnings)  # the measured cost is said
    # 3 iterations x 2 micro-batches: fresh = online step + generator step; reuse = the generator step only
    assert fresh == 3 * 2 * 2 and counts["n"] == 3 * 2
    assert len(targets) == len(made) == 3
    for t, m in zip(targets, made, strict=True):
        assert len(t) == 2 and all(torch.equal(a, b) for a, b in zip(t, m, strict=True))


def test_generator_step_runs_resume_exactly(tmp_path, teacher):
    sets = ("online.sample_source=generator-step",)
    run_distillation(spec_for(teacher, 6, *sets), tmp_path / "straight")
    run_distillation(spec_for(teacher, 3, *sets), tmp_path / "resumed")
    run_distillation(spec_for(teacher, 6, *sets), tmp_path / "resumed")
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    run_distillation(spec_for(teacher, 6), tmp_path / "fresh")
    assert losses(tmp_path / "straight") != losses(tmp_path / "fresh")  # the option does change the run


def test_generator_step_samples_need_one_online_update():
    from pydantic import ValidationError

    from simcli.config.spec import OnlineSpec

    with pytest.raises(ValidationError, match="needs updates_per_generator_update 1"):
        OnlineSpec(sample_source="generator-step", updates_per_generator_update=2)
