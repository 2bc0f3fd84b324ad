"""`distill --max-minutes`: a time budget that saves and stops with exit code 75 (a job script requeues on it), and
the SLURM job script in examples/slurm that requeues on it (checked with DRY_RUN=1 and with stub SLURM commands)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simcli.distill.reports import MACHINE_KEYS
from simcli.distill.stop import TIME_LIMIT_EXIT_CODE
from simcli.rundir.layout import list_generators, list_states
from simcli.rundir.snapshots import load_latest_state

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "slurm" / "distill.sbatch"
TINY = ("--teacher", "gmm-ring8", "--preset", "tiny")  # 20 iterations of 32 images
TINY_BUDGET = 1e-5  # minutes (0.6 ms): spent before the first iteration ends, so the run stops after it


def status_records(run_dir: Path) -> list[dict]:
    timing = set(MACHINE_KEYS)
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k not in timing} for r in records if r["kind"] == "status"]


def simcli_line(stderr: str) -> str:
    """The one 'simcli: ...' line, last on stderr, without a traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("simcli: ")]
    assert len(lines) == 1 and stderr.splitlines()[-1] == lines[0], stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- the option


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_a_budget_that_is_not_positive_is_refused(cli, assert_usage_error, tmp_path, value):
    out = tmp_path / "run"
    line = assert_usage_error(cli("distill", *TINY, "--out", out, "--max-minutes", value), "--max-minutes must be a positive")
    assert f"not {value}" in line
    assert not out.exists()


def test_help_shows_the_option_and_exit_code_75(cli):
    result = cli("distill", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.replace("\u2502", " ").split())  # without rich's box lines
    assert "--max-minutes MINUTES Time budget in minutes" in text and "exits with code 75" in text


def test_the_budget_stops_after_an_iteration_with_exit_code_75_and_the_same_command_resumes(cli, tiny_run, tmp_path):
    straight_result, straight = tiny_run  # the same command without a budget, uninterrupted
    assert straight_result.exit_code == 0, straight_result.output
    run_dir = tmp_path / "run"

    result = cli("distill", *TINY, "--out", run_dir, "--max-minutes", TINY_BUDGET)
    assert result.exit_code == TIME_LIMIT_EXIT_CODE == 75, result.output
    assert result.stdout == ""
    line = simcli_line(result.stderr)
    assert line.startswith("simcli: stopped by the time limit (--max-minutes 1e-05) at iteration 1 of 20: saved "
                           "state-0000000.032.pt (iteration 1) and generator-0000000.032.safetensors"), line
    assert line.endswith("run the same command again to resume"), line
    assert [p.name for p in list_states(run_dir)] == ["state-0000000.032.pt"]
    assert [p.name for p in list_generators(run_dir)] == ["generator-0000000.032.safetensors"]
    state, _, _ = load_latest_state(run_dir)
    assert state["progress"]["step"] == 1

    # The same command with a budget that is not spent: it resumes at iteration 1 and finishes.
    resumed = cli("distill", *TINY, "--out", run_dir, "--max-minutes", 60, "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 20 and summary["images_seen"] == 640
    assert summary["resumed_from"].endswith("state-0000000.032.pt")
    assert "resuming from state-0000000.032.pt at iteration 1 of 20" in resumed.stderr
    assert "starting at iteration 0" not in resumed.stderr
    # Every status record once, with the uninterrupted run's losses: the run went on from iteration 1 exactly.
    assert [r["step"] for r in status_records(run_dir)] == [5, 10, 15, 20]
    assert status_records(run_dir) == status_records(straight)
    a, b = load_file(str(list_generators(straight)[-1])), load_file(str(list_generators(run_dir)[-1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- the SLURM job script


def job_env(**settings: object) -> dict[str, str]:
    """The environment of a shell outside SLURM (no SLURM_* variables), with the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SIMCLI_"))}
    for name in ("TEACHER", "RUN_DIR", "GPUS_PER_NODE", "BATCH_GPU", "EXTRA_ARGS", "TIME_LIMIT_MINUTES", "MARGIN_MINUTES",
                 "PORT", "PYTHON", "SRUN_ARGS", "MAX_RESTARTS", "STOP_SIGNAL", "DRY_RUN", "DRY_RUN_EXIT", "MASTER_ADDR",
                 "EXIT_FILE"):
        env.pop(name, None)
    return {**env, **{k: str(v) for k, v in settings.items()}}


def run_job(env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_job_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_job_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_the_torchrun_command_and_requeues_on_75(tmp_path):
    result = run_job(job_env(DRY_RUN=1), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    (srun,) = [line for line in out.splitlines() if line.startswith("would run: srun ")]
    assert "--ntasks-per-node 1" in srun
    torchrun = srun[srun.index("torchrun "):]
    for part in ("--nnodes 2", "--nproc_per_node 8", "--rdzv_backend c10d", "--rdzv_endpoint node001:", "--rdzv_id 123456",
                 "-m simcli distill", "--teacher edm-cifar10", "--out runs/edm-cifar10", "--batch-gpu 32",
                 "--max-minutes 230"):  # made-up job: 240 minutes left, minus the 10-minute margin
        assert part in torchrun, (part, torchrun)
    assert "would run: scontrol show hostnames" in out and "would run: squeue -h -j 123456 -o %L" in out
    assert "pretending the run exited with code 75" in out
    assert "on exit code 75 (time budget), 138 (SIGUSR1) or 143 (SIGTERM" in out
    assert "exit code 75: requeueing job 123456" in out
    assert out.rstrip().splitlines()[-1] == "would run: scontrol requeue 123456"
    assert not list(tmp_path.iterdir())  # nothing written


def test_dry_run_takes_its_settings_from_the_environment(tmp_path):
    env = job_env(DRY_RUN=1, DRY_RUN_EXIT=0, SLURM_JOB_ID=777, SLURM_NNODES=4, GPUS_PER_NODE=4, TEACHER="edm-ffhq64",
                  RUN_DIR="/shared/ffhq", BATCH_GPU="", EXTRA_ARGS="--method sid --kimg 100", TIME_LIMIT_MINUTES=60,
                  MARGIN_MINUTES=15, PORT=31000, MASTER_ADDR="gpu017")
    result = run_job(env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (srun,) = [line for line in result.stdout.splitlines() if line.startswith("would run: srun ")]
    for part in ("--nnodes 4", "--nproc_per_node 4", "--rdzv_endpoint gpu017:31000", "--rdzv_id 777",
                 "--teacher edm-ffhq64 --out /shared/ffhq --max-minutes 45 --method sid --kimg 100"):
        assert part in srun, (part, srun)
    assert "--batch-gpu" not in srun and "squeue" not in result.stdout
    assert "the run is done" in result.stdout and "scontrol requeue" not in result.stdout


@pytest.mark.parametrize(("code", "requeued"), [(138, True), (143, True), (1, False), (2, False)])
def test_dry_run_requeue_decision(tmp_path, code, requeued):
    result = run_job(job_env(DRY_RUN=1, DRY_RUN_EXIT=code), tmp_path)
    assert ("would run: scontrol requeue 123456" in result.stdout) == requeued, result.stdout
    assert result.returncode == (0 if requeued else code), result.stdout + result.stderr


def test_outside_slurm_without_dry_run_it_runs_nothing(tmp_path):
    result = run_job(job_env(), tmp_path)
    assert result.returncode == 2
    assert "not inside a SLURM job" in result.stderr and "DRY_RUN=1" in result.stderr


def test_too_little_time_for_the_margin_is_refused(tmp_path):
    result = run_job(job_env(DRY_RUN=1, TIME_LIMIT_MINUTES=5), tmp_path)
    assert result.returncode == 2 and "MARGIN_MINUTES=10" in result.stderr
    assert "would run: srun" not in result.stdout


STUBS = {
    # srun: run the task (torchrun ...) here, once
    "srun": 'while [ $# -gt 0 ] && [ "$1" != torchrun ]; do shift; done\nexec "$@"\n',
    "scontrol": 'echo "$*" >> "$STUB_LOG"\nif [ "$1 $2" = "show hostnames" ]; then echo localhost; fi\n',
    "squeue": 'echo 10:00\n',  # 10 minutes left
}


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_the_job_requeues_when_the_run_stops_on_its_budget(tmp_path):
    """The real script with stub srun/scontrol/squeue: torchrun exits 1 when a worker exits 75, so the script must
    read rank 0's own exit code, requeue, and the requeued job (the same script) must resume and finish."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/bash\n" + body)
        (stubs / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir, log = tmp_path / "run", tmp_path / "scontrol.log"
    env = job_env(SLURM_JOB_ID=4242, SLURM_NNODES=1, SLURM_JOB_NODELIST="localhost", GPUS_PER_NODE=1, PORT=port,
                  TEACHER="gmm-ring8", RUN_DIR=run_dir, BATCH_GPU="", EXTRA_ARGS="--preset tiny --threads 1",
                  MARGIN_MINUTES=10 - TINY_BUDGET, PYTHON=sys.executable, STUB_LOG=log, NO_COLOR=1, OMP_NUM_THREADS=1)
    env["PATH"] = f"{stubs}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    first = run_job(env, tmp_path, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "srun ended with 1; rank 0 exited with 75" in first.stdout, first.stdout
    assert "exit code 75: requeueing job 4242" in first.stdout
    assert "stopped by the time limit (--max-minutes 1e-05) at iteration 1 of 20" in first.stderr
    assert log.read_text().splitlines() == ["show hostnames localhost", "requeue 4242"]
    assert [p.name for p in list_states(run_dir)] == ["state-0000000.032.pt"]
    assert not list(tmp_path.glob("run.slurm-*.exit"))  # read and removed

    env.update(SLURM_RESTART_COUNT="1", MARGIN_MINUTES="1")  # the requeued job: 9 minutes for the rest
    second = run_job(env, tmp_path, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "job 4242 (requeued 1 times)" in second.stdout and "the run is done" in second.stdout
    assert "resuming from state-0000000.032.pt at iteration 1 of 20" in second.stderr
    assert load_latest_state(run_dir)[0]["progress"]["step"] == 20
    assert log.read_text().splitlines() == ["show hostnames localhost", "requeue 4242", "show hostnames localhost"]
