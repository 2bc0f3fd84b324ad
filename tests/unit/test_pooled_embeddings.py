"""The embedding store with pooled embeddings (issue 17): SD3, FLUX and SDXL encoders give one per prompt, and
encoders of networks that take no mask give a mask of all ones; the store keeps both exactly, refuses a corrupt
pooled tensor, and says what a prompt costs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from simcli.data.embedding_build import BuildStopped, build_embedding_store
from simcli.data.text_embeddings import INDEX, LOCK, NULL, EmbeddingStore
from simcli.distill.conditions import LivePrompts, StoredPrompts
from simcli.errors import RunFailed, UsageError
from simcli.nets.text_condition import TextCondition
from tests.unit.test_text_embeddings import PROMPTS, C, L, fake_encode, n_tokens

P = 6
CPU = torch.device("cpu")


def _seeded(prompt: str, *shape: int) -> torch.Tensor:
    seed = int(hashlib.sha256(("pooled " + prompt).encode()).hexdigest()[:12], 16)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def pooled_encode(prompts: list[str]) -> TextCondition:
    """fake_encode's embeds and mask, and a pooled embedding [n, P] from a hash of each prompt."""
    embeds, mask, _ = fake_encode(prompts)
    return TextCondition(embeds, mask, torch.stack([_seeded(p, P) for p in prompts]) if prompts else torch.zeros(0, P))


def unmasked_encode(prompts: list[str]) -> TextCondition:
    """As the CLIP, SD3 and FLUX encoders: every one of the L tokens counts (padding included), mask all ones."""
    embeds, _, pooled = pooled_encode(prompts)
    return TextCondition(embeds, torch.ones(len(prompts), L, dtype=torch.int64), pooled)


def expected(prompts: list[str], encode=pooled_encode) -> TextCondition:
    embeds, mask, pooled = encode(prompts)
    return TextCondition(embeds * mask[..., None], mask, pooled)


class Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, prompts):
        self.calls += prompts != [""]
        return pooled_encode(prompts)


def build(directory: Path, encode=pooled_encode, prompts=PROMPTS, **kw) -> EmbeddingStore:
    kw = {"batch_size": 64, "shard_bytes": 20_000} | kw  # bfloat16 by default; ~16 shards
    return build_embedding_store(directory, prompts, encode, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> EmbeddingStore:
    return build(tmp_path_factory.mktemp("pooled"))


def as_stored(condition: TextCondition) -> TextCondition:
    """What bfloat16 storage gives back: the embeddings rounded to bfloat16, as float32."""
    return TextCondition(condition.embeds.bfloat16().float(), condition.mask, condition.pooled.bfloat16().float())


def test_a_built_store_gives_back_embeds_mask_and_pooled_across_shards(store):
    assert store.pooled_dim == P and store.index["pooled_dim"] == P and len(store.index["shards"]) >= 8
    indices = torch.cat([torch.tensor([s["start"] for s in store.index["shards"]] + [999, 3, 3]),
                         torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:100]])
    rows = store.get(indices)
    want = as_stored(expected([PROMPTS[i] for i in indices.tolist()]))
    assert rows.pooled.dtype == torch.float32 and rows.pooled.shape == (len(indices), P)
    for got, wanted in zip(rows, want, strict=True):
        assert torch.equal(got, wanted)
    assert not torch.equal(rows.pooled, want.embeds[:, 0, :P])  # the pooled rows are not the tokens
    assert store.get([]).pooled.shape == (0, P)


def test_the_null_rows_pooled_embedding_is_stored(store):
    null = store.null()
    want = as_stored(expected([""]))
    assert null.pooled.shape == (1, P) and torch.equal(null.pooled, want.pooled)
    assert torch.equal(null.embeds, want.embeds) and torch.equal(null.mask, want.mask)


def test_float32_storage_round_trips_exactly(tmp_path):
    rows = build(tmp_path, dtype=torch.float32).get(range(1000))
    for got, wanted in zip(rows, expected(PROMPTS), strict=True):
        assert torch.equal(got, wanted)


def test_an_all_ones_mask_is_kept_whole_and_comes_back_whole(tmp_path):
    store = build(tmp_path, encode=unmasked_encode, prompts=PROMPTS[:200], dtype=torch.float32)
    assert sum(s["tokens"] for s in store.index["shards"]) == 200 * L  # padding tokens included
    rows = store.get(range(200))
    embeds, _, pooled = unmasked_encode(PROMPTS[:200])
    assert torch.equal(rows.mask, torch.ones(200, L, dtype=torch.int64))
    assert torch.equal(rows.embeds, embeds) and torch.equal(rows.pooled, pooled)
    short = [i for i, p in enumerate(PROMPTS[:200]) if n_tokens(p) < L]
    assert len(short) > 100 and bool((rows.embeds[short, -1] == 7.0).all())  # fake_encode's padding value, kept
    null, want = store.null(), unmasked_encode([""])
    assert torch.equal(null.mask, torch.ones(1, L, dtype=torch.int64)) and torch.equal(null.embeds, want.embeds)
    assert torch.equal(null.pooled, want.pooled)


def test_bytes_per_prompt_counted_by_hand(store):
    """Tokens (2 bytes a number in bfloat16) + pooled + 8-byte offsets (n + 1 per shard), over the 1,000 prompts."""
    shards = len(store.index["shards"])
    by_hand = sum(n_tokens(p) * C * 2 + P * 2 for p in PROMPTS) + (1000 + shards) * 8
    assert store.payload_bytes == by_hand and store.bytes_per_prompt == by_hand / 1000
    assert store.max_bytes_per_prompt == L * C * 2 + P * 2 == 396 and store.element_bytes == 2
    in_files = 0
    for s in store.index["shards"]:  # what the files hold
        with safe_open(str(store.directory / s["file"]), "pt") as f:
            in_files += sum(f.get_tensor(k).nbytes for k in ("tokens", "pooled", "offsets"))
    assert in_files == by_hand


def test_store_files_with_pooled_embeddings_are_byte_reproducible(tmp_path):
    build(tmp_path / "a", key="k")
    for calls in (2, 7):
        counting = Counting()
        with pytest.raises(BuildStopped):
            build(tmp_path / "b", encode=counting, batch_size=37, key="k", should_stop=lambda c=counting, n=calls: c.calls >= n)
    build(tmp_path / "b", batch_size=37, key="k")

    def files(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != LOCK}

    a = files(tmp_path / "a")
    assert a == files(tmp_path / "b") and len(a) >= 10
    with safe_open(str(tmp_path / "a" / NULL), "pt") as f:
        assert f.metadata()["pooled_dim"] == str(P) and f.get_slice("pooled").get_shape() == [1, P]


def _rewrite(directory: Path, file: str, change) -> None:
    """Rewrite a file's tensors with change(tensors), keeping its metadata; index.json gets the new size, so that only
    the file's contents can give it away."""
    path = directory / file
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=meta)
    index = json.loads((directory / INDEX).read_text())
    for entry in [index["null"], *index["shards"]]:
        if entry["file"] == file:
            entry["bytes"] = path.stat().st_size
    (directory / INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda t: t.pop("pooled"), "pooled embeddings are none, not bfloat16"),
        (lambda t: t.update(pooled=t["pooled"][:, :-1].contiguous()), r"pooled embeddings are BF16 \[\d+, 5\]"),
        (lambda t: t.update(pooled=t["pooled"][1:].contiguous()), "pooled embeddings are BF16"),
        (lambda t: t.update(pooled=t["pooled"].half()), "pooled embeddings are F16"),
    ],
)
def test_a_corrupt_pooled_tensor_is_refused(tmp_path, change, words):
    store = build(tmp_path, prompts=PROMPTS[:300])
    _rewrite(tmp_path, store.index["shards"][1]["file"], change)
    store = EmbeddingStore.open(tmp_path)
    store.get(range(store.index["shards"][1]["start"]))  # the shards before it read well
    with pytest.raises(UsageError, match=words) as info:
        store.get(range(300))
    assert "\n" not in info.value.message and str(tmp_path) in info.value.hint
    _rewrite(tmp_path, NULL, change)
    with pytest.raises(UsageError, match=words):
        store.null()


def test_pooled_embeddings_in_a_store_without_them_are_refused(tmp_path):
    build(tmp_path, encode=fake_encode, prompts=PROMPTS[:100])
    _rewrite(tmp_path, NULL, lambda t: t.update(pooled=torch.zeros(1, P, dtype=torch.bfloat16)))
    with pytest.raises(UsageError, match=r"pooled embeddings are BF16 \[1, 6\], not none"):
        EmbeddingStore.open(tmp_path).null()


@pytest.mark.parametrize(
    ("encode", "words"),
    [
        (lambda p: pooled_encode(p)._replace(pooled=pooled_encode(p).pooled * float("inf")), "non-finite"),
        (lambda p: pooled_encode(p)._replace(pooled=None), r"\[L, C, P\] = \[12, 16, 0\], before \[12, 16, 6\]"),
        (lambda p: pooled_encode(p)._replace(pooled=pooled_encode(p).pooled[:, :4]), r"\[L, C, P\] = \[12, 16, 4\]"),
        (lambda p: pooled_encode(p)._replace(pooled=pooled_encode(p).pooled[:1]), r"pooled embeddings \[1, 6\]"),
    ],
)
def test_faulty_pooled_embeddings_are_refused(tmp_path, encode, words):
    def faulty(prompts):  # the null prompt encoded well, the prompts badly
        return pooled_encode(prompts) if prompts == [""] else encode(prompts)

    with pytest.raises(RunFailed, match=words):
        build(tmp_path, encode=faulty, prompts=PROMPTS[:10])
    with pytest.raises(RunFailed, match=r"\[L, C, P\] = \[12, 16, 6\], before \[12, 16, 0\]"):
        build(tmp_path / "other", encode=lambda p: fake_encode(p) if p == [""] else pooled_encode(p), prompts=PROMPTS[:10])


def test_stored_and_live_prompts_carry_pooled_embeddings_to_the_condition(store):
    indices = [5, 999, 0, 5]
    stored = StoredPrompts(store).rows(indices, CPU)
    want = as_stored(expected([PROMPTS[i] for i in indices]))
    assert isinstance(stored, TextCondition) and torch.equal(stored.pooled, want.pooled)
    assert torch.equal(stored.embeds, want.embeds) and torch.equal(stored.mask, want.mask)
    live = LivePrompts(PROMPTS, lambda p: pooled_encode(p).to(CPU, torch.bfloat16)).rows(indices, CPU)
    assert live.pooled.dtype == torch.float32 and torch.equal(live.pooled, want.pooled)
    assert torch.equal(live.mask, pooled_encode([PROMPTS[i] for i in indices]).mask)
    plain = LivePrompts(PROMPTS, fake_encode).rows(indices, CPU)
    assert plain.pooled is None and torch.equal(plain.embeds, fake_encode([PROMPTS[i] for i in indices]).embeds)
