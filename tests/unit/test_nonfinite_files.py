"""Generator and teacher files are untrusted input (issue 16): metadata of the wrong type, weights holding NaN or
Inf, architectures whose one forward needs more memory than the machine has, snapshots removed while being read,
and samples that come out non-finite are each one line, never an internal error or a NaN written as a result."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simcli.errors import RunFailed, UsageError
from simcli.nets import registry
from simcli.nets.registry import build_edm_network, check_finite_weights, forward_memory, meta_network
from simcli.rundir import snapshots
from simcli.rundir.layout import generator_path
from simcli.rundir.network_file import TEACHER_FORMAT
from simcli.sampling.finite import check_finite, nonfinite_seeds
from simcli.sampling.generator import generator_choice, load_generator
from simcli.teachers.edm_pickle import load_edm_pickle
from simcli.teachers.native import load_native_teacher
from tests.helpers.crafted_files import MLP, TINY_EDM, network_weights, write_network_file
from tests.helpers.edm_pickle_writer import write_edm_pickle
from tests.helpers.tiny_edm import TINY_DDPMPP

DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON nested deeper than Python's recursion limit


@pytest.mark.parametrize(("key", "raw", "fragment"), [
    ("sigma_init", json.dumps("2.5"), "sigma_init must be a positive number within float32's range, got '2.5'"),
    ("sigma_init", "1e300", "sigma_init must be a positive number within float32's range, got 1e+300"),
    ("sigma_init", "NaN", "sigma_init must be a positive number within float32's range, got nan"),
    ("sigma_init", "-2.5", "got -2.5"),
    ("sigma_init", "0", "got 0"),
    ("sigma_init", "true", "got True"),
    ("sigma_init", "1" + "0" * 400, "got 1000"),
    ("sigma_init", "1" * 5000, "corrupt metadata: 'sigma_init' is not JSON simcli can read"),
    ("spec", "[1, 2]", "spec must be a mapping, got [1, 2]"),
    ("spec", json.dumps("gmm-ring8"), "spec must be a mapping, got 'gmm-ring8'"),
    ("architecture", "[1]", "architecture must be a mapping, got [1]"),
    ("architecture", DEEP, "corrupt metadata: 'architecture' is not JSON simcli can read"),
    ("images_seen", json.dumps("many"), "images_seen must be a non-negative integer, got 'many'"),
    ("step", "-1", "step must be a non-negative integer, got -1"),
])
def test_malformed_generator_metadata_is_one_line_naming_file_and_key(tmp_path, key, raw, fragment):
    path = write_network_file(tmp_path / "g.safetensors", MLP, raw={key: raw})
    with pytest.raises(UsageError) as info:
        load_generator(path)
    message = info.value.message
    assert message.startswith(str(path)) and fragment in message and "\n" not in message and len(message) < 300


def test_a_hostile_class_name_is_cut_short_in_the_message(tmp_path):
    path = write_network_file(tmp_path / "g.safetensors", MLP, raw={"architecture": json.dumps(
        {**TINY_EDM, "class_name": ["EDMPrecond"] * 100_000})})
    with pytest.raises(UsageError, match="unknown EDM network class") as info:
        load_generator(path)
    assert len(info.value.message) < 300


def test_teacher_file_with_deeply_nested_architecture_is_refused(tmp_path):
    path = write_network_file(tmp_path / "t.safetensors", TINY_EDM, TEACHER_FORMAT,
                              raw={"architecture": DEEP, "sigma_init": None, "spec": None})
    with pytest.raises(UsageError, match="corrupt metadata: 'architecture'"):
        load_native_teacher(path)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_weights_are_refused_naming_the_file_and_tensor(tmp_path, value):
    gen = write_network_file(tmp_path / "g.safetensors", MLP, poison=value)
    with pytest.raises(UsageError, match=r"the weights hold NaN or Inf values \(1 of 5 tensors: net\.3\.weight\)") as info:
        load_generator(gen)
    assert info.value.message.startswith(str(gen))
    teacher = write_network_file(tmp_path / "t.safetensors", TINY_EDM, TEACHER_FORMAT, poison=value)
    with pytest.raises(UsageError, match="model.dec.8x8_aux_conv.weight"):
        load_native_teacher(teacher)


def test_nonfinite_weights_of_an_edm_pickle_are_refused(tmp_path):
    kwargs = {**TINY_DDPMPP, "label_dim": 0}
    net = build_edm_network("EDMPrecond", kwargs)
    with torch.no_grad():
        net.model.enc["8x8_conv"].weight[0, 0, 0, 0] = math.nan
    path = write_edm_pickle(tmp_path / "nan.pkl", net, kwargs)
    with pytest.raises(UsageError, match=r"NaN or Inf values \(1 of \d+ tensors: model\.enc\.8x8_conv\.weight\)"):
        load_edm_pickle(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("where", [0, 1, 4_999, 77_777, 99_999])
def test_finite_weight_check_finds_one_nan_anywhere(dtype, where):
    tensor = torch.ones(100_000, dtype=dtype)
    check_finite_weights({"w": tensor, "steps": torch.arange(3)}, "x")  # all finite: no error
    tensor[where] = math.nan
    with pytest.raises(UsageError, match=r"1 of 2 tensors: w\)"):
        check_finite_weights({"w": tensor, "steps": torch.arange(3)}, "x")


def test_large_finite_weights_pass_the_check():
    assert check_finite_weights({"w": torch.full((10,), 3e38), "h": torch.full((10,), 65504.0, dtype=torch.float16)}, "x") is None


# ---- memory of one forward -------------------------------------------------------------------------------------


def _edm(resolution: int, attention: list[int]) -> dict:
    return {"kind": "edm", "class_name": "EDMPrecond",
            "init_kwargs": {**TINY_DDPMPP, "label_dim": 0, "img_resolution": resolution, "attn_resolutions": attention}}


@pytest.mark.parametrize("resolution", [64, 256])
def test_forward_memory_counts_attention_over_every_pixel(resolution):
    """The SongUNet decoder attends over every pixel of its lowest level (here r/2): float32 scores of (r/2)^4
    entries, alive with their softmax; the rest is small beside them."""
    scores = (resolution // 2) ** 4 * 4
    peak = forward_memory(meta_network(_edm(resolution, [])))
    assert 2 * scores <= peak <= 6 * scores


def test_forward_memory_of_a_small_network():
    mlp = forward_memory(meta_network(MLP))
    assert 0 < mlp < 2**16  # a few [1, 8] activations


def test_an_architecture_too_big_for_this_machine_is_refused_before_allocating(tmp_path, monkeypatch):
    """A small pickle recording img_resolution 512: few parameters, activations of GiBs (issue 16's 4096 case)."""
    kwargs = {**TINY_DDPMPP, "label_dim": 0, "img_resolution": 512}
    path = write_edm_pickle(tmp_path / "wide.pkl", build_edm_network("EDMPrecond", kwargs), kwargs)
    assert path.stat().st_size < 1_000_000
    monkeypatch.setattr(registry, "available_memory", lambda: 2**30)  # 1 GiB
    monkeypatch.setattr(registry, "_device_memory", lambda: 0)
    devices: list[str] = []
    build = registry.build_network
    monkeypatch.setattr(registry, "build_network", lambda a: devices.append(torch.empty(0).device.type) or build(a))
    with pytest.raises(UsageError) as info:
        load_edm_pickle(path)
    message = info.value.message
    assert message.startswith(f"{path}: the recorded architecture needs about") and "more than the 1.0 GiB" in message
    assert devices == ["meta"]  # nothing was built for real
    monkeypatch.setattr(registry, "available_memory", lambda: 2**50)
    net, _ = load_edm_pickle(path)
    assert net.img_resolution == 512


def test_available_memory_is_at_most_what_meminfo_says():
    available = registry.available_memory()
    with open("/proc/meminfo") as f:
        meminfo = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert available is not None and 0 < available <= meminfo * 1.1


# ---- a snapshot removed while being read -------------------------------------------------------------------------


def _run_with_snapshots(tmp_path, *kimgs: int):
    run = tmp_path / "run"
    run.mkdir()
    for kimg in kimgs:
        write_network_file(generator_path(run, kimg * 1000), MLP, raw={"images_seen": str(kimg * 1000)})
    return run


def test_a_snapshot_pruned_between_listing_and_reading_is_listed_again(tmp_path, monkeypatch):
    run = _run_with_snapshots(tmp_path, 1)
    real, calls = snapshots.load_generator_file, []

    def pruned_under_us(path):
        calls.append(path.name)
        if len(calls) == 1:  # a run writes a newer snapshot and prunes this one (keep_generators = 1)
            write_network_file(generator_path(run, 2000), MLP, raw={"images_seen": "2000"})
            path.unlink()
        return real(path)

    monkeypatch.setattr(snapshots, "load_generator_file", pruned_under_us)
    net, meta, file = load_generator(run)
    assert calls == ["generator-0000001.000.safetensors", "generator-0000002.000.safetensors"]
    assert file == generator_path(run, 2000) and meta["images_seen"] == 2000


def test_snapshots_that_keep_vanishing_fail_with_one_line(tmp_path, monkeypatch):
    run = _run_with_snapshots(tmp_path, 1)
    real, count = snapshots.load_generator_file, [0]

    def always_pruned(path):
        count[0] += 1
        write_network_file(generator_path(run, 1000 * (count[0] + 1)), MLP)
        path.unlink()
        return real(path)

    monkeypatch.setattr(snapshots, "load_generator_file", always_pruned)
    with pytest.raises(RunFailed, match=f"removed while being read, {snapshots.READ_ATTEMPTS} times in a row"):
        load_generator(run)
    assert count[0] == snapshots.READ_ATTEMPTS


def test_generator_choice_names_the_newest_snapshot_and_the_best(tmp_path):
    run = _run_with_snapshots(tmp_path, 1, 2)
    newest = generator_path(run, 2000)
    assert generator_choice(run, newest) == {"generator": str(newest), "generator_chosen": "the newest snapshot",
                                             "best_generator": None}
    (run / "generator-best.safetensors").write_bytes(newest.read_bytes())
    assert generator_choice(run, newest)["best_generator"] == str(run / "generator-best.safetensors")
    assert generator_choice(newest, newest) == {"generator": str(newest), "generator_chosen": "the file given",
                                                "best_generator": None}


# ---- samples checked finite ------------------------------------------------------------------------------------


def test_nonfinite_samples_are_named_by_seed():
    x = torch.zeros(6, 3, 2, 2)
    x[1, 0, 0, 0], x[4, 2, 1, 1] = math.nan, -math.inf
    assert nonfinite_seeds(x, range(10, 16)) == [11, 14]
    with pytest.raises(RunFailed, match=r"^generator g gave NaN or Inf for 2 of 6 seeds \(11, 14\); nothing was written$"):
        check_finite(x, range(10, 16), "generator g", "nothing was written", "hint")
    check_finite(torch.zeros(3, 2), [0, 1, 2], "g", "-", "-")  # finite: no error


# ---- the teacher probe (distill, before the run directory is touched) ---------------------------------------------


def _probe_spec(teacher: str, method: str = "sim"):
    from simcli.config.resolve import resolve_spec
    from simcli.teachers.registry import describe_teacher_name

    return resolve_spec(teacher, describe_teacher_name, preset="tiny", flags={"loss": {"method": method}})[0]


def test_probe_sigmas_are_sigma_init_and_the_medians_of_the_run_noise(tmp_path):
    from simcli.distill.teacher_probe import probe_sigmas

    sim = probe_sigmas(_probe_spec("gmm-ring8"))
    spec = _probe_spec("gmm-ring8")
    assert sim == pytest.approx([spec.generator.sigma_init, math.exp(spec.online.noise.p_mean),
                                 math.exp(spec.generator.noise.p_mean)])
    sid = _probe_spec("gmm-ring8", "sid").generator.noise  # u ~ U(0, t_max/1000) on the Karras schedule: median u
    a, b = sid.sigma_max ** (1 / sid.rho), sid.sigma_min ** (1 / sid.rho)
    expected = (a + (1 - sid.t_max / 2000) * (b - a)) ** sid.rho
    assert probe_sigmas(_probe_spec("gmm-ring8", "sid"))[2] == pytest.approx(expected)


@pytest.mark.parametrize("label_dim", [0, 3])
def test_the_probe_refuses_a_teacher_whose_outputs_overflow(tmp_path, label_dim):
    from simcli.distill.teacher_probe import check_teacher_finite
    from simcli.teachers.registry import load_teacher

    architecture = {**TINY_EDM, "init_kwargs": {**TINY_EDM["init_kwargs"], "label_dim": label_dim}}
    good = write_network_file(tmp_path / "good.safetensors", architecture, TEACHER_FORMAT)
    bad = write_network_file(tmp_path / "bad.safetensors", architecture, TEACHER_FORMAT, scale=1e30)
    teacher = load_teacher(str(good))
    teacher.denoiser.train()
    rng = torch.get_rng_state()
    check_teacher_finite(_probe_spec(str(good)), teacher, torch.device("cpu"))  # finite: no error
    assert teacher.denoiser.training and torch.equal(torch.get_rng_state(), rng)  # left as it was
    with pytest.raises(UsageError, match=rf"^teacher {bad} gives NaN or Inf outputs at sigma 2\.5, 0\.3012, 0\.0302 "):
        check_teacher_finite(_probe_spec(str(bad)), load_teacher(str(bad)), torch.device("cpu"))


@pytest.mark.parametrize(("dtype", "loader"), [
    (torch.int8, load_generator), (torch.float64, load_generator), (torch.float16, load_generator),
    (torch.int8, "teacher"), (torch.float64, "teacher"),
])
def test_weights_of_another_dtype_are_refused_not_cast(tmp_path, dtype, loader):
    """int8 codes would be read as numbers and float64 values cast to float32 after the finite check (1e300 -> Inf);
    simcli writes float32, so another dtype is refused naming the tensor, both dtypes and how to convert."""
    fmt = TEACHER_FORMAT if loader == "teacher" else "simcli-generator/1"
    poison = 1e300 if dtype == torch.float64 else None
    path = write_network_file(tmp_path / "w.safetensors", MLP, fmt, dtype=dtype, poison=poison)
    load = load_native_teacher if loader == "teacher" else load_generator
    with pytest.raises(UsageError) as info:
        load(path)
    message = info.value.message
    assert message.startswith(str(path)) and "1 with other dtypes (net.3.weight" in message
    assert f"{dtype} in the file vs torch.float32 here" in message and "\n" not in message
    assert info.value.hint == registry.NATIVE_DTYPE_HINT


def test_a_shape_mismatch_keeps_its_own_hint(tmp_path):
    state = network_weights(MLP)
    state["net.3.weight"] = torch.zeros(3, 3)
    with pytest.raises(UsageError, match=r"1 with other shapes \(net.3.weight \[3, 3\]") as info:
        registry.network_with_weights(MLP, state, "g.safetensors", dtypes=True, dtype_hint=registry.NATIVE_DTYPE_HINT)
    assert info.value.hint != registry.NATIVE_DTYPE_HINT
