"""Building the store of text embeddings (simcli.data.text_embeddings describes its files): encode the prompts in
batches, write them as shards, index them, under the store's build lock.

Shards are small durable units: a shard is written once it holds `shard_prompts` prompts, or before a prompt would
take its tokens and pooled embeddings past `shard_bytes`, whichever comes first. The cut depends on the prompts'
token counts alone, so
the same prompts and encoder give the same files byte for byte (safetensors headers written canonically, index.json
with sorted keys, no times), whatever the batch size and however often the build was stopped and resumed.

Stopping: `should_stop()` is asked before every encoder batch; when it says yes, the prompts encoded so far are
written as a (shorter) shard and BuildStopped says how many are stored. A resumed build reads its last shard back
(without encoding it again) and goes on, so its shards are those of a build that was never stopped. A process
killed outright loses only the prompts not yet in a shard: at most one unit.

Waiting: a builder that finds the lock held says so at once through `on_wait` (the holder's PID and host, which
the holder records in the lock file, and how many prompts it has stored so far), then every WAIT_REPORT_S, and
stops waiting when `should_stop()` says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from simcli.data.text_embeddings import (
    FORMAT,
    INDEX,
    LOCK,
    NULL,
    SHARD,
    EmbeddingStore,
    Shard,
    dtype_name,
    open_shard,
    prompt_list_digest,
)
from simcli.errors import RunFailed, UsageError, WriteFailed
from simcli.rundir.atomic import remove_stale_temp_files, write_bytes_atomic
from simcli.rundir.network_file import canonical_safetensors

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

SHARD_BYTES = 32 << 20
SHARD_PROMPTS = 1024
LOCK_POLL_S = 0.5
WAIT_REPORT_S = 30.0


class Encoded(Protocol):
    """What an encoder returns for n prompts (a simcli.nets.text_condition.TextCondition): embeds [n, L, C], mask
    [n, L] (1: token, 0: padding) and pooled [n, P], or None for encoders without pooled embeddings."""

    @property
    def embeds(self) -> torch.Tensor: ...

    @property
    def mask(self) -> torch.Tensor: ...

    @property
    def pooled(self) -> torch.Tensor | None: ...


Encode = Callable[[list[str]], Encoded]
OnWait = Callable[[str, int, int, float], None]
"""on_wait(holder, prompts it has stored, prompts in all, seconds waited)"""


class BuildStopped(Exception):
    """A stop request ended the build, or the wait for another builder (`holder`, which then wrote nothing here):
    the first `stored` of `total` prompts are in shards, and a build with the same prompts goes on from there."""

    def __init__(self, directory: Path, stored: int, total: int, holder: str | None = None):
        super().__init__(f"{stored} of {total} prompts stored in {directory}")
        self.directory, self.stored, self.total, self.holder = directory, stored, total, holder


def prefix_lengths(mask: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """(tokens per row, int64 [n] on the CPU; the rows that are not a prefix of ones) of a mask [n, L] of 0/1."""
    m = mask.to(torch.int64)
    lengths = m.sum(1)
    prefix = (torch.arange(m.shape[1], device=m.device) < lengths[:, None]).to(torch.int64)
    return lengths.cpu(), (m != prefix).any(1).nonzero().flatten().tolist()


class EncodedBatch(NamedTuple):
    """A batch of prompts made ready to store: the unmasked tokens [sum of lengths, C] and the pooled embeddings
    [n, P] (None when P = 0) on the CPU in the store's dtype, the lengths int64 [n], and (L, C, P)."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    pooled: torch.Tensor | None
    shape: tuple[int, int, int]


def encode_batch(encode: Encode, prompts: list[str], shape: tuple[int, int, int] | None, dtype: torch.dtype) -> EncodedBatch:
    """The prompts encoded and checked: the encoder must return embeds [n, L, C], a mask [n, L] that is a prefix of
    ones in every row, pooled [n, P] or None, (L, C, P) (P = 0: None) equal to `shape` when given, and finite
    embeddings; RunFailed otherwise."""
    with torch.no_grad():
        out = encode(prompts)
    embeds, mask, pooled = out.embeds, out.mask, out.pooled
    where = f"the text encoder, given {len(prompts)} prompts from {prompts[0][:40]!r},"
    if embeds.dim() != 3 or mask.shape != embeds.shape[:2] or embeds.shape[0] != len(prompts):
        raise RunFailed(f"{where} returned embeds {list(embeds.shape)} and mask {list(mask.shape)}",
                        hint="a text encoder returns embeds [n, L, C] and mask [n, L] for n prompts")
    if pooled is not None and (pooled.dim() != 2 or pooled.shape[0] != len(prompts) or pooled.shape[1] < 1):
        raise RunFailed(f"{where} returned pooled embeddings {list(pooled.shape)}",
                        hint="a text encoder returns pooled embeddings [n, P] for n prompts, or none")
    found = (embeds.shape[1], embeds.shape[2], 0 if pooled is None else pooled.shape[1])
    if shape is not None and found != shape:
        raise RunFailed(f"{where} returned [L, C, P] = {list(found)}, before {list(shape)}",
                        hint="pad every batch to the same max_tokens, and return pooled embeddings for all or none")
    lengths, bad = prefix_lengths(mask)
    if bad:
        raise RunFailed(f"{where} returned a mask that is not a prefix of ones for {prompts[bad[0]][:40]!r}",
                        hint="the store keeps the first tokens of each prompt: use an encoder that pads on the right")
    tokens = embeds.detach()[mask.to(torch.bool)]  # [sum of lengths, C], row after row
    if not torch.isfinite(tokens).all() or (pooled is not None and not torch.isfinite(pooled).all()):
        raise RunFailed(f"{where} returned non-finite embeddings", hint="run the text encoder in bfloat16 or float32")
    pooled = None if pooled is None else pooled.detach().to("cpu", dtype).contiguous()
    return EncodedBatch(tokens.to("cpu", dtype).contiguous(), lengths, pooled, found)


def shard_bytes_of(tokens: torch.Tensor, lengths: list[int], pooled: torch.Tensor | None, meta: dict[str, Any]) -> bytes:
    """A shard file's bytes, canonical: the same tokens, lengths, pooled embeddings and metadata give the same bytes."""
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    tensors = {"tokens": tokens.contiguous(), "offsets": offsets}
    if pooled is not None:
        tensors["pooled"] = pooled.contiguous()
    text = {k: str(v) for k, v in sorted(meta.items())}
    return canonical_safetensors(save(tensors, metadata=text))


def _write_shard(path: Path, tokens: torch.Tensor, lengths: list[int], pooled: torch.Tensor | None,
                 meta: dict[str, Any]) -> dict[str, Any]:
    data = shard_bytes_of(tokens, lengths, pooled, meta)
    write_bytes_atomic(path, data)
    return {"file": path.name, "start": meta["start"], "stop": meta["stop"], "tokens": len(tokens), "bytes": len(data)}


def stored_prompts(directory: Path) -> int:
    """How many prompts a store's shards hold, from the newest readable shard's header (0 when there is none)."""
    numbers = [int(m.group(1)) for p in Path(directory).glob("shard-*.safetensors")
               if (m := re.fullmatch(r"shard-(\d+)\.safetensors", p.name))]
    for k in sorted(numbers, reverse=True):
        try:
            with safe_open(str(Path(directory) / SHARD.format(k)), framework="pt") as f:
                return int((f.metadata() or {})["stop"])
        except (SafetensorError, OSError, KeyError, ValueError):
            continue  # being replaced, or damaged: the one before
    return 0


def read_holder(directory: Path) -> str:
    """Who holds a store's build lock, as the lock file records it: 'PID 12 on host h (since ...)'."""
    try:
        holder = json.loads((Path(directory) / LOCK).read_text())
        return f"PID {int(holder['pid'])} on host {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process (PID unknown)"


def _try_lock(fh: Any) -> bool:
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def build_lock(directory: Path, total: int, should_stop: Callable[[], bool], on_wait: OnWait) -> Iterator[None]:
    """Hold the exclusive flock on directory/.build.lock (POSIX; no lock on Windows), recording this process's PID
    and host in it; while another builder holds it, report on_wait at once and every WAIT_REPORT_S, and raise
    BuildStopped when should_stop() says so. The end of the block, or of the process, releases the lock; the file
    stays (unlinking it would race)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / LOCK, "a+b")
    except OSError as exc:
        raise WriteFailed(directory / LOCK, exc) from exc
    with fh:
        if fcntl is not None:
            start, report_at = time.monotonic(), 0.0
            while not _try_lock(fh):
                now = time.monotonic()
                if now >= report_at:
                    on_wait(read_holder(directory), stored_prompts(directory), total, now - start)
                    report_at = now + WAIT_REPORT_S
                if should_stop():
                    raise BuildStopped(directory, stored_prompts(directory), total, holder=read_holder(directory))
                time.sleep(LOCK_POLL_S)
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
            try:
                fh.truncate(0)
                fh.write((json.dumps(record) + "\n").encode())
                fh.flush()
            except OSError as exc:
                raise WriteFailed(directory / LOCK, exc) from exc
        yield


def _open(path: Path, meta: dict[str, Any]) -> Shard:
    return open_shard(path, meta["dim"], meta["max_tokens"], meta["dtype"], meta["pooled_dim"])


def _sound_shards(directory: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Index entries of the shards already written for these prompts, in turn from shard 0, up to the first that is
    missing or unsound; the files after it are deleted. UsageError if a shard holds other prompts."""
    entries: list[dict[str, Any]] = []
    while (path := directory / SHARD.format(len(entries))).is_file():
        try:
            shard = _open(path, meta)
        except UsageError:
            break  # damaged: encode its prompts again
        stop, start = int(shard.meta["stop"]), entries[-1]["stop"] if entries else 0
        if shard.meta.get("prompts_sha256") != meta["prompts_sha256"] or int(shard.meta["start"]) != start:
            raise UsageError(f"{path} holds the embeddings of other prompts",
                             hint=f"delete {directory}, or build the store elsewhere")
        entries.append({"file": path.name, "start": start, "stop": stop, "tokens": shard.offsets[-1],
                        "bytes": path.stat().st_size})
        del shard
    for stale in directory.glob("shard-*.safetensors"):
        m = re.fullmatch(r"shard-(\d+)\.safetensors", stale.name)
        if m and int(m.group(1)) >= len(entries):
            stale.unlink()
    return entries


class _Shards:
    """The shards written so far and the prompts encoded since (pending), cut as the module docstring says."""

    def __init__(self, directory: Path, meta: dict[str, Any], dtype: torch.dtype, shard_bytes: int, shard_prompts: int):
        self.directory, self.meta, self.shard_bytes, self.shard_prompts = directory, meta, shard_bytes, shard_prompts
        self.row_bytes, self.pooled_bytes = meta["dim"] * dtype.itemsize, meta["pooled_dim"] * dtype.itemsize
        self.entries = _sound_shards(directory, meta)
        self.pending: list[torch.Tensor] = []
        self.pooled: list[torch.Tensor] = []
        self.lengths: list[int] = []
        self.held = 0  # tokens pending
        if self.entries:  # read the last shard back: it may have been cut short by a stop
            last = self.entries.pop()
            shard = _open(directory / last["file"], meta)
            offsets = shard.offsets
            self.pending, self.lengths = [shard.tokens[0 : offsets[-1]]], [b - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            self.pooled = [] if shard.pooled is None else [shard.pooled[0 : len(self.lengths)]]
            self.held = offsets[-1]

    @property
    def stored(self) -> int:
        return self.entries[-1]["stop"] if self.entries else 0

    @property
    def encoded(self) -> int:
        return self.stored + len(self.lengths)

    def add(self, batch: EncodedBatch) -> None:
        counts = batch.lengths.tolist()
        pooled = [None] * len(counts) if batch.pooled is None else batch.pooled.split(1)
        for part, n, row in zip(batch.tokens.split(counts), counts, pooled, strict=True):
            size = (self.held + n) * self.row_bytes + (len(self.lengths) + 1) * self.pooled_bytes
            if self.lengths and (len(self.lengths) >= self.shard_prompts or size > self.shard_bytes):
                self.flush()
            self.pending.append(part)
            self.lengths.append(n)
            self.held += n
            if row is not None:
                self.pooled.append(row)

    def flush(self) -> None:
        if not self.lengths:
            return
        meta = {**self.meta, "start": self.stored, "stop": self.stored + len(self.lengths)}
        path = self.directory / SHARD.format(len(self.entries))
        pooled = torch.cat(self.pooled) if self.pooled else None
        self.entries.append(_write_shard(path, torch.cat(self.pending), self.lengths, pooled, meta))
        self.pending, self.pooled, self.lengths, self.held = [], [], [], 0


def build_embedding_store(
    directory: Path | str, prompts: Sequence[str], encode: Encode, *, batch_size: int,
    dtype: torch.dtype = torch.bfloat16, null_prompt: str = "", on_progress: Callable[[int, int], None] | None = None,
    key: str | None = None, shard_bytes: int = SHARD_BYTES, shard_prompts: int = SHARD_PROMPTS,
    should_stop: Callable[[], bool] | None = None, on_wait: OnWait | None = None,
    encode_null: Callable[[], Encoded] | None = None,
) -> EmbeddingStore:
    """The store of the prompts' embeddings in directory: reused when complete, else built (or finished) and opened.

    `encode(list of n prompts) -> TextCondition (embeds [n, L, C], mask [n, L], pooled [n, P] or None)` is called with at most batch_size prompts (not at
    all when the store is complete); on_progress(done, total) after each batch. `key` (default: the directory's
    name) is recorded in index.json. `should_stop`, `on_wait`: see the module docstring; BuildStopped on a stop.
    `encode_null() -> TextCondition` (one row) is the null prompt's condition when the pipeline's differs from
    encode([null_prompt]) (SDXL's zeros, SANA's prompt without its instruction); default: encode([null_prompt]).
    """
    if batch_size < 1 or shard_bytes < 1 or shard_prompts < 1:
        raise ValueError(f"batch_size, shard_bytes and shard_prompts must be positive, got {batch_size}, {shard_bytes}, "
                         f"{shard_prompts}")
    directory, name = Path(directory), dtype_name(dtype)
    digest, total, key = prompt_list_digest(prompts), len(prompts), key or directory.name
    should_stop = should_stop or (lambda: False)
    with build_lock(directory, total, should_stop, on_wait or (lambda *_: None)):
        remove_stale_temp_files(directory)  # left by builders that died: none other can be writing now
        if (directory / INDEX).exists():
            store = EmbeddingStore.open(directory)
            if (store.index["prompts_sha256"], store.index["null_prompt"], store.dtype) != (digest, null_prompt, name):
                raise UsageError(f"the embedding store {directory} holds other prompts, null prompt or dtype",
                                 hint=f"delete {directory}, or store these prompts elsewhere")
            return store
        null_encode = encode if encode_null is None else (lambda _prompts: encode_null())
        null_batch = encode_batch(null_encode, [null_prompt], None, dtype)
        shape = null_batch.shape
        meta = {"format": FORMAT, "prompts_sha256": digest, "dtype": name, "max_tokens": shape[0], "dim": shape[1],
                "pooled_dim": shape[2]}
        null = _write_shard(directory / NULL, null_batch.tokens, null_batch.lengths.tolist(), null_batch.pooled,
                            {**meta, "start": 0, "stop": 1})
        shards = _Shards(directory, meta, dtype, shard_bytes, shard_prompts)
        for first in range(shards.encoded, total, batch_size):
            if should_stop():
                shards.flush()
                raise BuildStopped(directory, shards.stored, total)
            shards.add(encode_batch(encode, list(prompts[first : first + batch_size]), shape, dtype))
            if on_progress is not None:
                on_progress(min(first + batch_size, total), total)
        shards.flush()
        index = {"format": FORMAT, "key": key, "count": total, **{k: meta[k] for k in ("max_tokens", "dim", "pooled_dim", "dtype")},
                 "prompts_sha256": digest, "null_prompt": null_prompt, "null": null, "shards": shards.entries,
                 "complete": True}
        write_bytes_atomic(directory / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return EmbeddingStore.open(directory)
