"""Prompt files for text-to-image distillation: plain text (one prompt per line) or JSON lines.

    prompts.txt     one prompt per line, UTF-8; surrounding whitespace is stripped and blank lines are skipped
    prompts.jsonl   one JSON object per line with a string field "prompt" (kept verbatim); blank lines skipped

Every problem is a UsageError of one line that names the file (and the line, counted from 1) with a hint.
`read_prompt_file` also hashes the bytes the prompts came from: the key under which their embeddings are cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from simcli.errors import UsageError

SUFFIXES = (".txt", ".jsonl")
_TXT_HINT = "write one prompt per line (.txt), or one JSON object with a 'prompt' string per line (.jsonl)"
_JSONL_HINT = 'write one JSON object per line, like {"prompt": "a photo of a cat"}'
# token_prefix: the first prefix tried holds this many characters per token the encoder reads (tokens of real text
# average 3-5 characters), and it must yield this many tokens beyond the limit, so that a cut inside a word (only
# when one word is longer than the prefix) cannot change the tokens that are kept.
_PREFIX_CHARS_PER_TOKEN = 8
_PREFIX_TOKEN_MARGIN = 8


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
    return read_prompt_file(path).prompts


@dataclass(frozen=True)
class PromptFile:
    """A prompt file read once: its prompts and the sha256 of the bytes they were parsed from."""

    path: Path
    prompts: list[str]
    sha256: str


def read_prompt_file(path: Path | str) -> PromptFile:
    """The prompts of a .txt or .jsonl file and the sha256 of the same bytes (the file is read once)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"prompt file {path} is neither .txt nor .jsonl", hint=_TXT_HINT)
    data = _read_bytes(path)
    return PromptFile(path, parse_prompts(path, _decode(path, data)), hashlib.sha256(data).hexdigest())


def token_prefix(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The part of `text` that a tokenizer truncating at `max_tokens` tokens reads: a prefix that ends before
    whitespace and already yields more than max_tokens tokens (`count_tokens`, special tokens excluded), or the
    whole text when no shorter prefix does.

    Tokenizers split text at whitespace before they split words, so the first max_tokens tokens of that prefix are
    those of the whole text: a prompt far longer than the encoder reads costs the encoder's limit to tokenize, not
    its length (a 10 MB prompt took 4 GB to tokenize whole). Prefixes grow fourfold until one is long enough.
    """
    chars = _PREFIX_CHARS_PER_TOKEN * (max_tokens + _PREFIX_TOKEN_MARGIN)
    while chars < len(text):
        space = max(text.rfind(" ", 0, chars), text.rfind("\t", 0, chars))
        prefix = text[:space] if space > chars // 2 else text[:chars]
        if count_tokens(prefix) > max_tokens + _PREFIX_TOKEN_MARGIN:
            return prefix
        chars *= 4
    return text
