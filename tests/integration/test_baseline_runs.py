"""The baseline settings inside real (tiny, CPU) runs: EMA ramp-up convention, the augmentation warning, and exact
resume of Diff-Instruct with augmentation and shared-mask dropout on a tiny EDM teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import simcli.distill.loop as loop
from simcli.config.resolve import resolve_spec
from simcli.distill.loop import Distillation, run_distillation
from simcli.nets.registry import build_edm_network
from simcli.rundir.layout import list_generators
from simcli.rundir.snapshots import load_latest_state
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.edm_pickle_writer import write_edm_pickle
from tests.helpers.records import run_records
from tests.helpers.tiny_edm import TINY_DDPMPP, write_tiny_edm


def spec_for(teacher: str, *sets: str, preset: str | None = "tiny"):
    spec, _ = resolve_spec(teacher, describe_teacher_name, preset=preset, sets=list(sets))
    return spec


def run_started_warnings(spec, run_dir: Path) -> list[str]:
    """The warnings of a run that is set up (teacher, networks) but not run."""
    return Distillation(spec, run_dir).started.warnings


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_rampup_counts_the_images_before_each_step(tmp_path, monkeypatch):
    seen = []
    real = loop.ema_beta

    def recording(batch_size, cur_nimg, *args):
        seen.append(cur_nimg)
        return real(batch_size, cur_nimg, *args)

    monkeypatch.setattr(loop, "ema_beta", recording)
    spec = spec_for("gmm-ring8", "training.duration_steps=3", "ema.halflife_kimg=500", "ema.rampup_ratio=0.05")
    run_distillation(spec, tmp_path)
    assert seen == [0, 32, 64]  # EDM's training_loop.py: half-life from cur_nimg, then cur_nimg += batch_size


def test_after_the_first_step_the_ema_is_the_generator(tmp_path):
    # EDM: half-life min(500k, 0.05 * 0) = 0 at the first step, so beta = 0 and the EMA takes the generator's weights.
    spec = spec_for("gmm-ring8", "training.duration_steps=1", "ema.halflife_kimg=500", "ema.rampup_ratio=0.05")
    run_distillation(spec, tmp_path)
    state, _, _ = load_latest_state(tmp_path)
    assert all(torch.equal(state["ema"][k], state["generator"][k]) for k in state["generator"])
    fit = load_file(str(tmp_path / "teacher-fit.safetensors"))
    assert not all(torch.equal(state["generator"][k], fit[k]) for k in fit)  # and the generator did move


# ---------------------------------------------------------------------------------------------- augmentation warning


@pytest.mark.parametrize("method", ["sid", "di"])
def test_mixture_runs_of_the_baselines_have_no_augmentation_warning(tmp_path, method):
    spec = spec_for("gmm-ring8", f"loss.method={method}", "teacher_fit.steps=5", preset=None)  # auto: the gmm preset
    assert spec.online.augment_p == 0.0
    assert run_started_warnings(spec, tmp_path) == []


def test_augment_p_on_a_network_without_augment_dim_warns_and_does_not_augment(tmp_path, monkeypatch):
    init_kwargs = {**TINY_DDPMPP, "augment_dim": 0, "label_dim": 0}
    teacher = write_edm_pickle(tmp_path / "no-augment.pkl", build_edm_network("EDMPrecond", init_kwargs), init_kwargs)
    augments = []
    real = loop.online_update
    monkeypatch.setattr(loop, "online_update", lambda *a, **kw: augments.append(kw.get("augment")) or real(*a, **kw))
    spec = spec_for(str(teacher), "loss.method=sid", "training.batch_size=4", "training.duration_steps=2")
    assert spec.online.augment_p == 0.12
    events = []
    run_distillation(spec, tmp_path / "run", events.append)
    (start,) = [e for e in events if type(e).__name__ == "RunStarted"]
    assert len(start.warnings) == 1 and "online.augment_p = 0.12 is ignored" in start.warnings[0]
    assert augments == [None, None]


def test_edm_teacher_with_augment_dim_is_augmented_without_warning(tmp_path, monkeypatch):
    teacher = write_tiny_edm(tmp_path / "tiny.pkl")
    augments = []
    real = loop.online_update
    monkeypatch.setattr(loop, "online_update", lambda *a, **kw: augments.append(kw.get("augment")) or real(*a, **kw))
    spec = spec_for(str(teacher), "loss.method=di", "training.batch_size=4", "training.duration_steps=1")
    events = []
    run_distillation(spec, tmp_path / "run", events.append)
    (start,) = [e for e in events if type(e).__name__ == "RunStarted"]
    assert start.warnings == []
    assert len(augments) == 1 and augments[0] is not None and augments[0].p == 0.12


# ---------------------------------------------------------------------------------------------- resume


def records(run_dir: Path) -> list[dict]:
    return run_records(run_dir)


def test_diff_instruct_with_augmentation_and_shared_mask_resumes_exactly(tmp_path):
    teacher = write_tiny_edm(tmp_path / "tiny.pkl", label_dim=10)
    common = ("loss.method=di", "training.batch_size=4", "training.batch_gpu=2", "logging.status_every_kimg=0.004",
              "logging.snapshot_every_kimg=0.012", "ema.rampup_ratio=0.05")

    def spec(steps: int):
        s = spec_for(str(teacher), *common, f"training.duration_steps={steps}")
        assert (s.online.augment_p, s.generator.score_dropout, s.generator.sigma_init) == (0.12, "shared-mask", 1.0)
        return s

    straight, split = tmp_path / "straight", tmp_path / "split"
    run_distillation(spec(6), straight)
    run_distillation(spec(3), split)
    summary = run_distillation(spec(6), split)
    assert summary["resumed_from"] is not None
    assert records(straight) == records(split) and len(records(straight)) == 6
    a = load_file(str(list_generators(straight)[-1]))
    b = load_file(str(list_generators(split)[-1]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    state_a, _, _ = load_latest_state(straight)
    state_b, _, _ = load_latest_state(split)
    for key in ("generator", "online", "ema"):
        assert all(torch.equal(state_a[key][k], state_b[key][k]) for k in state_a[key])
