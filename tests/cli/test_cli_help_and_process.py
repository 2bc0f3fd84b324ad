"""Help text, version, and the real console script / `python -m simcli` in a subprocess (exit codes, no tracebacks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simcli

SIMCLI = Path(sys.executable).parent / "simcli"  # the console script installed next to the venv's python


def test_root_help(cli):
    result = cli("--help")
    assert result.exit_code == 0, result.output
    for word in ("distill", "sample", "eval", "--version"):
        assert word in result.stdout, word


def test_distill_help_mentions_the_key_flags(cli):
    result = cli("distill", "--help")
    assert result.exit_code == 0, result.output
    for flag in ("--teacher", "--out", "--method", "--distance", "--kimg", "--steps", "--set", "--dry-run", "--json",
                 "--preset", "--config", "--lr", "--batch-size"):
        assert flag in result.stdout, flag
    assert "simcli distill --teacher gmm-ring8 --out runs/ring8-sim" in result.stdout  # the epilog's examples


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("sample", ("--generator", "--teacher", "--out", "--n", "--seed", "--force", "--json")),
        ("eval", ("--teacher", "--samples", "--generator", "--n", "--json")),
    ],
)
def test_sample_and_eval_help(cli, command, flags):
    result = cli(command, "-h")
    assert result.exit_code == 0, result.output
    for flag in flags:
        assert flag in result.stdout, flag


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"simcli {simcli.__version__}"


def test_keyboard_interrupt_is_exit_130(cli, monkeypatch):
    import simcli.config.resolve as resolve

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(resolve, "resolve_spec", interrupted)
    result = cli("distill", "--teacher", "gmm-ring8", "--dry-run")
    assert result.exit_code == 130
    assert result.stderr.startswith("simcli: interrupted") and "Traceback" not in result.output


# ---------------------------------------------------------------- real processes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SIMCLI_DEBUG"}
    env.update(NO_COLOR="1", COLUMNS="200", OMP_NUM_THREADS="1")
    return env


def _run(argv: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env={**_env(), **env}, capture_output=True, text=True, timeout=120)


def _assert_one_error_line(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error: ") and fragment in lines[0], proc.stderr


def test_console_script_exists():
    assert SIMCLI.is_file() and os.access(SIMCLI, os.X_OK), SIMCLI


def test_console_script_bad_teacher_exit_2_and_nothing_created(tmp_path):
    proc = _run([str(SIMCLI), "distill", "--teacher", "gmm-ring9", "--preset", "tiny", "--out", "run"], tmp_path)
    _assert_one_error_line(proc, 2, "unknown teacher 'gmm-ring9'")
    assert list(tmp_path.iterdir()) == []


def test_console_script_mistyped_set_key(tmp_path):
    proc = _run([str(SIMCLI), "distill", "--teacher", "gmm-ring8", "--set", "loss.distnce=l1", "--out", "run"], tmp_path)
    _assert_one_error_line(proc, 2, "unknown spec key 'loss.distnce'")
    assert list(tmp_path.iterdir()) == []


def test_python_m_simcli_dry_run_json_is_clean(tmp_path):
    proc = _run([sys.executable, "-m", "simcli", "distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--dry-run", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    doc = json.loads(proc.stdout)
    assert doc["spec"]["training"]["duration_steps"] == 20 and doc["provenance"]["training.duration_steps"] == "preset:tiny"


def test_python_m_simcli_non_mapping_set_is_a_usage_error(tmp_path):
    # Used to be 'internal error: AttributeError' with exit 1.
    proc = _run([sys.executable, "-m", "simcli", "distill", "--teacher", "gmm-ring8", "--set", "loss=3", "--dry-run"], tmp_path)
    _assert_one_error_line(proc, 2, "spec key 'loss'")


UNEXPECTED = """
import sys
import simcli.config.resolve as resolve
from simcli.cli.app import main
def boom(*args, **kwargs):
    raise RuntimeError("boom")
resolve.resolve_spec = boom
sys.argv = ["simcli", "distill", "--teacher", "gmm-ring8", "--dry-run"]
main()
"""


def test_unexpected_exception_is_one_line_exit_1(tmp_path):
    proc = _run([sys.executable, "-c", UNEXPECTED], tmp_path)
    _assert_one_error_line(proc, 1, "internal error: RuntimeError: boom")
    assert "SIMCLI_DEBUG=1" in proc.stderr

    debug = _run([sys.executable, "-c", UNEXPECTED], tmp_path, SIMCLI_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and debug.stderr.rstrip().splitlines()[-1].startswith("simcli: error: internal error")
