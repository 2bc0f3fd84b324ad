"""Building the store of text embeddings (simcli.data.text_embeddings describes its files): encode the prompts in
batches, write them as shards, index them, under the store's build lock.

Shards are small durable units: a shard is written once it holds `shard_prompts` prompts, or before a prompt would
take its tokens past `shard_bytes`, whichever comes first. The cut depends on the prompts' token counts alone, so
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
from typing import Any

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
Encode = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
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


def encode_batch(
    encode: Encode, prompts: list[str], shape: tuple[int, int] | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(tokens [sum of lengths, C] on the CPU in dtype, lengths int64 [n], (L, C)) of the prompts' unmasked tokens.

    The encoder must return embeds [n, L, C] and a mask [n, L] that is a prefix of ones in every row, with (L, C)
    equal to `shape` when given, and finite embeddings; RunFailed otherwise."""
    with torch.no_grad():
        embeds, mask = encode(prompts)[:2]  # a TextCondition's states and mask
    where = f"the text encoder, given {len(prompts)} prompts from {prompts[0][:40]!r},"
    if embeds.dim() != 3 or mask.shape != embeds.shape[:2] or embeds.shape[0] != len(prompts):
        raise RunFailed(f"{where} returned embeds {list(embeds.shape)} and mask {list(mask.shape)}",
                        hint="a text encoder returns embeds [n, L, C] and mask [n, L] for n prompts")
    if shape is not None and tuple(embeds.shape[1:]) != shape:
        raise RunFailed(f"{where} returned [L, C] = {list(embeds.shape[1:])}, before {list(shape)}",
                        hint="pad every batch to the same max_tokens")
    lengths, bad = prefix_lengths(mask)
    if bad:
        raise RunFailed(f"{where} returned a mask that is not a prefix of ones for {prompts[bad[0]][:40]!r}",
                        hint="the store keeps the first tokens of each prompt: use an encoder that pads on the right")
    tokens = embeds.detach()[mask.to(torch.bool)]  # [sum of lengths, C], row after row
    if not torch.isfinite(tokens).all():
        raise RunFailed(f"{where} returned non-finite embeddings", hint="run the text encoder in bfloat16 or float32")
    return tokens.to("cpu", dtype).contiguous(), lengths, (embeds.shape[1], embeds.shape[2])


def shard_bytes_of(tokens: torch.Tensor, lengths: list[int], meta: dict[str, Any]) -> bytes:
    """A shard file's bytes, canonical: the same tokens, lengths and metadata give the same bytes."""
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    text = {k: str(v) for k, v in sorted(meta.items())}
    return canonical_safetensors(save({"tokens": tokens.contiguous(), "offsets": offsets}, metadata=text))


def _write_shard(path: Path, tokens: torch.Tensor, lengths: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    data = shard_bytes_of(tokens, lengths, meta)
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


def _sound_shards(directory: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Index entries of the shards already written for these prompts, in turn from shard 0, up to the first that is
    missing or unsound; the files after it are deleted. UsageError if a shard holds other prompts."""
    entries: list[dict[str, Any]] = []
    while (path := directory / SHARD.format(len(entries))).is_file():
        try:
            handle, tokens, offsets, found = open_shard(path, meta["dim"], meta["max_tokens"], meta["dtype"])
        except UsageError:
            break  # damaged: encode its prompts again
        stop, start = int(found["stop"]), entries[-1]["stop"] if entries else 0
        if found.get("prompts_sha256") != meta["prompts_sha256"] or int(found["start"]) != start:
            raise UsageError(f"{path} holds the embeddings of other prompts",
                             hint=f"delete {directory}, or build the store elsewhere")
        entries.append({"file": path.name, "start": start, "stop": stop, "tokens": offsets[-1],
                        "bytes": path.stat().st_size})
        del handle, tokens
    for stale in directory.glob("shard-*.safetensors"):
        m = re.fullmatch(r"shard-(\d+)\.safetensors", stale.name)
        if m and int(m.group(1)) >= len(entries):
            stale.unlink()
    return entries


class _Shards:
    """The shards written so far and the prompts encoded since (pending), cut as the module docstring says."""

    def __init__(self, directory: Path, meta: dict[str, Any], dtype: torch.dtype, shard_bytes: int, shard_prompts: int):
        self.directory, self.meta, self.shard_bytes, self.shard_prompts = directory, meta, shard_bytes, shard_prompts
        self.row_bytes = meta["dim"] * dtype.itemsize
        self.entries = _sound_shards(directory, meta)
        self.pending: list[torch.Tensor] = []
        self.lengths: list[int] = []
        self.held = 0  # tokens pending
        if self.entries:  # read the last shard back: it may have been cut short by a stop
            last = self.entries.pop()
            _, tokens, offsets, _ = open_shard(directory / last["file"], meta["dim"], meta["max_tokens"], meta["dtype"])
            self.pending, self.lengths = [tokens[0 : offsets[-1]]], [b - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            self.held = offsets[-1]

    @property
    def stored(self) -> int:
        return self.entries[-1]["stop"] if self.entries else 0

    @property
    def encoded(self) -> int:
        return self.stored + len(self.lengths)

    def add(self, tokens: torch.Tensor, counts: list[int]) -> None:
        for part, n in zip(tokens.split(counts), counts, strict=True):
            full = len(self.lengths) >= self.shard_prompts or (self.held + n) * self.row_bytes > self.shard_bytes
            if self.lengths and full:
                self.flush()
            self.pending.append(part)
            self.lengths.append(n)
            self.held += n

    def flush(self) -> None:
        if not self.lengths:
            return
        meta = {**self.meta, "start": self.stored, "stop": self.stored + len(self.lengths)}
        path = self.directory / SHARD.format(len(self.entries))
        self.entries.append(_write_shard(path, torch.cat(self.pending), self.lengths, meta))
        self.pending, self.lengths, self.held = [], [], 0


def build_embedding_store(
    directory: Path | str, prompts: Sequence[str], encode: Encode, *, batch_size: int,
    dtype: torch.dtype = torch.bfloat16, null_prompt: str = "", on_progress: Callable[[int, int], None] | None = None,
    key: str | None = None, shard_bytes: int = SHARD_BYTES, shard_prompts: int = SHARD_PROMPTS,
    should_stop: Callable[[], bool] | None = None, on_wait: OnWait | None = None,
) -> EmbeddingStore:
    """The store of the prompts' embeddings in directory: reused when complete, else built (or finished) and opened.

    `encode(list of n prompts) -> (embeds [n, L, C], mask [n, L])` is called with at most batch_size prompts (not at
    all when the store is complete); on_progress(done, total) after each batch. `key` (default: the directory's
    name) is recorded in index.json. `should_stop`, `on_wait`: see the module docstring; BuildStopped on a stop.
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
        null_tokens, null_lengths, shape = encode_batch(encode, [null_prompt], None, dtype)
        meta = {"format": FORMAT, "prompts_sha256": digest, "dtype": name, "max_tokens": shape[0], "dim": shape[1]}
        null = _write_shard(directory / NULL, null_tokens, null_lengths.tolist(), {**meta, "start": 0, "stop": 1})
        shards = _Shards(directory, meta, dtype, shard_bytes, shard_prompts)
        for first in range(shards.encoded, total, batch_size):
            if should_stop():
                shards.flush()
                raise BuildStopped(directory, shards.stored, total)
            tokens, counts, _ = encode_batch(encode, list(prompts[first : first + batch_size]), shape, dtype)
            shards.add(tokens, counts.tolist())
            if on_progress is not None:
                on_progress(min(first + batch_size, total), total)
        shards.flush()
        index = {"format": FORMAT, "key": key, "count": total, **{k: meta[k] for k in ("max_tokens", "dim", "dtype")},
                 "prompts_sha256": digest, "null_prompt": null_prompt, "null": null, "shards": shards.entries,
                 "complete": True}
        write_bytes_atomic(directory / INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
    return EmbeddingStore.open(directory)
