"""The memory plan of `distill --dry-run` (simcli.distill.memory_plan): meta builds, traced activations, the parts
and the suggestions, and the four shipped text-to-image configurations."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.config.resolve import resolve_spec
from simcli.distill.memory_plan import (
    FLOAT32,
    MemoryPlan,
    plan_memory,
    shipped_architecture,
    trace_saved_bytes,
    weight_parts,
)
from simcli.nets.diffusers_denoiser import diffusers_architecture
from simcli.nets.registry import build_network, meta_network
from simcli.teachers.registry import describe_teacher_name
from tests.helpers.tiny_edm import TINY_DDPMPP
from tests.helpers.tiny_pipelines import tiny_components

MLP = {"kind": "mlp", "dim": 2, "hidden_dim": 16, "num_layers": 3, "embedding_dim": 8, "dropout": 0.0}
EDM = {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": {**TINY_DDPMPP, "label_dim": 0}}
FLOW = {"kind": "flow", "num_train_timesteps": 1000, "shift": 3.0}


def _spec(batch_gpu: int, *sets: str, precision: str = "fp32", batch_size: int = 64):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, sets=list(sets),
                           flags={"training": {"batch_size": batch_size, "batch_gpu": batch_gpu, "precision": precision}})
    return spec


def _sd3_record() -> dict:
    return diffusers_architecture(tiny_components("sd3")["transformer"], FLOW)


def _counts(net: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in net.parameters()), sum(t.numel() for t in net.state_dict().values())


@pytest.mark.parametrize("record", [MLP, EDM, "sd3"], ids=["mlp", "edm", "diffusers-sd3"])
def test_meta_build_counts_equal_real_build(record):
    record = _sd3_record() if record == "sd3" else record
    meta = meta_network(record)
    assert all(p.is_meta for p in meta.parameters())
    assert _counts(meta) == _counts(build_network(record))
    assert _counts(meta)[0] > 500


def test_traced_mlp_activations_equal_hand_count():
    """Trainable: each Linear keeps its input, each SiLU its input, and c_out * F keeps c_out [B, 1]. Frozen with
    a live input: the Linears keep only their (frozen) weights; the SiLUs their inputs; c_in, c_out and c_skip."""
    b, d, h, layers, e = 5, 2, 16, 3, 8
    net = meta_network(MLP)
    trainable = FLOAT32 * b * ((d + e) + layers * h + layers * h + 1)
    frozen = FLOAT32 * b * (layers * h + 3)
    assert trace_saved_bytes(net, b, trainable=True) == trainable
    assert trace_saved_bytes(net, b, trainable=False) == frozen


def test_bf16_halves_the_matmul_inputs_of_the_mlp():
    net = meta_network(MLP)
    assert 0 < trace_saved_bytes(net, 64, trainable=True, precision="bf16") < trace_saved_bytes(net, 64, trainable=True)


def test_checkpointing_shrinks_the_traced_activations_of_a_dit():
    net = meta_network(_sd3_record())
    plain = trace_saved_bytes(net, 4, trainable=True, text_tokens=8)
    checkpointed = trace_saved_bytes(net, 4, trainable=True, text_tokens=8, checkpointing=True)
    assert 0 < checkpointed < plain / 2


def test_plan_parts_add_up_and_scale_with_the_batch():
    small, large = (plan_memory(EDM, _spec(bg), 1, None) for bg in (2, 8))
    params, state = _counts(build_network(EDM))
    assert (small.parameters, small.parameters + small.buffers) == (params, state)
    assert small.copies == 3 * FLOAT32 * state and small.optimizer == 4 * FLOAT32 * params
    assert small.total == sum(getattr(small, p) for p in MemoryPlan.PARTS)
    assert small.fits is None and small.suggestions == ()
    assert large.activations > 3 * small.activations
    assert large.total - large.activations == small.total - small.activations


def test_suggestions_when_it_does_not_fit_and_the_suggested_batch_fits():
    spec = _spec(32)
    full = plan_memory(EDM, spec, 1, None)
    device = full.total - full.activations + full.activations // 5
    plan = plan_memory(EDM, spec, 1, device)
    assert plan.fits is False
    batch = [s for s in plan.suggestions if s.startswith("--batch-gpu ")]
    assert batch, plan.suggestions
    smaller = int(batch[0].split()[1].rstrip(":"))
    assert smaller < 32
    assert plan_memory(EDM, _spec(smaller), 1, device).fits is True
    assert any("activation_checkpointing" in s for s in plan.suggestions)


def test_sharding_divides_the_weights():
    whole, eighth = weight_parts(800, 80), weight_parts(800, 80, 8)
    assert {k: v // 8 for k, v in whole.items()} == eighth


def test_dry_run_json_has_the_memory_plan():
    result = CliRunner().invoke(app, ["distill", "--teacher", "gmm-ring8", "--dry-run", "--json", "--gpu-memory", "1"])
    assert result.exit_code == 0, result.output
    memory = json.loads(result.output)["memory"]
    gib = memory["per_process_gib"]
    assert gib["total"] == pytest.approx(sum(v for k, v in gib.items() if k != "total"))
    assert memory["device_gib"] == 1 and memory["fits"] is True


# Parameters of the denoisers, counted from diffusers' module definitions at these configurations (vendors state 0.6B,
# 2.5B with the buffer, 2.6B and 12B), and SD3.5-medium's stored pos-embed buffer.
REAL = {"pixart-alpha-512": (0.611e9, 0), "sd35-medium": (2.243e9, 0.2265e9), "sdxl-base": (2.567e9, 0),
        "flux1-dev": (11.901e9, 0)}


@pytest.mark.parametrize("name", list(REAL))
def test_shipped_configs_build_on_meta_with_the_known_counts(name):
    record, tokens = shipped_architecture(name)
    params, state = _counts(meta_network(record, name))
    assert params == pytest.approx(REAL[name][0], rel=2e-3)
    assert state - params == pytest.approx(REAL[name][1], rel=2e-3, abs=1e6)
    assert tokens > 0


def test_a_local_pipeline_folder_is_planned_from_its_json_files_without_loading_weights(tmp_path, monkeypatch):
    """The dry run of diffusers:PATH reads config files only: the network class is never instantiated with weights."""
    from simcli.distill.memory_plan import dry_run_architecture
    from simcli.teachers import pipeline_source
    from tests.helpers.tiny_pipelines import write_tiny_pipeline

    folder = write_tiny_pipeline("sd3", tmp_path / "sd3")
    monkeypatch.setattr(pipeline_source.DiffusersPipelineSource, "network",
                        lambda *a, **k: pytest.fail("the weights were loaded"))
    spec, _ = resolve_spec(f"diffusers:{folder}", describe_teacher_name, sets=["text.resolution=32"])
    record, tokens = dry_run_architecture(spec)
    real = diffusers_architecture(tiny_components("sd3")["transformer"], FLOW)
    assert record["config"] == real["config"] and record["class_name"] == "SD3Transformer2DModel"
    assert record["sample_shape"] == [16, 16, 16] and tokens == 77 + 256  # SD3: CLIP tokens, then T5's
    result = CliRunner().invoke(app, ["distill", "--teacher", f"diffusers:{folder}", "--prompts", str(folder / "x.txt"),
                                      "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["memory"]["parameters"] == sum(p.numel() for p in meta_network(real, "t").parameters())


def test_lora_keeps_one_teacher_and_the_adapters_states():
    # generator (and its EMA) with 10 adapter parameters, the online model with 20; 800 parameters, 80 buffers
    parts = weight_parts(800, 80, adapters=(10, 20))
    assert parts == {"teacher": 4 * 880, "copies": 4 * (2 * 10 + 20), "gradients": 4 * 20, "optimizer": 2 * 4 * 30}
    half = weight_parts(800, 80, adapters=(None, 20))  # only the online model adapted
    assert half["copies"] == 4 * (2 * 880 + 20) and half["optimizer"] == 2 * 4 * (800 + 20)


def test_the_plan_of_a_sharded_or_lora_run(tmp_path):
    from simcli.nets.lora import lora_parameter_count
    from simcli.nets.registry import meta_network

    net = meta_network(EDM, "test")
    params = sum(p.numel() for p in net.parameters())
    whole = plan_memory(EDM, _spec(4), 4, None)
    sharded = plan_memory(EDM, _spec(4).model_copy(update={"training": _spec(4).training.model_copy(
        update={"sharding": "fsdp"})}), 4, None)
    for part in ("teacher", "copies", "gradients", "optimizer"):
        assert getattr(sharded, part) == -(-getattr(whole, part) // 4), part
    assert whole.gathered == 0 < sharded.gathered < whole.teacher and sharded.activations == whole.activations
    assert sharded.as_json()["sharding"] == "fsdp" and whole.as_json()["sharding"] == "none"
    spec = _spec(4)
    lora = plan_memory(EDM, spec.model_copy(update={
        "generator": spec.generator.model_copy(update={"lora_rank": 8}),
        "online": spec.online.model_copy(update={"lora_rank": 8})}), 1, None)
    adapters = lora_parameter_count(net, 8)
    assert 0 < adapters < params  # a tiny UNet: rank 8 is a third of its weights
    assert lora.teacher == whole.teacher and lora.copies == 4 * 3 * adapters
    assert lora.optimizer == 2 * 4 * 2 * adapters and lora.as_json()["lora_rank"] == {"generator": 8, "online": 8}
