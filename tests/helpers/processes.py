"""Runs shared out over processes (gloo on the CPU), started the way torchrun starts them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joined with simcli.world.join_world; and comparisons of their records."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from simcli.distill.loop import run_distillation
from simcli.eval.during_training import make_evaluator
from simcli.world import World, join_world, leave_world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


