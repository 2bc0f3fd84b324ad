"""Building the store of text embeddings (simcli.data.embedding_build), issue 16: a stop request ends the build at
the next batch keeping what is encoded, small durable shards, byte-reproducible files, and a builder that waits for
another one says whose build it waits for and how far it is."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

import simcli.data.embedding_build as embedding_build
from simcli.data.embedding_build import BuildStopped, build_embedding_store, stored_prompts
from simcli.data.text_embeddings import INDEX, LOCK, EmbeddingStore
from simcli.errors import UsageError
from tests.unit.test_text_embeddings import PROMPTS, Counting, build, expected, fake_encode

fcntl = pytest.importorskip("fcntl")


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != LOCK}


def test_a_stop_request_ends_the_build_at_the_next_batch_keeping_everything_encoded(tmp_path):
    counting = Counting()
    with pytest.raises(BuildStopped) as info:
        build(tmp_path, encode=counting, should_stop=lambda: counting.calls >= 5)
    assert counting.calls == 5  # no batch after the request
    stopped = info.value
    assert (stopped.stored, stopped.total, stopped.holder, stopped.directory) == (320, 1000, None, tmp_path)
    assert stored_prompts(tmp_path) == 320 and not (tmp_path / INDEX).exists()
    with pytest.raises(UsageError, match="no index.json"):
        EmbeddingStore.open(tmp_path)
    again = Counting()
    store = build(tmp_path, encode=again, batch_size=37)
    assert again.seen == PROMPTS[320:]  # what was stored is not encoded again
    assert torch.equal(store.get(range(1000))[0], expected(PROMPTS)[0])


def test_a_killed_build_loses_at_most_one_small_shard(tmp_path):
    """The default shards hold at most 1024 prompts: a build killed after 2,560 prompts (a second Ctrl-C) keeps 2,048
    of them, where one shard of 256 MiB kept none."""
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 3)]
    with pytest.raises(KeyboardInterrupt):
        build_embedding_store(tmp_path, prompts, Counting(fail_after=40), batch_size=64, dtype=torch.float32)
    assert stored_prompts(tmp_path) == 2048
    store = build_embedding_store(tmp_path, prompts, fake_encode, batch_size=64, dtype=torch.float32)
    assert [s["stop"] - s["start"] for s in store.index["shards"]] == [1024, 1024, 952]


def test_store_files_are_byte_reproducible_however_the_build_went(tmp_path):
    """Built straight, built again, and built in batches of 37 with two stops: the same bytes in every file."""
    straight = build(tmp_path / "a", key="k")
    assert len(straight.index["shards"]) >= 10
    build(tmp_path / "b", key="k")
    for calls in (3, 11):
        counting = Counting()
        with pytest.raises(BuildStopped):
            build(tmp_path / "c", encode=counting, batch_size=37, key="k", should_stop=lambda c=counting, n=calls: c.calls >= n)
    build(tmp_path / "c", batch_size=37, key="k")
    a = files(tmp_path / "a")
    assert a == files(tmp_path / "b") and a == files(tmp_path / "c")
    index = json.loads(a[INDEX])
    assert a[INDEX].decode() == json.dumps(index, indent=2, sort_keys=True) + "\n"


def hold_lock(directory: Path, record: dict) -> object:
    """Take the store's build lock as another builder would (flock conflicts between two opens of a file even in one
    process) and record `record` in it; the returned file holds the lock until it is closed."""
    directory.mkdir(parents=True, exist_ok=True)
    fh = open(directory / LOCK, "a+b")
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    fh.truncate(0)
    fh.write(json.dumps(record).encode())
    fh.flush()
    return fh


def test_a_builder_that_waits_says_whose_build_and_stops_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding_build, "LOCK_POLL_S", 0.01)
    monkeypatch.setattr(embedding_build, "WAIT_REPORT_S", 0.05)
    counting = Counting()
    with pytest.raises(BuildStopped):
        build(tmp_path, encode=counting, should_stop=lambda: counting.calls >= 3)  # 192 prompts stored
    before = files(tmp_path)
    holder = hold_lock(tmp_path, {"pid": 4242, "host": "node7", "since": "2026-12-07T10:00:00+00:00"})
    waits: list[tuple] = []
    started = time.monotonic()
    with pytest.raises(BuildStopped) as info:
        build(tmp_path, encode=lambda p: pytest.fail("encoded while waiting"), on_wait=lambda *a: waits.append(a),
              should_stop=lambda: len(waits) >= 3)
    holder.close()
    who = "PID 4242 on host node7 (since 2026-12-07T10:00:00+00:00)"
    assert info.value.holder == who and (info.value.stored, info.value.total) == (192, 1000)
    assert [w[:3] for w in waits] == [(who, 192, 1000)] * 3
    assert waits[0][3] < 0.05 and waits[2][3] >= 0.1 and time.monotonic() - started < 5  # the first at once
    assert files(tmp_path) == before  # the waiting builder wrote nothing


def test_a_waiting_builder_reports_the_others_progress_then_reuses_its_store(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding_build, "LOCK_POLL_S", 0.01)
    monkeypatch.setattr(embedding_build, "WAIT_REPORT_S", 0.05)
    other = threading.Thread(target=build, args=(tmp_path,), kwargs={
        "encode": lambda p: time.sleep(0.03) or fake_encode(p), "shard_prompts": 64})  # 16 batches: 0.5 s
    other.start()
    while not (tmp_path / LOCK).is_file() or not (tmp_path / LOCK).read_text():
        time.sleep(0.005)
    waits: list[tuple] = []
    store = build(tmp_path, encode=lambda p: pytest.fail("encoded a store that was built"), on_wait=lambda *a: waits.append(a))
    other.join()
    assert len(waits) >= 3 and all(w[0].startswith(f"PID {os.getpid()} on host ") for w in waits)
    stored = [w[1] for w in waits]
    assert stored == sorted(stored) and stored[-1] > stored[0] and {w[2] for w in waits} == {1000}
    assert len(store) == 1000 and torch.equal(store.get(range(1000))[0], expected(PROMPTS)[0])
