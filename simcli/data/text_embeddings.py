"""A store on disk of text-encoder embeddings, computed once so that the text encoder need not stay loaded.

Only each prompt's unmasked tokens are kept (the encoder's mask must be a prefix of ones, as right padding gives;
an all-ones mask, as encoders of networks that take no mask give, keeps every token), and its pooled embedding when
the encoder gives one (SD3, FLUX, SDXL). simcli.data.embedding_build builds a store. Every file is written
atomically (temporary name, fsync, rename), so a file that is there is whole, and byte-reproducibly (the same
prompts and encoder give the same bytes):
    null.safetensors           the null prompt's embedding, laid out as a shard of one prompt
    shard-00000.safetensors    "tokens" [T, C] in the store's dtype: the tokens of prompts start..stop-1 one after
                               another; "offsets" int64 [n + 1]: prompt start + i is tokens[offsets[i]:offsets[i+1]];
                               "pooled" [n, P] in the store's dtype, only when P > 0;
                               metadata: format, start, stop, prompts_sha256, max_tokens, dim, pooled_dim, dtype
    index.json                 written last: format, key, count, max_tokens (L), dim (C), pooled_dim (P, 0: none),
                               dtype, prompts_sha256, null_prompt, null and shards ({file, start, stop, tokens,
                               bytes}), complete: true
    .build.lock                the advisory lock of the builder, holding its PID, host and start time (JSON)
A shard holds whole prompts: at most 1024 of them and at most 32 MiB of tokens and pooled embeddings (more only for
a single prompt).

Concurrency: a builder holds an exclusive flock on .build.lock while it writes (POSIX; on Windows only the
atomic renames protect the files). A second builder waits for the lock, saying whose build it waits for, then
finds index.json and reuses the store; a builder that died or was stopped leaves its shards, and the next continues
after them. Readers take no lock: they read only stores whose index.json, written last, exists.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import safe_open

from simcli.errors import UsageError

FORMAT = "simcli-text-embeddings/2"
INDEX, NULL, LOCK, SHARD = "index.json", "null.safetensors", ".build.lock", "shard-{:05d}.safetensors"
DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # name -> safetensors dtype
OPEN_SHARDS = 128  # shards kept open per store: a memory map (no file descriptor) and its offsets (<= 1024 ints) each


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


def _corrupt(directory: Path, why: str) -> UsageError:
    return UsageError(f"the embedding store {directory} is corrupt or incomplete: {why}",
                      hint=f"delete {directory}; it is rebuilt from the prompts on the next run")


class StoredRows(NamedTuple):
    """Prompts' embeddings as the store returns them: embeds float32 [n, L, C] (zeros past each prompt's tokens),
    mask int64 [n, L], pooled float32 [n, P] or None. Field for field a simcli.nets.text_condition.TextCondition
    (`TextCondition(*rows)`), which this package cannot import (data sits beside nets, not above it)."""

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None


class Shard(NamedTuple):
    """An open shard file: its handle, the tokens [T, C] and pooled [n, P] (None when P = 0) as memory-mapped
    slices, the offsets [n + 1] and the metadata."""

    handle: Any
    tokens: Any
    offsets: list[int]
    pooled: Any | None
    meta: dict[str, str]


def open_shard(path: Path, dim: int, max_tokens: int, dtype: str, pooled_dim: int) -> Shard:
    """A shard file, checked; UsageError if it is not a sound shard."""
    try:
        handle = safe_open(str(path), framework="pt")
        meta, tokens, offsets = handle.metadata() or {}, handle.get_slice("tokens"), handle.get_tensor("offsets")
        shape, n, diffs = tokens.get_shape(), int(meta["stop"]) - int(meta["start"]), offsets[1:] - offsets[:-1]
        pooled = handle.get_slice("pooled") if "pooled" in handle.keys() else None
    except Exception as exc:  # a damaged file: SafetensorError, KeyError, ValueError, IndexError...
        raise _corrupt(path.parent, f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from None
    found = (meta.get("format"), meta.get("max_tokens"), meta.get("pooled_dim"), meta.get("dtype"))
    if found != (FORMAT, str(max_tokens), str(pooled_dim), dtype):
        raise _corrupt(path.parent, f"{path.name} is not a shard of {dtype} embeddings of {max_tokens} tokens at most "
                                    f"and pooled width {pooled_dim}")
    if tokens.get_dtype() != DTYPES[dtype] or shape[1:] != [dim]:
        raise _corrupt(path.parent, f"{path.name}: its tokens are {tokens.get_dtype()} {shape}, not {dtype} [T, {dim}]")
    if offsets.dtype != torch.int64 or offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != shape[0]:
        raise _corrupt(path.parent, f"{path.name}: its offsets do not fit its {n} prompts and {shape[0]} tokens")
    if bool((diffs < 0).any() or (diffs > max_tokens).any()):
        raise _corrupt(path.parent, f"{path.name}: a prompt has fewer than 0 or more than {max_tokens} tokens")
    got = "none" if pooled is None else f"{pooled.get_dtype()} {pooled.get_shape()}"
    if (pooled is None) != (pooled_dim == 0) or (pooled is not None and (
            pooled.get_dtype() != DTYPES[dtype] or pooled.get_shape() != [n, pooled_dim])):
        want = "none" if pooled_dim == 0 else f"{dtype} [{n}, {pooled_dim}]"
        raise _corrupt(path.parent, f"{path.name}: its pooled embeddings are {got}, not {want}")
    return Shard(handle, tokens, offsets.tolist(), pooled, meta)


def _index_problem(directory: Path, index: dict[str, Any]) -> str | None:
    """What is wrong with a store's index.json or the files it lists; None if nothing is."""
    if index.get("format") != FORMAT or index.get("complete") is not True:
        return f"{INDEX} is not a complete index of format {FORMAT}"
    shards, texts = index["shards"], (index["key"], index["prompts_sha256"], index["null_prompt"])
    if index["dtype"] not in DTYPES or min(index["max_tokens"], index["dim"]) < 1 or {type(t) for t in texts} != {str}:
        return f"{INDEX} has a bad dtype, max_tokens, dim, key, prompts_sha256 or null_prompt"
    if type(index["pooled_dim"]) is not int or index["pooled_dim"] < 0:
        return f"{INDEX} has a bad pooled_dim"
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
        self.pooled_dim = index["pooled_dim"]
        self.starts = torch.tensor([s["start"] for s in index["shards"]], dtype=torch.int64)
        self._open: OrderedDict[int, Shard] = OrderedDict()

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

    @property
    def element_bytes(self) -> int:
        """Bytes of one stored number (2 for bfloat16)."""
        return getattr(torch, self.dtype).itemsize

    @property
    def payload_bytes(self) -> int:
        """Bytes of the prompts' tokens, pooled embeddings and offsets in the shards (headers and null prompt apart)."""
        shards = self.index["shards"]
        tokens = sum(s["tokens"] for s in shards) * self.dim * self.element_bytes
        return tokens + len(self) * self.pooled_dim * self.element_bytes + (len(self) + len(shards)) * 8

    @property
    def bytes_per_prompt(self) -> float:
        """payload_bytes averaged over the prompts."""
        return self.payload_bytes / max(1, len(self))

    @property
    def max_bytes_per_prompt(self) -> int:
        """What one prompt takes at most: L x C numbers of tokens and P of its pooled embedding."""
        return (self.max_tokens * self.dim + self.pooled_dim) * self.element_bytes

    def _shard(self, k: int) -> Shard:
        """Shard k, from the cache of the last OPEN_SHARDS used."""
        if k not in self._open:
            entry = self.index["shards"][k]
            shard = open_shard(self.directory / entry["file"], self.dim, self.max_tokens, self.dtype, self.pooled_dim)
            found = (int(shard.meta["start"]), int(shard.meta["stop"]), shard.meta.get("prompts_sha256"))
            if found != (entry["start"], entry["stop"], self.index["prompts_sha256"]):
                raise _corrupt(self.directory, f"{entry['file']} holds other prompts than {INDEX} says")
            self._open[k] = shard
            while len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(k)
        return self._open[k]

    def _empty(self, n: int) -> StoredRows:
        pooled = torch.zeros(n, self.pooled_dim) if self.pooled_dim else None
        return StoredRows(torch.zeros(n, self.max_tokens, self.dim), torch.zeros(n, self.max_tokens, dtype=torch.int64),
                          pooled)

    @staticmethod
    def _copy(rows: StoredRows, row: int, shard: Shard, i: int) -> None:
        """Prompt i of the shard into row `row`."""
        a, b = shard.offsets[i], shard.offsets[i + 1]
        rows.embeds[row, : b - a] = shard.tokens[a:b]
        rows.mask[row, : b - a] = 1
        if rows.pooled is not None:
            rows.pooled[row] = shard.pooled[i : i + 1][0]

    def get(self, indices: torch.Tensor | Sequence[int]) -> StoredRows:
        """The embeddings of prompts `indices` (int [n], any device), in the order given; each row is copied out of
        its shard's memory map."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"prompt indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        rows = self._empty(len(idx))
        shard_of = torch.searchsorted(self.starts, idx, right=True) - 1
        for k in shard_of.unique().tolist():
            shard, start = self._shard(k), self.index["shards"][k]["start"]
            for row in (shard_of == k).nonzero().flatten().tolist():
                self._copy(rows, row, shard, int(idx[row]) - start)
        return rows

    def null(self) -> StoredRows:
        """The embeddings of the null prompt (index.json's null_prompt, often ""): one row."""
        rows = self._empty(1)
        self._copy(rows, 0, open_shard(self.directory / NULL, self.dim, self.max_tokens, self.dtype, self.pooled_dim), 0)
        return rows
