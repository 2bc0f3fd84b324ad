"""Hostile specs (issue 16): bounded parsing of --config files and --set values, values that pass a naive spec check
but fail once the run directory is written (seeds torch cannot take, inf, bools as numbers), and the lower-bound
memory estimate that refuses sizes the machine cannot hold."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import pytest
import torch

from simcli.config.files import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, load_config_file
from simcli.config.key_errors import SpecKeyError
from simcli.config.resolve import parse_set_option, resolve_spec
from simcli.config.spec import MLP_MAX_LAYERS, SEED_MAX, NetworkSpec
from simcli.distill import memory_estimate as mem
from simcli.errors import UsageError
from simcli.nets.mlp import MLPDenoiser
from simcli.nets.registry import MAX_BLOCKS, build_edm_network
from simcli.teachers.registry import Teacher, describe_teacher_name, load_teacher
from tests.helpers.tiny_edm import TINY_DDPMPP


def _bomb(levels: int = 9) -> str:
    """The 'billion laughs' shape: each anchor a list of nine aliases of the one before (9^levels strings)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntraining:\n  batch_size: *a{levels - 1}\n"


def _spec(*sets: str, **kwargs):
    return resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", sets=list(sets), **kwargs)


# ---------------------------------------------------------------- config files: size, depth, aliases


def test_alias_bomb_is_refused_in_a_subprocess_fast_and_small(tmp_path):
    """The 1 KB alias bomb took 7.7 GB and 164 s and ended in MemoryError; now: refused in milliseconds, small RSS.
    A subprocess (with a 2 GiB address-space cap, so the old behaviour fails in seconds instead of swapping) measures
    the resolution alone (not the interpreter's start) and the process's peak resident memory."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb())
    assert bomb.stat().st_size < 1024
    code = (
        "import resource, sys, time\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from simcli.config.resolve import resolve_spec\n"
        "from simcli.errors import UsageError\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    resolve_spec('gmm-ring8', lambda n: (n, 'gmm'), config_file=sys.argv[1])\n"
        "    print('accepted')\n"
        "except UsageError as exc:\n"
        "    print(exc.message)\n"
        "print(time.perf_counter() - start)\n"
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, from the forked copy of this (torch-sized) process
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    message, seconds, maxrss_kb = proc.stdout.splitlines()
    assert message == f"config file {bomb} holds more than {MAX_NODES:,} values once its aliases are expanded"
    assert float(seconds) < 0.5
    assert int(maxrss_kb) < 300 * 1024


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("deep.json", '{"training": ' + "[" * 100_000 + "]" * 100_000 + "}", f"nests deeper than {MAX_DEPTH} levels"),
        ("deep.toml", "x = " + "[" * 50_000 + "]" * 50_000 + "\n", f"nests deeper than {MAX_DEPTH} levels"),
        ("deep.yaml", "x: " + "[" * 50_000 + "]" * 50_000 + "\n", f"nests deeper than {MAX_DEPTH} levels"),
        ("deep40.json", '{"a": ' + "[" * 40 + "]" * 40 + "}", f"nests deeper than {MAX_DEPTH} levels"),
        ("dotted.toml", "a" + ".a" * 40 + " = 1\n", f"nests deeper than {MAX_DEPTH} levels"),
        ("wide.json", json.dumps({"a": list(range(MAX_NODES + 1))}), f"holds more than {MAX_NODES:,} values"),
        ("rec.yaml", "a: &a [1, *a]\n", "recursive alias"),
        ("merge.yaml", "m0: &m0 {a: 1, b: 2}\n" + "".join(
            f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: 1}}\n" for i in range(1, 30)), "once its aliases are expanded"),
        ("deepalias.yaml", "a: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n",
         "nests deeper than 32 levels once its aliases are expanded"),
        ("intkey.yaml", "1: 2\n", "the key 1 is not a name"),
        ("nestedkey.yaml", "training: {true: 3}\n", "the key True under training is not a name"),
        ("digits.json", '{"seed": ' + "9" * 5000 + "}", "could not be parsed"),
    ],
)
def test_hostile_config_files_are_one_line_usage_errors(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    with pytest.raises(UsageError) as info:
        load_config_file(path)
    assert fragment in info.value.message
    assert str(path) in info.value.message and "\n" not in info.value.message
    assert len(info.value.message) < 300
    assert time.perf_counter() - start < 5


def test_a_config_file_over_the_size_bound_is_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(UsageError, match=f"larger than {MAX_FILE_BYTES // 1024} KB"):
        load_config_file(path)
    ok = tmp_path / "ok.yaml"
    ok.write_text("# " + "x" * (MAX_FILE_BYTES - 100) + "\ntraining:\n  batch_size: 64\n")
    assert load_config_file(ok) == {"training": {"batch_size": 64}}


def test_shared_settings_through_an_anchor_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("generator:\n  optimizer: &adam {lr: 3.0e-4, beta2: 0.99}\nonline:\n  optimizer: *adam\n")
    spec, provenance = _spec(config_file=path)
    assert spec.generator.optimizer.lr == spec.online.optimizer.lr == 3.0e-4
    assert spec.online.optimizer.beta2 == 0.99 and provenance["online.optimizer.beta2"] == "file"


def test_a_huge_value_is_shown_truncated(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"training": {"batch_size": "x" * 200_000}}))
    with pytest.raises(SpecKeyError) as info:
        _spec(config_file=path)
    assert info.value.key == "training.batch_size" and info.value.source == "file"
    assert "xxx..." in info.value.message and len(info.value.message) < 300
    assert "--config file" in info.value.hint


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("a" + ".a" * 40 + "=1", "nests deeper than 32 levels"),
        ("training.batch_size=" + "[" * 5000 + "]" * 5000, "the value nests deeper than 32 levels"),
        ("training.batch_size=&a [1, *a]", "recursive alias"),
    ],
)
def test_hostile_set_values_are_refused(item, fragment):
    with pytest.raises(UsageError) as info:
        parse_set_option(item)
    assert fragment in info.value.message and len(info.value.message) < 300


def test_a_set_value_that_is_no_yaml_stays_text():
    assert parse_set_option("evaluation.reference=" + "9" * 5000) == {"evaluation": {"reference": "9" * 5000}}
    assert parse_set_option("evaluation.reference={1: 2}") == {"evaluation": {"reference": "{1: 2}"}}


# ---------------------------------------------------------------- values: seeds, inf/nan, bools


def test_the_seed_bound_is_what_torch_generators_take():
    torch.Generator().manual_seed(SEED_MAX)
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator().manual_seed(SEED_MAX + 1)
    assert _spec(f"seed={SEED_MAX}")[0].seed == SEED_MAX
    with pytest.raises(SpecKeyError, match="less than or equal to 18446744073709551615") as info:
        _spec(f"seed={SEED_MAX + 1}")
    assert info.value.key == "seed" and info.value.source == "--set"
    with pytest.raises(SpecKeyError, match="'evaluation.seed'"):
        _spec(f"evaluation.seed={SEED_MAX + 1}")


@pytest.mark.parametrize(
    "item",
    ["training.duration_kimg=.inf", "training.duration_kimg=.nan", "generator.optimizer.lr=inf",
     "ema.halflife_kimg=nan", "loss.sid_alpha=-.inf", "generator.noise.p_mean=.nan", "ema.rampup_ratio=.inf"],
)
def test_inf_and_nan_are_refused_everywhere(item):
    with pytest.raises(SpecKeyError, match="finite number") as info:
        _spec(item)
    assert info.value.key == item.split("=")[0]


def test_inf_from_a_flag_and_from_json_are_refused(tmp_path):
    with pytest.raises(SpecKeyError, match="finite number") as info:
        _spec(flags={"training": {"duration_kimg": float("inf")}})
    assert (info.value.key, info.value.source) == ("training.duration_kimg", "flag")
    path = tmp_path / "c.json"
    path.write_text('{"loss": {"sid_alpha": NaN}}')
    with pytest.raises(SpecKeyError, match="finite number"):
        _spec(config_file=path)


def test_optional_floats_still_take_none_and_numbers():
    spec, _ = _spec("ema.rampup_ratio=null", "training.dropout=null", "generator.optimizer.lr=1e-4", "loss.sid_alpha=1")
    assert spec.ema.rampup_ratio is None and spec.training.dropout is None
    assert spec.generator.optimizer.lr == 1e-4 and spec.loss.sid_alpha == 1.0


@pytest.mark.parametrize("item", ["training.batch_size=true", "training.batch_size=false", "seed=true",
                                  "generator.optimizer.lr=true", "network.hidden_dim=yes", "training.batch_gpu=on"])
def test_bools_are_not_numbers(item):
    with pytest.raises(SpecKeyError, match="must be a number") as info:
        _spec(item)
    assert info.value.key == item.split("=")[0]


@pytest.mark.parametrize(
    ("name", "text"),
    [("c.yaml", "training:\n  batch_size: 48\n"), ("c.json", '{"training": {"batch_size": 48}}'),
     ("c.toml", "[training]\nbatch_size = 48\n"), ("c.yaml", "training:\n  batch_size: 48.0\n")],
)
def test_integers_still_come_from_every_format(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    spec, _ = _spec(config_file=path)
    assert spec.training.batch_size == 48 and type(spec.training.batch_size) is int
    assert _spec("training.batch_size=48")[0].training.batch_size == 48
    assert _spec("training.compile=true")[0].training.compile is True  # bools for bool fields


def test_bool_in_config_file_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"training": {"batch_size": true}}')
    with pytest.raises(SpecKeyError, match="must be a number") as info:
        _spec(config_file=path)
    assert info.value.source == "file"


# ---------------------------------------------------------------- network sizes and memory


def test_mlp_depth_bound_is_the_bound_network_files_are_read_with():
    assert MLP_MAX_LAYERS == MAX_BLOCKS
    assert _spec(f"network.num_layers={MLP_MAX_LAYERS}")[0].network.num_layers == MLP_MAX_LAYERS
    with pytest.raises(SpecKeyError, match="less than or equal to 64"):
        _spec("network.num_layers=100000")


@pytest.mark.parametrize(("dim", "hidden", "layers", "emb"), [(2, 256, 4, 32), (5, 7, 1, 2), (8, 33, 3, 10)])
def test_mlp_parameters_match_a_built_mlp(dim, hidden, layers, emb):
    network = NetworkSpec(hidden_dim=hidden, num_layers=layers, embedding_dim=emb)
    built = MLPDenoiser(dim, hidden_dim=hidden, num_layers=layers, embedding_dim=emb)
    assert mem.mlp_parameters(dim, network) == sum(t.numel() for t in built.state_dict().values())


def test_estimate_for_an_analytic_teacher():
    spec, _ = _spec("training.batch_size=1000", "teacher_fit.batch_size=10")
    teacher = load_teacher("gmm-ring8")
    est = mem.estimate_memory(spec, teacher, on_cuda=False)
    params = mem.mlp_parameters(2, spec.network)
    assert est.weights == 4 * 9 * params
    per_sample = 4 * (4 * 2 + 2 * spec.network.hidden_dim * spec.network.num_layers)
    assert (est.batch, est.batch_key, est.samples) == (1000 * per_sample, "training.batch_size", 1000)
    est = mem.estimate_memory(spec.model_copy(update={"teacher_fit": spec.teacher_fit.model_copy(update={"batch_size": 5000})}),
                              teacher, on_cuda=False)
    assert (est.batch, est.batch_key) == (5000 * per_sample, "teacher_fit.batch_size")
    two, _ = _spec("training.batch_size=1000", "teacher_fit.batch_size=10", processes=2)
    assert mem.estimate_memory(two, teacher, on_cuda=False, processes=2).samples == 500


def test_estimate_for_a_network_teacher_counts_the_teacher_on_cuda_only():
    net = build_edm_network("EDMPrecond", {**TINY_DDPMPP, "label_dim": 0})
    teacher = Teacher("t", "edm", "tiny", net, {"kind": "edm"})
    spec, _ = _spec("training.batch_size=64", "logging.grid_samples=16")
    params = sum(p.numel() for p in net.parameters())
    state = sum(t.numel() for t in net.state_dict().values())
    cpu = mem.estimate_memory(spec, teacher, on_cuda=False)
    cuda = mem.estimate_memory(spec, teacher, on_cuda=True)
    assert cpu.weights == 4 * (3 * state + 6 * params)
    assert cuda.weights - cpu.weights == 4 * state
    assert (cpu.batch, cpu.batch_key) == (64 * 4 * 4 * 3 * 8 * 8, "training.batch_size")
    grid, _ = _spec("training.batch_size=64", "logging.grid_samples=100000")
    assert mem.estimate_memory(grid, teacher, on_cuda=False).batch_key == "logging.grid_samples"


@pytest.mark.parametrize(
    ("sets", "key", "value"),
    [
        (("training.batch_size=4096",), "training.batch_size", "4,096"),
        (("training.batch_size=4096", "training.batch_gpu=4096"), "training.batch_gpu", "4,096"),
        (("teacher_fit.batch_size=4096",), "teacher_fit.batch_size", "4,096"),
        (("logging.eval_every_kimg=1", "evaluation.num_samples=10000000"), "evaluation.num_samples", "10,000,000"),
        (("network.hidden_dim=2000",), "network.hidden_dim", "2,000"),
        (("network.num_layers=64", "network.hidden_dim=256"), "network.num_layers", "64"),
    ],
)
def test_check_memory_names_the_key_that_does_not_fit(monkeypatch, sets, key, value):
    spec, _ = _spec(*sets)
    teacher = load_teacher("gmm-ring8")
    est = mem.estimate_memory(spec, teacher, on_cuda=False)
    monkeypatch.setattr(mem, "available_bytes", lambda device: est.total - 1)
    with pytest.raises(SpecKeyError) as info:
        mem.check_memory(spec, teacher)
    assert info.value.key == key
    assert info.value.message.startswith(f"spec key '{key}' ({value}) needs at least {mem.size_text(est.total)} "
                                         f"of host memory, more than the {mem.size_text(est.total - 1)} available")
    assert "a lower bound" in info.value.message and info.value.hint
    monkeypatch.setattr(mem, "available_bytes", lambda device: est.total)
    mem.check_memory(spec, teacher)  # exactly enough: accepted


def test_processes_on_one_host_share_its_memory(monkeypatch):
    spec, _ = _spec("training.batch_size=4096")
    teacher = load_teacher("gmm-ring8")
    est = mem.estimate_memory(spec, teacher, on_cuda=False)
    monkeypatch.setattr(mem, "available_bytes", lambda device: 3 * est.total)
    monkeypatch.setattr(mem, "environment_world", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(SpecKeyError, match="host memory for 4 processes"):
        mem.check_memory(spec, teacher)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    mem.check_memory(spec, teacher)


def test_an_mlp_larger_than_network_files_hold_is_refused_whatever_the_memory(monkeypatch):
    spec, _ = _spec("network.hidden_dim=200000")
    monkeypatch.setattr(mem, "available_bytes", lambda device: 1 << 60)
    with pytest.raises(SpecKeyError, match="more than the 20,000,000,000 that simcli reads network files of") as info:
        mem.check_memory(spec, load_teacher("gmm-ring8"))
    assert info.value.key == "network.hidden_dim"


def test_available_bytes_reads_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (123 << 20, 1 << 40))
    assert mem.available_bytes(torch.device("cuda", 0)) == 123 << 20
    host = mem.available_bytes(torch.device("cpu"))
    assert host is not None and 0 < host <= resource.getpagesize() * __import__("os").sysconf("SC_PHYS_PAGES")
