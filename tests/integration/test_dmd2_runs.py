"""DMD2 (issue 19, --method dmd2) end to end on a tiny EDM teacher: its settings as the official code has them, the
classifier head trained beside the online model, the warm-up and the norm clip acting, a run that resumes exactly
and is the same on two processes (sharded too), and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.config.spec import KarrasGridNoise
from simcli.distill.loop import Distillation, run_distillation
from simcli.distill.memory_plan import discriminator_head_parameters, plan_memory
from simcli.teachers.registry import load_teacher
from tests.helpers.processes import assert_same_losses, records, run_processes
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm

STEPS = 4
TINY = ["loss.method=dmd2", "online.updates_per_generator_update=2", "generator.optimizer.warmup_updates=0",
        "online.optimizer.warmup_updates=0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd2")
    images = np.random.default_rng(0).integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "real.npz", images=images)
    return {"teacher": write_tiny_edm(root / "tiny.pkl"), "data": root / "real.npz"}


def dmd2_spec(files, steps: int, *sets: str, data: bool = True):
    extra = [f"data.source={files['data']}"] if data else []
    return tiny_edm_spec(files["teacher"], steps, *TINY, *extra, *sets, snapshot_every_kimg=0.016)


def test_dmd2_has_the_official_settings():
    from simcli.config.resolve import resolve_spec
    from simcli.teachers.registry import describe_teacher_name

    spec, provenance = resolve_spec("edm-cifar10", describe_teacher_name, flags={"loss": {"method": "dmd2"}})
    g, o, a = spec.generator, spec.online, spec.adversarial
    assert g.sigma_init == 80.0 and g.noise == KarrasGridNoise(index_min=20, index_max=980)
    assert o.noise == KarrasGridNoise(index_min=0, index_max=999) and o.updates_per_generator_update == 5
    for opt in (g.optimizer, o.optimizer):
        assert (opt.lr, opt.beta1, opt.beta2, opt.weight_decay, opt.max_grad_norm) == (2e-6, 0.9, 0.999, 0.01, 10.0)
    assert (g.optimizer.warmup_updates, o.optimizer.warmup_updates) == (14, 72)
    assert (a.online_weight, a.generator_weight, a.generator_freeze_kimg, a.online_grad_clip) == (1e-2, 3e-3, 0, None)
    assert provenance["generator.sigma_init"] == "method:dmd2"


def test_the_head_trains_with_the_online_model_and_the_optimisers_are_adamw(tmp_path, files):
    spec = dmd2_spec(files, 2)
    with Distillation(spec, tmp_path / "run") as run:
        head = run.nets.online.model.discriminator_head
        before = [p.detach().clone() for p in head.parameters()]
        assert all(isinstance(o, torch.optim.AdamW) for o in run.opts.values())
        assert {id(p) for p in head.parameters()} <= {id(p) for g in run.opts["online"].param_groups for p in g["params"]}
        run.run()
        assert all(not torch.equal(p, q) for p, q in zip(head.parameters(), before, strict=True))
        state = torch.load(sorted((tmp_path / "run").glob("state-*.pt"))[-1], weights_only=False)
        assert any("discriminator_head" in k for k in state["online"])
        # the generator's snapshot has no head: it is the teacher's network
        assert not hasattr(run.nets.generator.model, "discriminator_head")
    a = records(tmp_path / "run", "status")
    assert all(np.isfinite(r["loss_online"]) and np.isfinite(r["loss_generator"]) for r in a)


def test_the_gan_term_changes_both_updates(tmp_path, files):
    run_distillation(dmd2_spec(files, 1), tmp_path / "gan")
    run_distillation(dmd2_spec(files, 1, data=False), tmp_path / "free")
    a, b = records(tmp_path / "gan", "status")[0], records(tmp_path / "free", "status")[0]
    assert a["loss_online"] != b["loss_online"] and a["loss_generator"] != b["loss_generator"]


def test_the_warm_up_starts_from_a_zero_learning_rate(tmp_path, files):
    """diffusers' constant_with_warmup: the first update of each network is taken at learning rate 0."""
    spec = dmd2_spec(files, 1, "generator.optimizer.warmup_updates=5", "online.optimizer.warmup_updates=5",
                     "online.updates_per_generator_update=1")
    teacher = load_teacher(str(files["teacher"])).denoiser
    with Distillation(spec, tmp_path / "run") as run:
        run.run()
        for net in (run.nets.generator, run.nets.online):
            for (name, p), q in zip(net.named_parameters(), teacher.parameters(), strict=False):
                if "discriminator_head" not in name:
                    assert torch.equal(p, q), name
        # AdamW's decay is scaled by the learning rate too: still the teacher's weights; the optimisers keep their rate
        assert run.opts["generator"].param_groups[0]["lr"] == spec.generator.optimizer.lr


def test_a_dmd2_run_resumes_exactly_and_is_the_same_on_two_processes(tmp_path, files):
    run_distillation(dmd2_spec(files, STEPS, "generator.optimizer.warmup_updates=3"), tmp_path / "straight")
    run_distillation(dmd2_spec(files, 2, "generator.optimizer.warmup_updates=3"), tmp_path / "resumed")
    run_distillation(dmd2_spec(files, STEPS, "generator.optimizer.warmup_updates=3"), tmp_path / "resumed")
    a, b = records(tmp_path / "straight", "status"), records(tmp_path / "resumed", "status")
    assert [(r["loss_online"], r["loss_generator"]) for r in a] == [(r["loss_online"], r["loss_generator"]) for r in b]
    run_processes(2, dmd2_spec(files, STEPS, "generator.optimizer.warmup_updates=3"), tmp_path / "two")
    assert_same_losses(tmp_path / "straight", tmp_path / "two", STEPS)
    # sharded: the head is part of the online model's root unit; the norm clip sums the shards' squares
    run_processes(2, dmd2_spec(files, STEPS, "generator.optimizer.warmup_updates=3", "training.sharding=fsdp"),
                  tmp_path / "sharded")
    c = records(tmp_path / "sharded", "status")
    for key in ("loss_online", "loss_generator"):
        scale = max(abs(r[key]) for r in a)
        assert all(abs(x[key] - y[key]) <= 1e-5 * scale for x, y in zip(a, c, strict=True)), key


def test_dmd2_with_lora_and_data_is_refused(tmp_path, files):
    result = CliRunner().invoke(app, ["distill", "--teacher", str(files["teacher"]), "--preset", "tiny", "--method",
                                      "dmd2", "--data", str(files["data"]), "--lora-rank", "4", "--steps", "2",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "DMD2's classifier head" in result.stderr, result.output
    assert not (tmp_path / "run").exists()


def test_the_memory_plan_counts_the_head(files):
    spec = dmd2_spec(files, 1)
    architecture = load_teacher(str(files["teacher"])).architecture
    head = discriminator_head_parameters(architecture)
    # 32 channels at 4x4: conv k4 s2 p1 (to 2x2), conv k2 s2 (to 1x1), two GroupNorms, conv 1x1 to one channel
    assert head == (16 * 32 * 32 + 32) + (4 * 32 * 32 + 32) + 4 * 32 + (32 + 1)
    with_head = plan_memory(architecture, spec, 1, None)
    without = plan_memory(architecture, dmd2_spec(files, 1, data=False), 1, None)
    # the head's weights, gradient and AdamW's two moments, 4 bytes each
    assert (with_head.copies + with_head.gradients + with_head.optimizer) - (
        without.copies + without.gradients + without.optimizer) == 16 * head
