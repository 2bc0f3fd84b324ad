"""Shared helpers for the CLI tests: an in-process runner, a file-tree snapshot, and one tiny real run.

Everything that actually distills uses `--preset tiny` (tiny MLPs, 20 iterations), so the whole
tests/cli set stays well under a minute on two CPU cores.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from simcli.cli.app import app

# NO_COLOR: plain text; COLUMNS: rich never wraps a flag name in help text; SIMCLI_DEBUG unset: no tracebacks.
CLI_ENV = {"NO_COLOR": "1", "COLUMNS": "200", "SIMCLI_DEBUG": None}


def run_cli(*args: object):
    """Invoke the Typer app in-process; typer's CliRunner keeps stdout and stderr apart (result.stdout/.stderr)."""
    runner = CliRunner(env=CLI_ENV)
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root (relative) with its bytes; None for directories."""
    root = Path(root)
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _check_usage_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting 'simcli: error:', empty stdout, no traceback; returns the line."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("simcli: error: "), line
    assert result.stdout == "", result.stdout
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def one_json_document(text: str) -> dict:
    """stdout must be exactly one JSON document (json.loads rejects anything before or after it)."""
    assert text.strip(), "stdout is empty"
    return json.loads(text)


@pytest.fixture
def cli() -> Callable:
    return run_cli


@pytest.fixture
def tree() -> Callable:
    return snapshot


@pytest.fixture
def assert_usage_error() -> Callable:
    return _check_usage_error


@pytest.fixture
def json_doc() -> Callable:
    return one_json_document


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[object, Path]:
    """One real `simcli distill --preset tiny --json` run (20 iterations of 32 images); shared, never modified."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    result = run_cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", run_dir, "--json")
    return result, run_dir


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run directory, for tests that resume or try to resume it."""
    result, run_dir = tiny_run
    assert result.exit_code == 0, result.output
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="session")
def teacher_npz(tmp_path_factory) -> tuple[object, Path]:
    """200 samples of the gmm-ring8 teacher's 18-step EDM Heun sampler."""
    out = tmp_path_factory.mktemp("teacher") / "t.npz"
    result = run_cli("sample", "--teacher", "gmm-ring8", "--steps", 18, "--n", 200, "--out", out, "--json")
    return result, out
