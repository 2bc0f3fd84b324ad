"""Under torchrun, which process says an error: rank 0 what all share, any rank what is its own."""

from __future__ import annotations

import pytest
import typer

import simcli.world as world
from simcli.cli.errors import reported_errors
from simcli.errors import RunFailed, Stopped, UsageError
from simcli.peers import PeerFailed


def said(capsys, rank: int, joined: bool, exc: Exception, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(world, "_JOINED", [joined])
    with pytest.raises(typer.Exit) as info, reported_errors():
        raise exc
    return info.value.exit_code, capsys.readouterr().err


def test_bad_input_before_joining_is_said_once_by_rank_0(capsys, monkeypatch):
    assert said(capsys, 0, False, UsageError("bad key", hint="fix it"), monkeypatch) == (
        2, "simcli: error: bad key (hint: fix it)\n")
    assert said(capsys, 1, False, UsageError("bad key"), monkeypatch) == (2, "")


def test_after_joining_a_process_says_its_own_bad_input_with_its_rank(capsys, monkeypatch):
    code, err = said(capsys, 3, True, UsageError("no embedding store in /local/cache"), monkeypatch)
    assert code == 2 and err == "simcli: error: rank 3: no embedding store in /local/cache\n"


def test_what_rank_0_reports_for_all_is_not_repeated(capsys, monkeypatch):
    assert said(capsys, 2, True, PeerFailed("rank 0 failed: x", 1), monkeypatch) == (1, "")
    assert said(capsys, 2, True, Stopped("stopped by SIGTERM", 143), monkeypatch) == (143, "")
    code, err = said(capsys, 2, True, RunFailed("disk full"), monkeypatch)
    assert code == 1 and "rank 2: disk full" in err


def test_a_lost_process_is_said_once(capsys, monkeypatch):
    from simcli.peers import PeerLost

    # rank 0 names the silent process (when the loop had nothing to add: before the first iteration)
    code, err = said(capsys, 0, True, PeerLost([1], "its connection closed"), monkeypatch)
    assert code == 1 and err == ("simcli: error: rank 1 stopped answering (killed or hung): its connection closed "
                                 "(hint: run the same command again to resume)\n")
    # the other processes end quietly, unless rank 0 is the one lost and this is the lowest process still answering
    assert said(capsys, 2, True, PeerLost([0], "no sign of life for 300 s", report=False), monkeypatch) == (1, "")
    code, err = said(capsys, 1, True, PeerLost([0], "no sign of life for 300 s", report=True), monkeypatch)
    assert code == 1 and err.startswith("simcli: error: rank 1: rank 0 stopped answering (killed or hung): no sign of "
                                        "life for 300 s"), err


def test_running_out_of_memory_is_one_line_with_what_to_lower(capsys, monkeypatch):
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 3400000000 bytes. Error code 12 (Cannot allocate memory)")
    code, err = said(capsys, 0, False, cpu, monkeypatch)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("simcli: error: out of memory: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator")
    assert "(hint: lower --batch-gpu (or --batch-size)" in err
    code, err = said(capsys, 0, False, MemoryError(), monkeypatch)
    assert (code, err.split(" (hint")[0]) == (1, "simcli: error: out of memory")
    with pytest.raises(RuntimeError, match="a bug"), reported_errors():  # other RuntimeErrors are not mapped
        raise RuntimeError("a bug")
