"""training.sharding fsdp (issue 18): FSDP2 over 2 gloo processes on the CPU against the same runs unsharded.

Sharding changes where the numbers live, not what they are: the losses of a sharded run are those of the unsharded
run up to rounding. They are not bit for bit the same: FSDP's hooks change the order in which autograd sums a
tensor's gradient contributions, which moves gradients by about 1e-9, and Adam's first steps divide by gradients
that small for some weights, so a loss that is itself a small difference (the SIM loss at iteration 2 is 0.004
against 0.2 elsewhere) moves by 2e-4 of its own value; measured against the size of the run's losses (the largest
over the run) every loss agrees to 1e-5. A sharded run resumed with the same number of processes repeats the
uninterrupted sharded run exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simcli.config.spec import RunSpec
from simcli.rundir.snapshots import DCP_METADATA_FILE, SHARDED_HEADER_FILE
from simcli.sampling.generator import load_generator
from tests.helpers.processes import free_port, records, run_processes
from tests.helpers.records import live_status_records, signal_when
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
LOSSES = ("loss_online", "loss_generator")


def spec(teacher: Path, steps: int, *sets: str) -> RunSpec:
    return tiny_edm_spec(teacher, steps, *sets, snapshot_every_kimg=0.04)


def fsdp(teacher: Path, steps: int, *sets: str) -> RunSpec:
    return spec(teacher, steps, "training.sharding=fsdp", *sets)


def assert_losses_agree(a: Path, b: Path, steps: int, exact: bool = False) -> None:
    """Every status record's losses: equal (exact), or within 1e-5 of the size of the run's losses."""
    ra, rb = records(a, "status"), records(b, "status")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, steps + 1))
    for key in LOSSES:
        scale = max(abs(r[key]) for r in ra)
        for x, y in zip(ra, rb, strict=True):
            if exact:
                assert x[key] == y[key], (x["step"], key)
            else:
                assert abs(x[key] - y[key]) <= 1e-5 * scale, (x["step"], key, x[key], y[key])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny EDM teacher, and 10 iterations of it on 2 processes unsharded and sharded."""
    root = tmp_path_factory.mktemp("sharding")
    teacher = write_tiny_edm(root / "tiny.pkl")
    run_processes(2, spec(teacher, STEPS), root / "none")
    run_processes(2, fsdp(teacher, STEPS), root / "fsdp")
    return {"teacher": teacher, "none": root / "none", "fsdp": root / "fsdp"}


def test_sharded_losses_are_the_unsharded_ones(runs):
    assert_losses_agree(runs["none"], runs["fsdp"], STEPS)
    online = [(x["loss_online"], y["loss_online"]) for x, y in zip(records(runs["none"], "status"),
                                                                      records(runs["fsdp"], "status"), strict=True)]
    assert all(abs(a - b) <= 1e-5 * abs(a) for a, b in online)  # the online loss, relative to itself too


def test_sharded_states_are_folders_of_shards_and_the_generator_stays_one_file(runs):
    run = runs["fsdp"]
    states = sorted(p.name for p in run.iterdir() if p.name.startswith("state-"))
    assert states == ["state-0000000.040.dcp", "state-0000000.080.dcp"]
    files = sorted(p.name for p in (run / states[-1]).iterdir())
    assert files == sorted([DCP_METADATA_FILE, SHARDED_HEADER_FILE, "__0_0.distcp", "__1_0.distcp"])
    header = torch.load(run / states[-1] / SHARDED_HEADER_FILE, weights_only=True)
    assert header["progress"]["step"] == STEPS and json.loads(header["spec"])["training"]["sharding"] == "fsdp"
    # The EMA generator gathered whole, with the names and shapes of the unsharded run's, close to its values.
    name = "generator-0000000.080.safetensors"
    sharded, whole = load_file(run / name), load_file(runs["none"] / name)
    assert sharded.keys() == whole.keys()
    for key in whole:
        assert sharded[key].shape == whole[key].shape
        torch.testing.assert_close(sharded[key], whole[key], rtol=0, atol=2e-4, msg=key)
    net, meta, _ = load_generator(run / name, torch.device("cpu"))  # what `sample` and `eval` read
    assert meta["step"] == STEPS and not any(type(p).__name__ == "DTensor" for p in net.parameters())


@pytest.mark.parametrize("processes", [2, 1])
def test_a_sharded_run_resumes_with_two_processes_or_one(runs, tmp_path, processes):
    run = tmp_path / "resumed"
    run_processes(2, fsdp(runs["teacher"], 5), run)
    assert (run / "state-0000000.040.dcp").is_dir()
    run_processes(processes, fsdp(runs["teacher"], STEPS), run)  # one process: read the shards into whole networks
    assert_losses_agree(runs["fsdp"], run, STEPS, exact=processes == 2)
    assert_losses_agree(runs["none"], run, STEPS)


def test_an_unsharded_state_resumes_sharded(runs, tmp_path):
    run = tmp_path / "resumed"
    run_processes(1, spec(runs["teacher"], 5), run)
    assert (run / "state-0000000.040.pt").is_file()
    run_processes(2, fsdp(runs["teacher"], STEPS), run)
    assert (run / "state-0000000.080.dcp").is_dir()
    assert_losses_agree(runs["none"], run, STEPS)


def test_a_tiny_diffusers_pipeline_sharded_gives_the_unsharded_losses(tmp_path, monkeypatch):
    """An SD3 (MMDiT, flow) pipeline with random weights: its transformer blocks sharded, the prompts' store built
    once, the text grid drawn by rank 0 with the gathered EMA."""
    pytest.importorskip("diffusers")
    from simcli.config.resolve import resolve_spec
    from simcli.teachers.registry import describe_teacher_name
    from tests.helpers.tiny_pipelines import TINY_IMAGE_SIZE, write_tiny_pipeline

    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = write_tiny_pipeline("sd3", tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\na red car on the road\ntwo dogs in the snow\na cup of tea\n")

    def text_spec(sharding: str) -> RunSpec:
        found, _ = resolve_spec(
            f"diffusers:{pipeline}", describe_teacher_name,
            flags={"training": {"duration_steps": STEPS, "batch_size": 4, "batch_gpu": 2, "precision": "fp32",
                                "sharding": sharding}, "text": {"prompts": str(prompts)}},
            sets=[f"text.resolution={TINY_IMAGE_SIZE}", "logging.status_every_kimg=0.004", "logging.grid_samples=2",
                  "logging.snapshot_every_kimg=0.02"])
        return found

    run_processes(2, text_spec("none"), tmp_path / "none")
    run_processes(2, text_spec("fsdp"), tmp_path / "fsdp")
    assert_losses_agree(tmp_path / "none", tmp_path / "fsdp", STEPS)
    assert (tmp_path / "fsdp" / "state-0000000.040.dcp").is_dir()
    assert sorted(p.name for p in (tmp_path / "fsdp").glob("grid-*.png")) == sorted(
        p.name for p in (tmp_path / "none").glob("grid-*.png"))
    name = "generator-0000000.040.safetensors"
    sharded, whole = load_file(tmp_path / "fsdp" / name), load_file(tmp_path / "none" / name)
    assert sharded.keys() == whole.keys()
    for key in whole:
        torch.testing.assert_close(sharded[key], whole[key], rtol=0, atol=1e-4, msg=key)


def _torchrun(processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "simcli"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port()), "-m", "simcli"]


def _distill_args(teacher: Path, out: Path, steps: int) -> list[str]:
    return ["distill", "--teacher", str(teacher), "--preset", "tiny", "--out", str(out), "--steps", str(steps),
            "--batch-size", "8", "--batch-gpu", "4", "--device", "cpu", "--sharding", "fsdp",
            "--set", "logging.status_every_kimg=0.008", "--set", "logging.grid_samples=0",
            "--set", "logging.snapshot_every_kimg=1000"]


@pytest.mark.slow  # about 2 minutes: three torchrun launches
def test_a_sharded_run_stopped_by_sigterm_resumes_on_one_process_and_on_two(runs, tmp_path):
    steps, stopped = 60, tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(_torchrun(2) + _distill_args(runs["teacher"], stopped, steps), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        # torchrun passes the SIGTERM on to both workers
        code = signal_when(proc, lambda: len(live_status_records(stopped)) >= 3, signal.SIGTERM)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code != 0, stderr
    assert f'File "{REPO / "simcli"}' not in stderr, stderr  # torchrun's own traceback for its signal only
    lines = [line for line in stderr.splitlines() if line.startswith("simcli: stopped by SIGTERM")]
    assert len(lines) == 1, stderr  # rank 0 says it once
    state = [p for p in stopped.iterdir() if p.name.startswith("state-")]
    assert len(state) == 1 and state[0].suffix == ".dcp" and (state[0] / DCP_METADATA_FILE).is_file(), state
    step = torch.load(state[0] / SHARDED_HEADER_FILE, weights_only=True)["progress"]["step"]
    assert 3 <= step < steps and f"saved {state[0].name} (iteration {step})" in lines[0], lines[0]
    assert not [p for p in stopped.iterdir() if ".tmp-" in p.name]

    straight = tmp_path / "straight"  # the same spec, never stopped
    run_processes(2, RunSpec.model_validate(json.loads((stopped / "config.json").read_text())), straight)
    for processes in (1, 2):
        run = tmp_path / f"resumed-{processes}"
        shutil.copytree(stopped, run)
        done = subprocess.run(_torchrun(processes) + _distill_args(runs["teacher"], run, steps), cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        assert f"resuming from {state[0].name} at iteration {step}" in done.stderr
        assert_losses_agree(straight, run, steps, exact=processes == 2)
