"""The store of text embeddings (simcli.data.text_embeddings): exact round trips across shards, resume, refusals."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from simcli.data.embedding_build import build_embedding_store
from simcli.data.text_embeddings import INDEX, NULL, EmbeddingStore, embedding_store_key
from simcli.errors import RunFailed, UsageError
from simcli.nets.text_condition import TextCondition

L, C = 12, 16
PROMPTS = [" ".join(f"w{i}" for _ in range(i % 17)) or f"#{i}" for i in range(1000)]  # 1..16 words
SHARD_BYTES = 40_000  # ~8 tokens of 16 float32 per prompt: ~75 prompts per shard, 14 shards


def n_tokens(prompt: str) -> int:
    return min(L, 1 + len(prompt.split()))


def fake_encode(prompts: list[str]) -> TextCondition:
    """Deterministic embeds [n, L, C] from a hash of each prompt, 7.0 in the padding, and a prefix mask [n, L]."""
    embeds = torch.full((len(prompts), L, C), 7.0)
    mask = torch.zeros(len(prompts), L, dtype=torch.int64)
    for i, p in enumerate(prompts):
        seed = int(hashlib.sha256(p.encode()).hexdigest()[:12], 16)
        embeds[i, : n_tokens(p)] = torch.randn(n_tokens(p), C, generator=torch.Generator().manual_seed(seed))
        mask[i, : n_tokens(p)] = 1
    return TextCondition(embeds, mask)


def expected(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, mask, _ = fake_encode(prompts)
    return embeds * mask[..., None], mask


class Counting:
    """fake_encode that records the prompts it was given (the null prompt apart) and can fail after some calls."""

    def __init__(self, fail_after: int | None = None):
        self.seen: list[str] = []
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, prompts: list[str]):
        if prompts != [""]:
            if self.calls == self.fail_after:
                raise KeyboardInterrupt("killed")
            self.calls += 1
            self.seen += prompts
        return fake_encode(prompts)


def build(directory: Path, encode=fake_encode, prompts=PROMPTS, **kw) -> EmbeddingStore:
    kw = {"batch_size": 64, "dtype": torch.float32, "shard_bytes": SHARD_BYTES} | kw
    return build_embedding_store(directory, prompts, encode, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EmbeddingStore:
    return build(tmp_path_factory.mktemp("store"))


def test_get_returns_what_the_encoder_gave_in_the_order_asked_across_shards(store):
    shards = store.index["shards"]
    assert len(store) == 1000 and (store.max_tokens, store.dim) == (L, C) and len(shards) >= 4
    edges = [s["start"] for s in shards[1:]] + [s["stop"] - 1 for s in shards]
    indices = torch.cat([torch.tensor(edges), torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:200],
                         torch.tensor([5, 5, 999, 0])])
    embeds, mask, pooled = store.get(indices)
    want_embeds, want_mask = expected([PROMPTS[i] for i in indices.tolist()])
    assert embeds.dtype == torch.float32 and mask.dtype == torch.int64 and pooled is None
    assert torch.equal(embeds, want_embeds) and torch.equal(mask, want_mask)
    assert torch.equal(store.get(torch.tensor([3, 2]))[0], expected([PROMPTS[3], PROMPTS[2]])[0])
    assert store.get([])[0].shape == (0, L, C)
    with pytest.raises(IndexError):
        store.get([1000])


def test_null_prompt_and_index(store):
    embeds, mask, pooled = store.null()
    want_embeds, want_mask = expected([""])
    assert torch.equal(embeds, want_embeds) and torch.equal(mask, want_mask) and pooled is None
    index = json.loads((store.directory / INDEX).read_text())
    assert index["complete"] is True and index["count"] == 1000 and index["key"] == store.directory.name
    assert (index["max_tokens"], index["dim"], index["pooled_dim"], index["dtype"], index["null_prompt"]) == (L, C, 0, "float32", "")
    for s in index["shards"]:  # at most shard_bytes of tokens each, prompts whole
        assert s["tokens"] * C * 4 <= SHARD_BYTES and s["stop"] > s["start"]
    assert index["shards"][-1]["stop"] == 1000


def test_store_pickles_for_worker_processes(store):
    copy = pickle.loads(pickle.dumps(store))
    assert torch.equal(copy.get([7, 400])[0], store.get([7, 400])[0])


def test_bfloat16_by_default_within_bfloat16_rounding(tmp_path):
    progress = []
    store = build_embedding_store(tmp_path, PROMPTS[:300], fake_encode, batch_size=50,
                                  on_progress=lambda done, total: progress.append((done, total)))
    assert store.index["dtype"] == "bfloat16" and progress == [(50 * k, 300) for k in range(1, 7)]
    embeds, mask, _ = store.get(range(300))
    want, want_mask = expected(PROMPTS[:300])
    assert torch.equal(mask, want_mask) and torch.equal(embeds, want.bfloat16().float())
    torch.testing.assert_close(embeds, want, rtol=2**-8, atol=1e-6)


def test_a_complete_store_is_reused_without_encoding(tmp_path):
    first = build(tmp_path)
    calls = []
    again = build(tmp_path, encode=lambda p: calls.append(p) or fake_encode(p))
    assert calls == [] and again.index == first.index


def test_resume_encodes_only_the_missing_shards(tmp_path):
    full = build(tmp_path)
    last = full.index["shards"][-1]
    (tmp_path / INDEX).unlink()
    (tmp_path / last["file"]).unlink()
    with pytest.raises(UsageError, match="no index.json"):
        EmbeddingStore.open(tmp_path)
    counting = Counting()
    resumed = build(tmp_path, encode=counting, batch_size=37)
    assert counting.seen == PROMPTS[last["start"] :]
    assert resumed.index["shards"] == full.index["shards"]
    assert torch.equal(resumed.get(range(1000))[0], expected(PROMPTS)[0])


def test_a_killed_build_continues_after_its_last_whole_shard(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, encode=Counting(fail_after=9))  # 9 batches of 64 prompts, then killed
    files = sorted(p.name for p in tmp_path.iterdir())
    assert INDEX not in files and not [f for f in files if ".tmp-" in f]
    shards = build(tmp_path / "ref").index["shards"]
    written = [s for s in shards if s["file"] in files]
    assert written and len(written) < len(shards)
    counting = Counting()
    store = build(tmp_path, encode=counting)
    assert counting.seen == PROMPTS[written[-1]["stop"] :]
    assert torch.equal(store.get(range(1000))[0], expected(PROMPTS)[0])


def _race(directory: str, out: str) -> None:
    counting = Counting()
    store = build(Path(directory), encode=lambda p: time.sleep(0.01) or counting(p))  # 0.2 s: the builds overlap
    Path(out).write_text(json.dumps([len(counting.seen), store.index["shards"]]))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_two_processes_building_one_store_encode_it_once(tmp_path):
    """The second builder waits on the lock, then reuses the store: without the lock both would encode it all."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "store"), str(tmp_path / f"{k}.json"))) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    (n0, shards0), (n1, shards1) = (json.loads((tmp_path / f"{k}.json").read_text()) for k in range(2))
    assert sorted([n0, n1]) == [0, 1000] and shards0 == shards1


def test_other_prompts_in_the_directory_are_refused(tmp_path):
    build(tmp_path)
    with pytest.raises(UsageError, match="other prompts"):
        build(tmp_path, prompts=PROMPTS[:-1])
    (tmp_path / INDEX).unlink()
    with pytest.raises(UsageError, match="other prompts"):
        build(tmp_path, prompts=["x"] + PROMPTS[1:])


def _assert_refused(directory: Path, words: str, read: bool = False) -> None:
    with pytest.raises(UsageError, match=words) as info:
        EmbeddingStore.open(directory).get(range(1000)) if read else EmbeddingStore.open(directory)
    assert info.value.exit_code == 2 and "\n" not in info.value.message and str(directory) in info.value.hint


def test_corrupt_stores_are_refused(tmp_path):
    build(tmp_path)
    index_text = (tmp_path / INDEX).read_text()
    index = json.loads(index_text)
    shard = tmp_path / index["shards"][1]["file"]
    good = shard.read_bytes()
    shard.write_bytes(good[:-10])
    _assert_refused(tmp_path, "not the size|bytes, index.json says")
    shard.write_bytes(b"\x00" * len(good))
    _assert_refused(tmp_path, "unreadable", read=True)
    shard.write_bytes(good)
    (tmp_path / NULL).unlink()
    _assert_refused(tmp_path, "null.safetensors is missing")
    (tmp_path / INDEX).write_text(index_text[:-20])
    _assert_refused(tmp_path, "index.json is unreadable")
    for change in [{"complete": False}, {"format": "other/1"}, {"count": 999}, {"shards": index["shards"][1:]}, {"dim": None}]:
        (tmp_path / INDEX).write_text(json.dumps(index | change))
        _assert_refused(tmp_path, "index.json")


def test_a_damaged_shard_without_an_index_is_encoded_again(tmp_path):
    full = build(tmp_path)
    (tmp_path / INDEX).unlink()
    second = full.index["shards"][1]
    (tmp_path / second["file"]).write_bytes(b"junk")
    counting = Counting()
    store = build(tmp_path, encode=counting)
    assert counting.seen == PROMPTS[second["start"] :] and store.index["shards"] == full.index["shards"]


@pytest.mark.parametrize(
    ("encode", "words"),
    [
        (lambda p: TextCondition(fake_encode(p)[0], fake_encode(p)[1].flip(1)), "not a prefix of ones"),
        (lambda p: TextCondition(fake_encode(p)[0] * float("nan"), fake_encode(p)[1]), "non-finite"),
        (lambda p: TextCondition(fake_encode(p)[0][:, :, :3], fake_encode(p)[1]), r"\[L, C, P\]"),
        (lambda p: TextCondition(fake_encode(p)[0][:1], fake_encode(p)[1][:1]), "returned embeds"),
    ],
)
def test_faulty_encoders_are_refused(tmp_path, encode, words):
    first = [True]

    def faulty(prompts):  # the null prompt is encoded well, the prompts badly
        if first.pop() if first else False:
            return fake_encode(prompts)
        return encode(prompts)

    with pytest.raises(RunFailed, match=words):
        build(tmp_path, encode=faulty, prompts=PROMPTS[:10])


def test_key_is_stable_short_hex_and_changes_with_each_input():
    args = ("ab" * 32, "google/t5-v1_1-xxl", 120, "bfloat16")
    key = embedding_store_key(*args)
    assert key == embedding_store_key(*args) and len(key) == 16 and int(key, 16) >= 0
    others = [("cd" * 32, *args[1:]), (args[0], "t5-small", *args[2:]), (*args[:2], 77, args[3]), (*args[:3], "float32")]
    assert len({key, *(embedding_store_key(*o) for o in others)}) == 5


MEMORY_CHECK = r"""
import sys, gc, torch
from safetensors import safe_open
from simcli.data.text_embeddings import EmbeddingStore
def anon_mib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssAnon:")).split()[1]) / 1024
store = EmbeddingStore.open(sys.argv[1])
store.get([0])
gc.collect()
before = anon_mib()
for batch in torch.randperm(len(store)).split(16):  # outputs of 1 MiB
    rows = store.get(batch)
del rows
gc.collect()
reading = anon_mib() - before
held = [safe_open(str(store.directory / s["file"]), "pt").get_tensor("tokens").clone() for s in store.index["shards"]]
print(reading, anon_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads RssAnon from /proc (Linux)")
def test_reading_every_prompt_keeps_memory_small(tmp_path):
    """Shards of 50 MB in all: reading them all through get() adds little anonymous memory (the memory maps are
    file pages the OS can drop), while loading them would add the whole 50 MB."""
    width, length = 256, 64

    def wide(prompts):
        lengths = torch.tensor([8 + int(p[1:] or 0) % 57 for p in prompts])
        return TextCondition(torch.randn(len(prompts), length, width), (torch.arange(length) < lengths[:, None]).long())

    store = build_embedding_store(tmp_path, [f"p{i}" for i in range(1400)], wide, batch_size=200,
                                  dtype=torch.float32, shard_bytes=8 << 20)
    total_mb = sum(os.path.getsize(tmp_path / s["file"]) for s in store.index["shards"]) / 1e6
    assert total_mb > 45
    result = subprocess.run([sys.executable, "-c", MEMORY_CHECK, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reading, loading = map(float, result.stdout.split())
    assert loading > 40, f"the check cannot see loaded shards ({loading:.1f} MiB)"
    print(f"anonymous memory: reading {reading:.1f} MiB, loading {loading:.1f} MiB")
    assert reading < 12, f"reading every prompt added {reading:.1f} MiB of anonymous memory"
