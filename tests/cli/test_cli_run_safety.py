"""Runs that survive clusters and people (issue 9), through the CLI on copies of the tiny run.

A second process on a run directory, a full disk while writing, unreadable states, a deleted config.json, a
corrupt generator, a damaged metrics log, and pruning old generators.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest

import simcli.rundir.metrics as metrics_module
from simcli.rundir.layout import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]
TINY = ("--teacher", "gmm-ring8", "--preset", "tiny")
NO_SPACE = "No space left on device"


def distill(cli, run_dir: Path, *args: object):
    return cli("distill", *TINY, "--out", run_dir, *args)


def one_error_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("simcli: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ---------------------------------------------------------------------------------------------- the lock


def test_a_run_directory_in_use_by_another_process_is_refused(cli, tree, assert_usage_error, tiny_run_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom simcli.rundir.lock import RunDirLock\nl = RunDirLock(sys.argv[1])\n"
         "print('locked', flush=True)\ntime.sleep(300)", str(tiny_run_copy)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree(tiny_run_copy)
        assert_usage_error(distill(cli, tiny_run_copy, "--steps", 30), f"PID {holder.pid} on host", "is in use by")
        assert tree(tiny_run_copy) == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    result = distill(cli, tiny_run_copy, "--steps", 30, "--json")  # the holder died (SIGKILL): the lock is free
    assert result.exit_code == 0, result.output
    assert not (tiny_run_copy / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------- a full disk


def _fail_replace_of(monkeypatch, name: str) -> None:
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _fail_write_of(monkeypatch, name: str) -> None:
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(f".{name}.tmp-"):
            real(self, data[: len(data) // 2])  # half of it reaches the disk
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def _fail_append(monkeypatch, name: str) -> None:
    def full_open(path, mode="r", *args, **kwargs):
        if "a" in mode:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics_module, "open", full_open, raising=False)


@pytest.mark.parametrize(
    ("name", "inject"),
    [
        ("generator-0000000.960.safetensors", _fail_write_of),
        ("generator-0000000.960.safetensors", _fail_replace_of),
        ("state-0000000.960.pt", _fail_replace_of),
        ("metrics.jsonl", _fail_append),
        ("config.json", _fail_replace_of),
    ],
)
def test_a_full_disk_is_one_line_exit_1_and_keeps_every_good_file(cli, tree, tiny_run_copy, monkeypatch, name, inject):
    run_dir = tiny_run_copy
    before = tree(run_dir)
    inject(monkeypatch, name)
    result = distill(cli, run_dir, "--steps", 30)
    one_error_line(result, 1, f"cannot write {run_dir / name}: {NO_SPACE}")
    monkeypatch.undo()
    after = tree(run_dir)
    legitimately_changed = {"metrics.jsonl", "config.json"} - {name}  # appended to / the new duration, on the way
    for file, content in before.items():
        if file not in legitimately_changed:
            assert after.get(file) == content, file
    assert not [f for f in after if f.startswith(".")]  # no temporary file, and the lock was released
    # The same command, once there is space again, resumes from the last good state.
    result = distill(cli, run_dir, "--steps", 30, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 30
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15, 20, 25, 30]


def test_an_unmapped_os_error_is_one_line_not_an_internal_error(cli, tiny_run_copy, monkeypatch):
    import simcli.distill.setup as setup

    def broken(run_dir):
        raise OSError(errno.EIO, "Input/output error", str(run_dir / "x"))

    monkeypatch.setattr(setup, "remove_stale_temp_files", broken)
    line = one_error_line(distill(cli, tiny_run_copy, "--steps", 30), 1)
    assert line == f"simcli: error: {tiny_run_copy / 'x'}: Input/output error", line


# ---------------------------------------------------------------------------------------------- no silent restart


def test_unreadable_states_are_refused_and_restart_moves_them_aside(cli, tree, assert_usage_error, tiny_run_copy):
    run_dir = tiny_run_copy
    states = sorted(run_dir.glob("state-*.pt"))
    assert [p.name for p in states] == ["state-0000000.320.pt", "state-0000000.640.pt"]
    for p in states:
        p.write_bytes(b"not a state")
    before = tree(run_dir)
    line = assert_usage_error(distill(cli, run_dir), "none is readable", "state-0000000.320.pt, state-0000000.640.pt", "--restart")
    assert "refusing to start it again from iteration 0" in line
    assert tree(run_dir) == before  # nothing moved, nothing written

    result = distill(cli, run_dir, "--restart", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 20 and summary["resumed_from"] is None
    assert "starting at iteration 0 of 20" in result.stderr and "warning: no state file was readable" in result.stderr
    [folder] = [p for p in run_dir.iterdir() if p.name.startswith("discarded-")]
    for name in ("state-0000000.320.pt", "state-0000000.640.pt", "generator-0000000.320.safetensors",
                 "generator-0000000.640.safetensors", "metrics.jsonl"):
        assert (folder / name).read_bytes() == before[name], name  # moved, not deleted
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15, 20]
    assert sorted(p.name for p in run_dir.glob("state-*.pt")) == ["state-0000000.320.pt", "state-0000000.640.pt"]

    # With a readable state, --restart is refused rather than throwing the run away.
    assert_usage_error(distill(cli, run_dir, "--restart"), "--restart given, but state-0000000.640.pt", "is readable")


def test_a_deleted_config_is_recovered_from_the_newest_state(cli, assert_usage_error, tiny_run_copy):
    run_dir = tiny_run_copy
    original = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").unlink()
    assert_usage_error(distill(cli, run_dir, "--seed", 1), "holds a run with a different spec (seed)")
    assert not (run_dir / "config.json").exists()
    result = distill(cli, run_dir, "--steps", 30, "--json")
    assert result.exit_code == 0, result.output
    assert "warning: config.json was missing; recovered the run's spec from state-0000000.640.pt" in result.stderr
    assert json.loads(result.stdout)["resumed_from"].endswith("state-0000000.640.pt")
    recovered = json.loads((run_dir / "config.json").read_text())
    assert recovered == {**original, "training": {**original["training"], "duration_steps": 30}}


# ---------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_newest_generator_of_a_finished_run_is_rewritten(cli, tiny_run_copy, damage):
    run_dir = tiny_run_copy
    newest = run_dir / "generator-0000000.640.safetensors"
    good = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(good[:100])
    else:
        newest.unlink()
    result = distill(cli, run_dir, "--json")
    assert result.exit_code == 0, result.output
    what = "unreadable" if damage == "truncated" else "missing"
    assert f"warning: generator-0000000.640.safetensors was {what}; rewrote it from state-0000000.640.pt" in result.stderr
    assert newest.read_bytes() == good  # the same bytes as the original snapshot


def test_keep_generators_prunes_old_snapshots_but_never_the_best(cli, tiny_run_copy):
    run_dir = tiny_run_copy
    best = run_dir / "generator-best.safetensors"
    best.write_bytes((run_dir / "generator-0000000.320.safetensors").read_bytes())
    # A resumable change: the run started with every generator kept.
    result = distill(cli, run_dir, "--steps", 40, "--set", "logging.keep_generators=1")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run_dir.glob("generator-*.safetensors")) == [
        "generator-0000001.280.safetensors", "generator-best.safetensors",
    ]


# ---------------------------------------------------------------------------------------------- metrics log


def test_dropped_metrics_lines_are_reported(cli, tiny_run_copy):
    run_dir = tiny_run_copy
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "\x00\x00garbage", *lines[1:]]) + '\n{"kind": "status", "st')
    result = distill(cli, run_dir, "--steps", 25)
    assert result.exit_code == 0, result.output
    assert "warning: metrics.jsonl: dropped 2 unreadable lines (lines 2, 6: no JSON record" in result.stderr
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10, 15, 20, 25]
