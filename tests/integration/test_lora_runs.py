"""LoRA runs (issue 18, --lora-rank): the generator and the online model train adapters over the teacher's own,
frozen weights; states hold adapters, snapshots adapters (or merged weights), and `sample` rebuilds either."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from simcli.distill.loop import Distillation, run_distillation
from simcli.errors import UsageError
from simcli.nets.lora import is_lora
from simcli.sampling.generator import load_generator
from simcli.teachers.registry import load_teacher
from tests.helpers.processes import records
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm

RANK = 4


def lora_spec(teacher, steps: int, *sets: str):
    return tiny_edm_spec(teacher, steps, f"generator.lora_rank={RANK}", f"online.lora_rank={RANK}", *sets,
                         snapshot_every_kimg=0.04)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny.pkl")


def test_the_networks_share_the_teachers_weights_and_train_adapters_only(tmp_path, teacher):
    with Distillation(lora_spec(teacher, 10), tmp_path / "run") as run:
        before = {k: v.clone() for k, v in run.nets.teacher.state_dict().items()}
        run.run()
        nets = run.nets
        assert is_lora(nets.generator) and is_lora(nets.online) and is_lora(nets.ema)
        shared = {p.data_ptr() for p in nets.teacher.parameters()}
        for net in (nets.generator, nets.online, nets.ema):
            trained = [p for p in net.parameters() if p.data_ptr() not in shared]
            assert trained and all(name.endswith(("lora_A", "lora_B")) for name, p in net.named_parameters()
                                   if p.data_ptr() not in shared)
        # Ten iterations of training changed the adapters but not one bit of the teacher.
        after = nets.teacher.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert any(p.abs().max() > 0 for name, p in nets.generator.named_parameters() if name.endswith("lora_B"))
        adam = run.opts["generator"].param_groups[0]["params"]
        assert len(adam) == 2 * sum(1 for n, _ in nets.generator.named_parameters() if n.endswith("lora_A"))
    state = torch.load(tmp_path / "run" / "state-0000000.080.pt", weights_only=True)
    for net in ("generator", "online", "ema"):
        assert state[net] and all(k.endswith(("lora_A", "lora_B")) for k in state[net])
    snapshot = load_file(tmp_path / "run" / "generator-0000000.080.safetensors")
    assert snapshot.keys() == state["ema"].keys()


def test_a_lora_run_resumes_exactly(tmp_path, teacher):
    run_distillation(lora_spec(teacher, 10), tmp_path / "straight")
    run_distillation(lora_spec(teacher, 5), tmp_path / "resumed")
    run_distillation(lora_spec(teacher, 10), tmp_path / "resumed")
    a, b = records(tmp_path / "straight", "status"), records(tmp_path / "resumed", "status")
    assert [(r["loss_online"], r["loss_generator"]) for r in a] == [(r["loss_online"], r["loss_generator"]) for r in b]
    sa = torch.load(tmp_path / "straight" / "state-0000000.080.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "state-0000000.080.pt", weights_only=True)
    for net in ("generator", "online", "ema"):
        assert all(torch.equal(sa[net][k], sb[net][k]) for k in sa[net])


def test_adapter_and_merged_snapshots_give_the_same_generator(tmp_path, teacher):
    run_distillation(lora_spec(teacher, 5), tmp_path / "adapters")
    run_distillation(lora_spec(teacher, 5, "generator.lora_snapshots=merged"), tmp_path / "merged")
    name = "generator-0000000.040.safetensors"
    adapters, meta_a, _ = load_generator(tmp_path / "adapters" / name)
    merged, meta_m, _ = load_generator(tmp_path / "merged" / name)
    assert meta_a["lora"] == {"rank": RANK, "alpha": float(RANK)} and "lora" not in meta_m
    assert not is_lora(merged) and is_lora(adapters)
    z = torch.randn(3, *merged.sample_shape, generator=torch.Generator().manual_seed(0)) * 2.5
    with torch.no_grad():
        torch.testing.assert_close(adapters(z, torch.full((3,), 2.5)), merged(z, torch.full((3,), 2.5)),
                                   rtol=1e-5, atol=1e-5)
        plain = load_teacher(str(teacher)).denoiser  # the adapters moved the generator off the teacher
        assert (plain(z, torch.full((3,), 2.5)) - merged(z, torch.full((3,), 2.5))).abs().max() > 1e-6
    # The merged file is a whole network; the adapters' file a fraction of it.
    sizes = {k: (tmp_path / k / name).stat().st_size for k in ("adapters", "merged")}
    assert sizes["adapters"] < sizes["merged"] / 2, sizes


def test_adapters_for_another_teacher_are_refused_in_one_line(tmp_path, teacher):
    run_distillation(lora_spec(teacher, 5), tmp_path / "run")
    other = write_tiny_edm(tmp_path / "other.pkl", label_dim=10)  # another network under the same path
    other.replace(teacher.parent / "moved.pkl")
    path = tmp_path / "run" / "generator-0000000.040.safetensors"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"] == str(teacher)
    original = teacher.read_bytes()
    try:
        (teacher.parent / "moved.pkl").replace(teacher)
        with pytest.raises(UsageError, match="LoRA adapters for another network"):
            load_generator(path)
    finally:
        teacher.write_bytes(original)


def test_lora_with_an_analytic_teacher_or_with_sharding_is_refused(tmp_path):
    from simcli.config.resolve import resolve_spec
    from simcli.distill.sharding import check_sharding
    from simcli.teachers.registry import describe_teacher_name
    from simcli.world import World

    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": 2}},
                           sets=[f"generator.lora_rank={RANK}"])
    with pytest.raises(UsageError, match="LoRA adapts a teacher's network"):
        run_distillation(spec, tmp_path / "gmm")
    assert not (tmp_path / "gmm").exists()
    sharded = spec.model_copy(update={"training": spec.training.model_copy(update={"sharding": "fsdp"})})
    with pytest.raises(UsageError, match="LoRA .* with training.sharding fsdp"):
        check_sharding(sharded, World(0, 2, 0, "gloo"), torch.device("cpu"))
