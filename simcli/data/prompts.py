"""Prompt files for text-to-image distillation: plain text (one prompt per line) or JSON lines.

    prompts.txt     one prompt per line, UTF-8; surrounding whitespace is stripped and blank lines are skipped
    prompts.jsonl   one JSON object per line with a string field "prompt" (kept verbatim); blank lines skipped

Every problem is a UsageError of one line that names the file (and the line, counted from 1) with a hint.
`prompts_digest` hashes the file's bytes, the key under which the prompts' embeddings are cached.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from simcli.errors import UsageError

SUFFIXES = (".txt", ".jsonl")
_TXT_HINT = "write one prompt per line (.txt), or one JSON object with a 'prompt' string per line (.jsonl)"
_JSONL_HINT = 'write one JSON object per line, like {"prompt": "a photo of a cat"}'
_CHUNK_BYTES = 1 << 20


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise UsageError(f"prompt file {path} is a directory", hint="pass the .txt or .jsonl file itself")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"prompt file {path} does not exist", hint="check the path given to --prompts") from None
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.strerror or exc}", hint="check its permissions") from None


def _decode(path: Path, data: bytes) -> str:
    """The file's text, a leading UTF-8 byte-order mark dropped; UsageError naming the first line that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x})", hint="save the prompt file as UTF-8"
        ) from None


def _parse_jsonl_line(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})", hint=_JSONL_HINT) from None
    if not isinstance(record, dict):
        raise UsageError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}", hint=_JSONL_HINT)
    if "prompt" not in record:
        raise UsageError(f"{path}:{number}: the object has no 'prompt' field", hint=_JSONL_HINT)
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        raise UsageError(f"{path}:{number}: 'prompt' is {type(prompt).__name__}, not a string", hint=_JSONL_HINT)
    return prompt


def parse_prompts(path: Path, text: str) -> list[str]:
    """The prompts in `text`, the contents of `path` (its suffix picks the format; `path` names it in errors)."""
    suffix = path.suffix.lower()
    prompts = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        prompts.append(line if suffix == ".txt" else _parse_jsonl_line(path, number, line))
    if not prompts:
        raise UsageError(f"{path}: no prompts in the file", hint=_TXT_HINT)
    return prompts


def read_prompts(path: Path | str) -> list[str]:
    """The prompts of a .txt or .jsonl file, in file order (see the module docstring for the formats)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"prompt file {path} is neither .txt nor .jsonl", hint=_TXT_HINT)
    return parse_prompts(path, _decode(path, _read_bytes(path)))


def prompts_digest(path: Path | str) -> str:
    """sha256 (64 hex digits) of the prompt file's bytes, read in 1 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK_BYTES):
                digest.update(block)
    except FileNotFoundError:
        raise UsageError(f"prompt file {path} does not exist", hint="check the path given to --prompts") from None
    except OSError as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc.strerror or exc}", hint="check its permissions") from None
    return digest.hexdigest()
