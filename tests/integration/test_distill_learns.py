"""End to end on the ring teacher: distillation must move the one-step generator towards the mixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simcli.config.resolve import resolve_spec
from simcli.distill.loop import run_distillation
from simcli.eval.gmm_metrics import gmm_report
from simcli.nets.registry import build_network
from simcli.sampling.generator import load_generator
from simcli.sampling.heun import one_step_generate
from simcli.teachers.registry import describe_teacher_name, load_teacher

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
METRICS = ("mode_weight_l1", "precision", "mmd", "sw2")


def _scores(net, teacher, n=4000):
    z = torch.randn(n, teacher.dim, generator=torch.Generator().manual_seed(3))
    report = gmm_report(one_step_generate(net, z, sigma_init=2.5), teacher, seed=9)
    return {k: report[k] for k in METRICS}


def test_sim_moves_the_generator_from_the_blurred_init_towards_the_modes(tmp_path):
    sets = ["training.duration_steps=150", "training.batch_size=64", "teacher_fit.steps=200", "network.hidden_dim=64"]
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", sets=sets)
    run_distillation(spec, tmp_path)
    teacher = load_teacher("gmm-ring8").mixture
    ema, meta, _ = load_generator(tmp_path)
    init = build_network(meta["architecture"])
    init.load_state_dict(load_file(str(tmp_path / "teacher-fit.safetensors")))
    before, after = _scores(init.eval(), teacher), _scores(ema, teacher)
    # The initial generator denoises pure noise at sigma_init: a blur around the centre, on no mode.
    assert before["precision"] < 0.02 and before["mmd"] > 0.4
    assert after["mmd"] < before["mmd"] / 5
    assert after["sw2"] < before["sw2"] / 2
    assert after["precision"] > 0.15


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["gmm-ring8", f"gmm:{EXAMPLES / 'gmm-5mode-8d.json'}"])
def test_sim_pseudo_huber_reaches_the_mode_weights(tmp_path, teacher):
    """The gmm preset (a few CPU minutes) gets every mode's weight right: L1 error <= 0.05."""
    spec, _ = resolve_spec(teacher, describe_teacher_name)
    run_distillation(spec, tmp_path)
    ema, _, _ = load_generator(tmp_path)
    scores = _scores(ema, load_teacher(teacher).mixture, n=20000)
    assert scores["mode_weight_l1"] <= 0.05
