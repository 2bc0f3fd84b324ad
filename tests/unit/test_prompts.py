"""Prompt files (simcli.data.prompts): .txt and .jsonl, and a one-line UsageError naming file and line for each fault."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from simcli.data.prompts import prompts_digest, read_prompts
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
    with pytest.raises(UsageError, match="does not exist"):
        prompts_digest(tmp_path / "nope.txt")


def test_digest_is_sha256_of_the_bytes(tmp_path):
    path = write(tmp_path, "p.txt", "a cat\na dog\n")
    assert prompts_digest(path) == hashlib.sha256(b"a cat\na dog\n").hexdigest()
    other = write(tmp_path, "q.txt", "a cat\na dog \n")  # the same prompts, other bytes: another cache key
    assert prompts_digest(other) != prompts_digest(path) and read_prompts(other) == read_prompts(path)
