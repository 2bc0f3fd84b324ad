"""Prompt files (simcli.data.prompts): .txt and .jsonl, and a one-line UsageError naming file and line for each fault."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from simcli.data.prompts import read_prompt_file, read_prompts
from simcli.errors import UsageError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_txt_one_prompt_per_line_stripped_blank_lines_skipped(tmp_path):
    path = write(tmp_path, "p.txt", "  a red fox \n\n\t\nune forêt, 森\r\n   \nlast without newline")
    assert read_prompts(path) == ["a red fox", "une forêt, 森", "last without newline"]


def test_txt_utf8_byte_order_mark_is_dropped(tmp_path):
    assert read_prompts(write(tmp_path, "p.TXT", b"\xef\xbb\xbfa cat\na dog\n")) == ["a cat", "a dog"]


def test_jsonl_prompt_fields_in_order_other_fields_ignored(tmp_path):
    lines = [json.dumps({"prompt": "a cat", "id": 1}), "", json.dumps({"prompt": " spaced  \\n kept ", "x": None}),
             json.dumps({"prompt": "snow ❄"}, ensure_ascii=False), "   "]
    assert read_prompts(write(tmp_path, "p.jsonl", "\n".join(lines) + "\n")) == ["a cat", " spaced  \\n kept ", "snow ❄"]


def test_jsonl_keeps_an_explicit_empty_prompt(tmp_path):
    assert read_prompts(write(tmp_path, "p.jsonl", '{"prompt": ""}\n{"prompt": "b"}\n')) == ["", "b"]


@pytest.mark.parametrize(
    ("name", "content", "where", "words"),
    [
        ("p.txt", b"a cat\nbad \xff byte\n", "p.txt:2", "not UTF-8"),
        ("p.jsonl", b'{"prompt": "ok"}\n\n{"prompt": "x",\n', "p.jsonl:3", "not valid JSON"),
        ("p.jsonl", b'{"prompt": "ok"}\n["a list"]\n', "p.jsonl:2", "expected a JSON object"),
        ("p.jsonl", b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "p.jsonl:2", "no 'prompt' field"),
        ("p.jsonl", b'{"prompt": 3}\n', "p.jsonl:1", "not a string"),
        ("p.jsonl", b'{"prompt": null}\n', "p.jsonl:1", "not a string"),
        ("p.txt", b"", "p.txt", "no prompts"),
        ("p.txt", b"\n   \n\t\n", "p.txt", "no prompts"),
        ("p.jsonl", b"\n\n", "p.jsonl", "no prompts"),
        ("p.csv", b"prompt\na cat\n", "p.csv", "neither .txt nor .jsonl"),
        ("p", b"a cat\n", "p", "neither .txt nor .jsonl"),
    ],
)
def test_faults_are_one_line_usage_errors_naming_file_and_line(tmp_path, name, content, where, words):
    path = write(tmp_path, name, content)
    with pytest.raises(UsageError, match=re.escape(words)) as info:
        read_prompts(path)
    err = info.value
    assert err.exit_code == 2 and err.hint
    assert "\n" not in err.message and "\n" not in err.hint
    assert str(tmp_path / where) in err.message and words in err.message


def test_missing_file_and_directory_are_usage_errors(tmp_path):
    for path, words in [(tmp_path / "nope.txt", "does not exist"), (tmp_path / "d.txt", "is a directory")]:
        if words == "is a directory":
            path.mkdir()
        with pytest.raises(UsageError, match=words) as info:
            read_prompts(path)
        assert str(path) in info.value.message and info.value.hint


def test_digest_is_sha256_of_the_bytes_the_prompts_came_from(tmp_path):
    path = write(tmp_path, "p.txt", "a cat\na dog\n")
    read = read_prompt_file(path)
    assert read.sha256 == hashlib.sha256(b"a cat\na dog\n").hexdigest() and read.prompts == ["a cat", "a dog"]
    other = read_prompt_file(write(tmp_path, "q.txt", "a cat\na dog \n"))  # same prompts, other bytes: another key
    assert other.sha256 != read.sha256 and other.prompts == read.prompts


def _counting(tokenizer, seen: list[int]):
    def count(text: str) -> int:
        seen.append(len(text))
        return len(tokenizer.tokenize(text))
    return count


@pytest.mark.parametrize("body", [
    "a photo of the red cat on a dog and " * 300_000,  # 10.8 MB of words
    "thecatofthedog" * 700_000,  # 9.8 MB without whitespace
    "a  \t photo\tof  " * 500_000,  # runs of spaces and tabs
])
def test_token_prefix_keeps_the_tokens_the_encoder_reads_and_tokenizes_little(body):
    """A 10 MB prompt costs the encoder's limit to tokenize (it took 4 GB whole), and the kept tokens are those of
    the whole prompt, including when the cut falls inside a word longer than the first prefix."""
    from simcli.data.prompts import token_prefix
    from tests.helpers.tiny_pixart import TINY_MAX_TOKENS, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    seen: list[int] = []
    prefix = token_prefix(body, TINY_MAX_TOKENS, _counting(tokenizer, seen))
    assert body.startswith(prefix) and max(seen) <= 8 * (TINY_MAX_TOKENS + 8) < 2_000
    whole = tokenizer.tokenize(body[:200_000])  # the whole prompt's first tokens (200 k characters hold them all)
    assert tokenizer.tokenize(prefix)[:TINY_MAX_TOKENS] == whole[:TINY_MAX_TOKENS]


def test_token_prefix_returns_short_prompts_whole_and_grows_until_enough_tokens():
    from simcli.data.prompts import token_prefix

    assert token_prefix("a red fox", 120, lambda text: len(text.split())) == "a red fox"
    long_words = " ".join(["w" * 30] * 2_000)  # 1 token per 31 characters: the first prefix is too short
    seen: list[int] = []
    prefix = token_prefix(long_words, 10, lambda text: seen.append(len(text)) or len(text.split()))
    assert len(prefix.split()) > 18 and len(seen) >= 2 and seen == sorted(seen)
