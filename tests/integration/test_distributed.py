"""Runs shared out over processes (gloo on the CPU) against the same runs in one process.

The same global batch and micro-batch give the same run for any number of processes: the same losses, the same
weights, the same evaluation; a run started with 2 processes resumes with 1. Each process is started the way
torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins with simcli.world.join_world.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from simcli.config.resolve import resolve_spec
from simcli.distill.loop import run_distillation
from simcli.eval.during_training import make_evaluator
from simcli.teachers.registry import describe_teacher_name
from simcli.world import World, join_world, leave_world
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edm_spec(teacher: Path, steps: int, *sets: str):
    return tiny_edm_spec(teacher, steps, *sets, snapshot_every_kimg=0.04)


def gmm_spec(steps: int, *sets: str):
    spec, _ = resolve_spec(
        "gmm-ring8", describe_teacher_name, preset="tiny",
        flags={"training": {"duration_steps": steps, "batch_size": 64, "batch_gpu": 16}},
        sets=["logging.status_every_kimg=0.064", "logging.eval_every_kimg=0.32", "evaluation.num_samples=500",
              "evaluation.batch_size=100", "teacher_fit.steps=50", *sets],
    )
    return spec


def _process(rank: int, size: int, port: int, spec, run_dir: Path, evaluate: bool) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    world = join_world("cpu")
    try:
        run_distillation(spec, run_dir, make_evaluator=make_evaluator if evaluate else None, world=world)
    finally:
        leave_world(world)


def run_processes(size: int, spec, run_dir: Path, evaluate: bool = False) -> None:
    if size == 1:
        run_distillation(spec, run_dir, make_evaluator=make_evaluator if evaluate else None, world=World())
        return
    mp.spawn(_process, args=(size, free_port(), spec, run_dir, evaluate), nprocs=size, join=True)


def records(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def assert_same_losses(a: Path, b: Path, steps: int) -> None:
    ra, rb = records(a, "status"), records(b, "status")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, steps + 1))
    for x, y in zip(ra, rb, strict=True):
        for key in ("loss_online", "loss_generator"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-9), (x["step"], key)


def assert_same_weights(a: Path, b: Path, name: str) -> None:
    wa, wb = load_file(a / name), load_file(b / name)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny.pkl")


def test_two_processes_give_the_one_process_run(tmp_path, teacher):
    spec = edm_spec(teacher, 10)
    run_processes(1, spec, tmp_path / "one")
    run_processes(2, spec, tmp_path / "two")
    assert_same_losses(tmp_path / "one", tmp_path / "two", 10)
    assert_same_weights(tmp_path / "one", tmp_path / "two", "generator-0000000.080.safetensors")
    one = torch.load(tmp_path / "one" / "state-0000000.080.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "state-0000000.080.pt", weights_only=True)
    for net in ("generator", "online", "ema"):
        for key, value in one[net].items():
            torch.testing.assert_close(value, two[net][key], rtol=1e-5, atol=1e-6, msg=f"{net}.{key}")
    assert one["progress"]["micro_batch"] == two["progress"]["micro_batch"] == 4
    # Only rank 0 wrote: one metrics record per iteration, not two.
    assert len(records(tmp_path / "two", "status")) == 10


def test_a_run_started_with_two_processes_resumes_with_one(tmp_path, teacher):
    run_processes(1, edm_spec(teacher, 10), tmp_path / "straight")
    run_processes(2, edm_spec(teacher, 5), tmp_path / "resumed")
    run_processes(1, edm_spec(teacher, 10), tmp_path / "resumed")
    assert_same_losses(tmp_path / "straight", tmp_path / "resumed", 10)
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed", "generator-0000000.080.safetensors")


def test_evaluation_is_shared_out_and_gives_the_one_process_values(tmp_path):
    spec = gmm_spec(10)
    run_processes(1, spec, tmp_path / "one", evaluate=True)
    run_processes(2, spec, tmp_path / "two", evaluate=True)
    ea, eb = records(tmp_path / "one", "eval"), records(tmp_path / "two", "eval")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [5, 10]
    for x, y in zip(ea, eb, strict=True):
        assert x["n"] == y["n"] == 500
        for key in ("mmd", "sw2", "precision", "mode_weight_l1"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-7), key


def test_micro_batches_the_processes_cannot_share_are_refused(tmp_path, teacher):
    from simcli.distill.batches import resolve_micro_batch
    from simcli.errors import UsageError

    assert resolve_micro_batch(8, 4, 2, None) == (4, [])
    assert resolve_micro_batch(8, None, 2, None) == (4, [])
    assert resolve_micro_batch(8, None, 1, 4) == (4, [])  # a 2-process run resumed by 1 keeps its micro-batch
    micro, warnings = resolve_micro_batch(8, None, 4, 8)  # one micro-batch of 8 cannot be shared by 4
    assert micro == 2 and "--batch-gpu 8" in warnings[0]
    with pytest.raises(UsageError, match="2 micro-batches cannot be shared by 4 processes"):
        resolve_micro_batch(8, 4, 4, None)
    with pytest.raises(UsageError, match="cannot be shared by 3 processes"):
        resolve_micro_batch(8, None, 3, None)


def test_torchrun_launches_one_run_that_rank_0_reports(tmp_path, teacher):
    """The command line under torchrun: one JSON document, one metrics log, the run shared by 2 processes."""
    import subprocess
    import sys

    def distill(out: Path, *launcher: str) -> subprocess.CompletedProcess:
        args = ["-m", "simcli", "distill", "--teacher", str(teacher), "--out", str(out), "--steps", "4",
                "--batch-size", "8", "--batch-gpu", "4", "--device", "cpu", "--preset", "tiny", "--json",
                "--set", "logging.status_every_kimg=0.008", "--set", "logging.grid_samples=0"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env=env, timeout=300)

    two = distill(tmp_path / "two", "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)  # one document: rank 1 prints nothing
    assert summary["processes"] == 2 and summary["micro_batch"] == 4 and summary["steps"] == 4
    assert two.stderr.count("starting at iteration 0") == 1
    assert [r["processes"] for r in records(tmp_path / "two", "status")] == [2] * 4
    one = distill(tmp_path / "one")
    assert one.returncode == 0, one.stderr
    assert_same_losses(tmp_path / "one", tmp_path / "two", 4)
