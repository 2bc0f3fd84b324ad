"""Processes of a run that stop answering (issue 16, item 7), at the level of simcli.world: a killed process, a
stopped (SIGSTOP) one, a stop request while a collective waits for a stopped one, and a lost rank 0.

Each process is started the way torchrun starts it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, and
the store held outside the workers, by this test as by torchrun's agent) and joins with simcli.world.join_world.
Every process writes what its collective ended with (and after how many seconds) into a JSON file.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from simcli.distill.stop import StopRequest
from simcli.peers import OBSERVE_S, STOP_SILENCE_S, PeerFailed, PeerLost
from simcli.world import join_world, leave_world


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process(rank: int, size: int, port: int, victim: int, how: str, timeout_min: float, out: str, term_after: float | None) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True"})
    torch.set_num_threads(1)
    stop = StopRequest(announce=lambda text: None)
    signal.signal(signal.SIGTERM, stop.handle)
    world = join_world("cpu", timeout_min, stop)
    cpu = torch.device("cpu")
    assert world.sum_floats([1.0], cpu) == [float(size)]  # every process joined and answers
    if rank == victim:
        os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    if term_after is not None:  # a SIGTERM (as torchrun passes one on) while the collective waits
        threading.Timer(term_after, os.kill, (os.getpid(), signal.SIGTERM)).start()
    start = time.monotonic()
    try:
        world.sum_floats([float(rank)], cpu)
        result = {"outcome": "done"}
    except PeerLost as exc:
        result = {"outcome": "PeerLost", "ranks": list(exc.ranks), "message": exc.message, "stopped": exc.stopped,
                  "report": exc.report, "code": exc.exit_code}
    except PeerFailed as exc:
        result = {"outcome": "PeerFailed", "code": exc.exit_code}
    result["seconds"] = time.monotonic() - start
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    leave_world(world)


def run_world(tmp_path: Path, size: int, victim: int, how: str, timeout_min: float = 5.0,
              term_after: float | None = None, limit_s: float = 90.0) -> dict[int, dict]:
    """Start `size` processes; `victim` kills (how='kill') or stops (how='stop') itself after a first collective;
    returns the others' results. The stopped victim is killed at the end."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=60))  # held here, as torchrun's agent holds it
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_process, args=(r, size, port, victim, how, timeout_min, str(tmp_path),
                                                     term_after if r == 0 else None)) for r in range(size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + limit_s
    try:
        for r, p in enumerate(procs):
            if r != victim:
                p.join(max(0.1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        del store
    return {r: json.loads((tmp_path / f"{r}.json").read_text()) for r in range(size)
            if r != victim and (tmp_path / f"{r}.json").is_file()}


def test_a_killed_process_is_named_by_rank_0_at_once(tmp_path):
    results = run_world(tmp_path, 2, victim=1, how="kill")
    r0 = results[0]
    assert r0["outcome"] == "PeerLost" and r0["ranks"] == [1] and r0["code"] == 1 and r0["report"], r0
    assert r0["message"] == "rank 1 stopped answering (killed or hung): its connection closed", r0
    assert r0["seconds"] < OBSERVE_S + 3, r0  # the failed collective, then at most OBSERVE_S of watching the beats


def test_a_stopped_process_is_named_after_the_collective_timeout_and_the_others_end_quietly(tmp_path):
    # 3 processes: rank 1 is stopped; rank 0 names it after 0.05 minutes (3 s); rank 2, which waits too, ends
    # quietly once rank 0 has left, with rank 0's exit code.
    results = run_world(tmp_path, 3, victim=1, how="stop", timeout_min=0.05)
    r0, r2 = results[0], results[2]
    assert r0["outcome"] == "PeerLost" and r0["ranks"] == [1] and r0["code"] == 1 and not r0["stopped"], r0
    assert r0["message"] == ("rank 1 stopped answering (killed or hung): no sign of life for 3 s "
                             "(training.collective_timeout_min 0.05)"), r0
    assert 3.0 <= r0["seconds"] < 3.0 + 3, r0
    assert r2 == {"outcome": "PeerFailed", "code": 1, "seconds": r2["seconds"]}, r2
    assert r2["seconds"] < r0["seconds"] + 5, (r0, r2)


def test_a_stop_while_a_collective_waits_for_a_stopped_process_is_served(tmp_path):
    # The collective timeout is 5 minutes; a SIGTERM 1 s into the wait ends it once rank 1 was silent for
    # STOP_SILENCE_S, with the signal's exit code (the loop then saves the last finished iteration).
    results = run_world(tmp_path, 2, victim=1, how="stop", timeout_min=5.0, term_after=1.0)
    r0 = results[0]
    assert r0["outcome"] == "PeerLost" and r0["stopped"] and r0["ranks"] == [1] and r0["code"] == 143, r0
    assert r0["message"] == "rank 1 stopped answering (killed or hung): no sign of life for 5 s", r0
    assert STOP_SILENCE_S <= r0["seconds"] < STOP_SILENCE_S + 3, r0


def test_when_rank_0_is_lost_the_lowest_process_answering_says_so(tmp_path):
    results = run_world(tmp_path, 2, victim=0, how="stop", timeout_min=0.05)
    r1 = results[1]
    assert r1["outcome"] == "PeerLost" and r1["ranks"] == [0] and r1["report"] and r1["code"] == 1, r1
    assert r1["message"].startswith("rank 0 stopped answering (killed or hung): no sign of life for "), r1
    assert 3.0 <= r1["seconds"] < 3.0 + OBSERVE_S + 3, r1


@pytest.mark.parametrize("ranks,text", [((1,), "rank 1"), ((3, 1), "ranks 1 and 3"), ((1, 2, 5), "ranks 1, 2 and 5"),
                                        (tuple(range(1, 11)), "ranks 1, 2, 3, 4, 5, 6, 7, 8 and 2 more")])
def test_ranks_are_named_in_words(ranks, text):
    from simcli.peers import describe_ranks

    assert describe_ranks(ranks) == text
