"""Few-step generators end to end (issue 19, --generator-steps K): a K-step run records its noise levels, `sample`
makes exactly the K-step samples of the definition seed by seed, `eval` scores those, resume and two processes repeat
the run, and bad levels are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.distill.loop import run_distillation
from simcli.nets.few_step import generate_steps, step_sigmas
from simcli.rundir.network_file import GENERATOR_FORMAT, save_network_file
from simcli.rundir.snapshots import read_generator
from simcli.sampling.generator import load_generator
from simcli.sampling.images import to_uint8
from simcli.sampling.seeds import SeedRNG
from simcli.teachers.registry import load_teacher
from tests.helpers.processes import assert_same_losses, records, run_processes
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm

STEPS = 4


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_tiny_edm(tmp_path_factory.mktemp("few") / "tiny.pkl", label_dim=3)


def spec_of(teacher, steps: int, *sets: str):
    return tiny_edm_spec(teacher, steps, "generator.steps=3", "online.augment_p=0", *sets, snapshot_every_kimg=0.016)


def test_sample_makes_the_k_step_samples_the_run_trained(tmp_path, teacher):
    run_distillation(spec_of(teacher, STEPS), tmp_path / "run")
    snapshot = sorted((tmp_path / "run").glob("generator-0*.safetensors"))[-1]
    meta = read_generator(snapshot)[1]
    assert meta["generator_sigmas"] == pytest.approx(list(step_sigmas(2.5, 3)))
    out = tmp_path / "s.npz"
    result = CliRunner().invoke(app, ["sample", "--generator", str(snapshot), "--n", "6", "--seed", "5", "--out",
                                      str(out), "--class", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["nfe"] == 3
    # the definition, seed by seed: latent, class (replaced by --class), then the noise of each re-noising
    net, _, _ = load_generator(snapshot)
    rng = SeedRNG(range(5, 11))
    z = rng.randn((3, 8, 8))
    rng.randint(3)
    labels = torch.nn.functional.one_hot(torch.full((6,), 1), 3).float()
    with torch.no_grad():
        expected = generate_steps(net, z, meta["generator_sigmas"], labels, lambda x: rng.randn(x.shape[1:]))
    assert np.array_equal(np.load(out)["images"], to_uint8(expected))
    scored = CliRunner().invoke(app, ["eval", "--generator", str(snapshot), "--nearest", "--ref", str(out), "--n", "6",
                                      "--seed", "5", "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["nfe"] == 3
    # one step of the same network is another image: the steps matter
    assert not np.array_equal(to_uint8(expected), to_uint8(generate_steps(net, z, (2.5,), labels)))


def test_a_k_step_run_resumes_exactly_and_is_the_same_on_two_processes(tmp_path, teacher):
    run_distillation(spec_of(teacher, STEPS), tmp_path / "straight")
    run_distillation(spec_of(teacher, 2), tmp_path / "resumed")
    run_distillation(spec_of(teacher, STEPS), tmp_path / "resumed")
    a, b = records(tmp_path / "straight", "status"), records(tmp_path / "resumed", "status")
    assert [(r["loss_online"], r["loss_generator"]) for r in a] == [(r["loss_online"], r["loss_generator"]) for r in b]
    run_processes(2, spec_of(teacher, STEPS), tmp_path / "two")
    assert_same_losses(tmp_path / "straight", tmp_path / "two", STEPS)


@pytest.mark.parametrize("levels, message", [
    ([2.5, 3.0], "falling"),
    ("x", "falling"),
    ([1.0, 0.5], "from sigma_init"),
    ([2.5] + [1.0 / k for k in range(2, 20)], "at most 16"),
])
def test_a_snapshot_with_bad_levels_is_refused_in_one_line(tmp_path, teacher, levels, message):
    run_distillation(spec_of(teacher, 1), tmp_path / "run")
    snapshot = sorted((tmp_path / "run").glob("generator-0*.safetensors"))[-1]
    tensors, meta, _ = read_generator(snapshot)
    hostile = tmp_path / "hostile.safetensors"
    save_network_file(hostile, tensors, {**meta, "generator_sigmas": levels}, GENERATOR_FORMAT)
    result = CliRunner().invoke(app, ["sample", "--generator", str(hostile), "--n", "2", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "generator_sigmas" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("sets, message", [
    (["--generator-steps", "0"], "--generator-steps: Input should be greater than or equal to 1"),
    (["--generator-steps", "17"], "--generator-steps: Input should be less than or equal to 16"),
    (["--generator-steps", "3", "--set", "generator.step_sigmas=[1.0]"], "step_sigmas gives 1"),
    (["--generator-steps", "2", "--set", "generator.step_sigmas=[3.0]"], "fall below sigma_init"),
])
def test_bad_step_settings_are_refused_before_the_run_directory_exists(tmp_path, sets, message):
    result = CliRunner().invoke(app, ["distill", "--teacher", "digits", "--out", str(tmp_path / "run"), *sets])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_k_steps_with_lora_and_sharded_with_data(tmp_path, teacher):
    """Few-step generators with the other ways of training: LoRA adapters, and FSDP over two processes with real data
    (the same losses as one unsharded process, to rounding)."""
    run_distillation(spec_of(teacher, 2, "generator.lora_rank=4", "online.lora_rank=4"), tmp_path / "lora")
    assert all(np.isfinite(r["loss_generator"]) for r in records(tmp_path / "lora", "status"))
    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", images=images, labels=np.arange(16) % 3)
    data = [f"data.source={tmp_path / 'real.npz'}", "adversarial.generator_freeze_kimg=0",
            "adversarial.generator_start_kimg=0"]
    run_distillation(spec_of(teacher, 3, *data), tmp_path / "one")
    run_processes(2, spec_of(teacher, 3, *data, "training.sharding=fsdp"), tmp_path / "sharded")
    a, c = records(tmp_path / "one", "status"), records(tmp_path / "sharded", "status")
    for key in ("loss_online", "loss_generator"):
        scale = max(abs(r[key]) for r in a)
        assert all(abs(x[key] - y[key]) <= 1e-5 * scale for x, y in zip(a, c, strict=True)), key


@pytest.mark.parametrize("method", ["sid", "di", "dmd2"])
def test_every_method_trains_a_few_step_generator(tmp_path, teacher, method):
    images = np.random.default_rng(0).integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "real.npz", images=images, labels=np.arange(16) % 3)
    spec = spec_of(teacher, 2, f"loss.method={method}", f"data.source={tmp_path / 'real.npz'}",
                   "adversarial.generator_freeze_kimg=0", "adversarial.generator_start_kimg=0",
                   "generator.optimizer.warmup_updates=0", "online.updates_per_generator_update=1")
    run_distillation(spec, tmp_path / "run")
    rows = records(tmp_path / "run", "status")
    assert len(rows) == 2 and all(np.isfinite(r["loss_generator"]) and np.isfinite(r["loss_online"]) for r in rows)
    net, meta, _ = load_generator(tmp_path / "run")
    assert len(meta["generator_sigmas"]) == 3 and meta["generator_sigmas"][0] == spec.generator.sigma_init
    teacher_net = load_teacher(str(teacher)).denoiser
    assert any(not torch.equal(p, q) for p, q in zip(net.parameters(), teacher_net.parameters(), strict=True))
