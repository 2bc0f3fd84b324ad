"""A store on disk of text-encoder embeddings, computed once so that the text encoder need not stay loaded.

Only each prompt's unmasked tokens are kept (the encoder's mask must be a prefix of ones, as right padding gives).
Every file is written atomically (temporary name, fsync, rename), so a file that is there is whole:
    null.safetensors           the null prompt's embedding, laid out as a shard of one prompt
    shard-00000.safetensors    "tokens" [T, C] in the store's dtype: the tokens of prompts start..stop-1 one after
                               another; "offsets" int64 [n + 1]: prompt start + i is tokens[offsets[i]:offsets[i+1]];
                               metadata: format, start, stop, prompts_sha256, max_tokens, dim, dtype
    index.json                 written last: format, key, count, max_tokens (L), dim (C), dtype, prompts_sha256,
                               null_prompt, null and shards ({file, start, stop, tokens, bytes}), complete: true
    .build.lock                the advisory lock of the builder
A shard holds whole prompts and at most `shard_bytes` of tokens (256 MiB; more only for a single prompt).

Concurrency: a builder holds an exclusive flock on .build.lock while it writes (POSIX; on Windows only the
atomic renames protect the files). A second builder waits for the lock, then finds index.json and reuses the
store; a builder that died leaves its shards, and the next continues after the last one. Readers take no lock:
they read only stores whose index.json, written last, exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from simcli.errors import RunFailed, UsageError, WriteFailed
from simcli.rundir.atomic import atomic_write, remove_stale_temp_files, write_json_atomic

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

FORMAT = "simcli-text-embeddings/1"
INDEX, NULL, LOCK, SHARD = "index.json", "null.safetensors", ".build.lock", "shard-{:05d}.safetensors"
SHARD_BYTES = 256 << 20
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # name -> safetensors dtype
OPEN_SHARDS = 8  # safetensors handles kept open (memory-mapped) per store
Encode = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def embedding_store_key(prompts_digest: str, encoder_id: str, max_tokens: int, dtype_name: str) -> str:
    """16 hex digits naming a store: a hash of the store format, the prompt file's digest, the encoder, L, dtype."""
    text = json.dumps([FORMAT, prompts_digest, encoder_id, int(max_tokens), dtype_name])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prompt_list_digest(prompts: Sequence[str]) -> str:
    """sha256 (hex) of the prompts in order, recorded in the store to refuse mixing embeddings of other prompts."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'float16' or 'bfloat16'; ValueError for another dtype."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"embeddings are stored as {', '.join(DTYPES)}, not {name}")
    return name


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
        embeds, mask = encode(prompts)
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


def _corrupt(directory: Path, why: str) -> UsageError:
    return UsageError(f"the embedding store {directory} is corrupt or incomplete: {why}",
                      hint=f"delete {directory}; it is rebuilt from the prompts on the next run")


def open_shard(path: Path, dim: int, max_tokens: int, dtype: str) -> tuple[Any, Any, list[int], dict[str, str]]:
    """(handle, tokens slice, offsets, metadata) of a shard file, checked; UsageError if it is not a sound shard."""
    try:
        handle = safe_open(str(path), framework="pt")
        meta, tokens, offsets = handle.metadata() or {}, handle.get_slice("tokens"), handle.get_tensor("offsets")
        shape, n, diffs = tokens.get_shape(), int(meta["stop"]) - int(meta["start"]), offsets[1:] - offsets[:-1]
    except Exception as exc:  # a damaged file: SafetensorError, KeyError, ValueError, IndexError...
        raise _corrupt(path.parent, f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from None
    if (meta.get("format"), meta.get("max_tokens"), meta.get("dtype")) != (FORMAT, str(max_tokens), dtype):
        raise _corrupt(path.parent, f"{path.name} is not a shard of {dtype} embeddings of {max_tokens} tokens at most")
    if tokens.get_dtype() != DTYPES[dtype] or shape[1:] != [dim]:
        raise _corrupt(path.parent, f"{path.name}: its tokens are {tokens.get_dtype()} {shape}, not {dtype} [T, {dim}]")
    if offsets.dtype != torch.int64 or offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != shape[0]:
        raise _corrupt(path.parent, f"{path.name}: its offsets do not fit its {n} prompts and {shape[0]} tokens")
    if bool((diffs < 0).any() or (diffs > max_tokens).any()):
        raise _corrupt(path.parent, f"{path.name}: a prompt has fewer than 0 or more than {max_tokens} tokens")
    return handle, tokens, offsets.tolist(), meta


def _index_problem(directory: Path, index: dict[str, Any]) -> str | None:
    """What is wrong with a store's index.json or the files it lists; None if nothing is."""
    if index.get("format") != FORMAT or index.get("complete") is not True:
        return f"{INDEX} is not a complete index of format {FORMAT}"
    shards, texts = index["shards"], (index["key"], index["prompts_sha256"], index["null_prompt"])
    if index["dtype"] not in DTYPES or min(index["max_tokens"], index["dim"]) < 1 or {type(t) for t in texts} != {str}:
        return f"{INDEX} has a bad dtype, max_tokens, dim, key, prompts_sha256 or null_prompt"
    bounds = [0] + [s["stop"] for s in shards]
    if [s["start"] for s in shards] != bounds[:-1] or bounds[-1] != index["count"]:
        return f"the shards in {INDEX} do not cover prompts 0..{index['count'] - 1} in turn"
    for entry in [index["null"], *shards]:
        path = directory / str(entry["file"])
        if not path.is_file():
            return f"{entry['file']} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{entry['file']} is {path.stat().st_size} bytes, {INDEX} says {entry['bytes']}"
    return None


class EmbeddingStore:
    """A complete store, read through memory maps: only the rows asked for are copied into memory."""

    def __init__(self, directory: Path, index: dict[str, Any]):
        self.directory, self.index = Path(directory), index
        self.max_tokens, self.dim, self.dtype = index["max_tokens"], index["dim"], index["dtype"]
        self.starts = torch.tensor([s["start"] for s in index["shards"]], dtype=torch.int64)
        self._open: OrderedDict[int, tuple[Any, Any, list[int]]] = OrderedDict()

    @classmethod
    def open(cls, directory: Path | str) -> EmbeddingStore:
        """The store in directory, its index and files checked (not their contents); UsageError if not complete."""
        directory = Path(directory)
        try:
            index = json.loads((directory / INDEX).read_text())
        except FileNotFoundError:
            raise UsageError(f"no embedding store in {directory} (no {INDEX})", hint="build it first") from None
        except (OSError, ValueError) as exc:
            raise _corrupt(directory, f"{INDEX} is unreadable ({exc})") from None
        try:
            problem = _index_problem(directory, index)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"{INDEX} is not an index of format {FORMAT} ({type(exc).__name__}: {exc})"
        if problem:
            raise _corrupt(directory, problem)
        return cls(directory, index)

    def __len__(self) -> int:
        return int(self.index["count"])

    def __getstate__(self) -> dict[str, Any]:  # for DataLoader workers: reopen the memory maps there
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, k: int) -> tuple[Any, Any, list[int]]:
        """(handle, tokens slice, offsets) of shard k, from the cache of the last OPEN_SHARDS used."""
        if k not in self._open:
            entry = self.index["shards"][k]
            path = self.directory / entry["file"]
            handle, tokens, offsets, meta = open_shard(path, self.dim, self.max_tokens, self.dtype)
            found = (int(meta["start"]), int(meta["stop"]), meta.get("prompts_sha256"))
            if found != (entry["start"], entry["stop"], self.index["prompts_sha256"]):
                raise _corrupt(self.directory, f"{entry['file']} holds other prompts than {INDEX} says")
            self._open[k] = (handle, tokens, offsets)
            while len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(k)
        return self._open[k]

    def get(self, indices: torch.Tensor | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds float32 [n, L, C], zeros past each prompt's tokens; mask int64 [n, L]) of prompts `indices`
        (int [n], any device), in the order given; each row is copied out of its shard's memory map."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"prompt indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        embeds = torch.zeros(len(idx), self.max_tokens, self.dim)
        mask = torch.zeros(len(idx), self.max_tokens, dtype=torch.int64)
        shard_of = torch.searchsorted(self.starts, idx, right=True) - 1
        for k in shard_of.unique().tolist():
            _, tokens, offsets = self._shard(k)
            start = self.index["shards"][k]["start"]
            for row in (shard_of == k).nonzero().flatten().tolist():
                a, b = offsets[int(idx[row]) - start], offsets[int(idx[row]) - start + 1]
                embeds[row, : b - a] = tokens[a:b]
                mask[row, : b - a] = 1
        return embeds, mask

    def null(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds float32 [1, L, C], mask int64 [1, L]) of the null prompt (index.json's null_prompt, often "")."""
        _, tokens, offsets, _ = open_shard(self.directory / NULL, self.dim, self.max_tokens, self.dtype)
        embeds, mask = torch.zeros(1, self.max_tokens, self.dim), torch.zeros(1, self.max_tokens, dtype=torch.int64)
        embeds[0, : offsets[1]], mask[0, : offsets[1]] = tokens[0 : offsets[1]], 1
        return embeds, mask


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Hold the exclusive flock on directory/.build.lock, waiting for another builder (POSIX; no lock on Windows).
    Closing the file, or the end of the process, releases it; the file stays (unlinking it would race)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fh = open(directory / LOCK, "a+b")
    except OSError as exc:
        raise WriteFailed(directory / LOCK, exc) from exc
    with fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def _write_shard(path: Path, tokens: torch.Tensor, lengths: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    text = {k: str(v) for k, v in meta.items()}
    atomic_write(path, lambda p: save_file({"tokens": tokens, "offsets": offsets}, str(p), text))
    return {"file": path.name, "start": meta["start"], "stop": meta["stop"], "tokens": len(tokens),
            "bytes": path.stat().st_size}


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


def build_embedding_store(
    directory: Path | str, prompts: Sequence[str], encode: Encode, *, batch_size: int,
    dtype: torch.dtype = torch.bfloat16, null_prompt: str = "", on_progress: Callable[[int, int], None] | None = None,
    key: str | None = None, shard_bytes: int = SHARD_BYTES,
) -> EmbeddingStore:
    """The store of the prompts' embeddings in directory: reused when complete, else built (or finished) and opened.

    `encode(list of n prompts) -> (embeds [n, L, C], mask [n, L])` is called with at most batch_size prompts;
    on_progress(done, total) after each batch. `key` (default: the directory's name) is recorded in index.json.
    """
    if batch_size < 1 or shard_bytes < 1:
        raise ValueError(f"batch_size and shard_bytes must be positive, got {batch_size} and {shard_bytes}")
    directory, name = Path(directory), dtype_name(dtype)
    digest, total, key = prompt_list_digest(prompts), len(prompts), key or directory.name
    with _build_lock(directory):
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
        entries = _sound_shards(directory, meta)
        start = entries[-1]["stop"] if entries else 0
        pending: list[torch.Tensor] = []
        lengths: list[int] = []
        held, row_bytes = 0, shape[1] * dtype.itemsize  # tokens in pending, bytes per token

        def flush() -> None:
            first = entries[-1]["stop"] if entries else 0
            shard_meta = {**meta, "start": first, "stop": first + len(lengths)}
            path = directory / SHARD.format(len(entries))
            entries.append(_write_shard(path, torch.cat(pending), lengths, shard_meta))
            pending.clear()
            lengths.clear()

        for first in range(start, total, batch_size):
            tokens, counts, _ = encode_batch(encode, list(prompts[first : first + batch_size]), shape, dtype)
            for part, n in zip(tokens.split(counts.tolist()), counts.tolist(), strict=True):
                if lengths and (held + n) * row_bytes > shard_bytes:
                    flush()
                    held = 0
                pending.append(part)
                lengths.append(n)
                held += n
            if on_progress is not None:
                on_progress(min(first + batch_size, total), total)
        if lengths:
            flush()
        index = {"format": FORMAT, "key": key, "count": total, **{k: meta[k] for k in ("max_tokens", "dim", "dtype")},
                 "prompts_sha256": digest, "null_prompt": null_prompt, "null": null, "shards": entries,
                 "complete": True}
        write_json_atomic(directory / INDEX, index)
    return EmbeddingStore.open(directory)
