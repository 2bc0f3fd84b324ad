"""A stop during the fit of the network to an analytic teacher (issue 16, item 7): the fit saves its progress
between two steps and the same command goes on from it, to the network of a fit that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simcli.config.resolve import resolve_spec
from simcli.distill.events import TeacherFitProgress
from simcli.distill.stop import StopRequest
from simcli.distill.teacher_fit import (
    PARTIAL_FIT_FILE,
    FitInterrupted,
    fit_mlp_denoiser,
    fitted_teacher_network,
    mlp_architecture,
)
from simcli.errors import Stopped
from simcli.nets.registry import build_network
from simcli.teachers.registry import describe_teacher_name, load_teacher

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def fit_spec(steps: int, *sets: str):
    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny",
                           sets=[f"teacher_fit.steps={steps}", "teacher_fit.batch_size=64", *sets])
    return spec


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fit_stopped_between_steps_goes_on_to_the_network_of_an_unstopped_fit():
    # network.dropout: the fit then draws from torch's global generator too, which the progress carries
    spec = fit_spec(60, "network.dropout=0.1")
    teacher = load_teacher("gmm-ring8").denoiser
    fit = spec.teacher_fit
    kwargs = dict(steps=fit.steps, batch_size=fit.batch_size, lr=fit.lr, sigma_min=fit.sigma_min, sigma_max=fit.sigma_max,
                  seed=spec.seed, device=CPU, report_every=5, report_every_s=None)

    def network():
        torch.manual_seed(spec.seed)
        return build_network(mlp_architecture(teacher.dim, spec.network))

    whole = network()
    history = fit_mlp_denoiser(teacher, whole, **kwargs)

    stop, saved = StopRequest(announce=lambda text: None), []
    first = network()
    with pytest.raises(FitInterrupted) as info:
        fit_mlp_denoiser(teacher, first, **kwargs, stop=stop, save=saved.append,
                         on_progress=lambda step, loss: stop.request(signal.SIGTERM) if step == 25 else None)
    assert info.value.step == 25
    assert [p["step"] for p in saved] == [25]  # saved once: at the stop (no 5 s passed)

    torch.manual_seed(1234)  # whatever happened meanwhile to the global generator
    second = build_network(mlp_architecture(teacher.dim, spec.network))
    resumed_history = fit_mlp_denoiser(teacher, second, **kwargs, resume=saved[0])
    assert resumed_history == history
    assert weights_equal(second.state_dict(), whole.state_dict())


def test_the_fit_saves_its_progress_every_few_seconds_of_its_clock():
    spec = fit_spec(40)
    teacher = load_teacher("gmm-ring8").denoiser
    fit, saved, ticks = spec.teacher_fit, [], iter(range(10**6))
    torch.manual_seed(spec.seed)
    net = build_network(mlp_architecture(teacher.dim, spec.network))
    fit_mlp_denoiser(teacher, net, steps=fit.steps, batch_size=fit.batch_size, lr=fit.lr, sigma_min=fit.sigma_min,
                     sigma_max=fit.sigma_max, seed=spec.seed, device=CPU, report_every_s=None,
                     clock=lambda: float(next(ticks)), save=saved.append, save_every_s=10.0)
    # the clock ticks once per read: a save every few steps, each with the steps done so far
    assert [p["step"] for p in saved] == sorted({p["step"] for p in saved}) and len(saved) >= 3
    assert all(0 < p["step"] < 40 for p in saved)


def test_a_stop_during_the_fit_saves_it_in_the_run_directory_and_the_same_call_goes_on(tmp_path):
    spec = fit_spec(600)
    teacher = load_teacher("gmm-ring8").denoiser
    (tmp_path / "whole").mkdir()
    whole, _ = fitted_teacher_network(teacher, spec, tmp_path / "whole", CPU, lambda event: None)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stop = StopRequest(announce=lambda text: None)

    def on_event(event):
        if isinstance(event, TeacherFitProgress) and event.step >= 250:
            stop.request(signal.SIGTERM)

    with pytest.raises(Stopped) as info:
        fitted_teacher_network(teacher, spec, run_dir, CPU, on_event, stop)
    assert info.value.exit_code == 143
    assert info.value.message == (f"stopped by SIGTERM during the teacher fit, at step 250 of 600: saved its progress in "
                                  f"{run_dir / PARTIAL_FIT_FILE}; run the same command again to go on with the fit")
    assert (run_dir / PARTIAL_FIT_FILE).is_file() and not (run_dir / "teacher-fit.safetensors").exists()
    assert stop.activity == "iteration"  # the fit's own wording is undone

    events: list = []
    network, _ = fitted_teacher_network(teacher, spec, run_dir, CPU, events.append)
    assert events[0] == TeacherFitProgress(250, 600, events[0].loss)  # said at once: the fit goes on from step 250
    assert weights_equal(network.state_dict(), whole.state_dict())
    assert not (run_dir / PARTIAL_FIT_FILE).exists()
    assert weights_equal(load_file(run_dir / "teacher-fit.safetensors"), whole.state_dict())


def test_a_time_budget_is_left_to_the_loop(tmp_path):
    """--max-minutes is checked after each iteration, as before (a budget already spent still runs one); the fit
    serves signals only, and its progress saved every few seconds keeps what a longer fit did."""
    spec = fit_spec(300)
    teacher = load_teacher("gmm-ring8").denoiser
    stop = StopRequest(max_seconds=1e-6, announce=lambda text: None)
    network, _ = fitted_teacher_network(teacher, spec, tmp_path, CPU, lambda event: None, stop)
    assert (tmp_path / "teacher-fit.safetensors").is_file() and not stop.requested


def test_a_progress_of_another_fit_is_not_used(tmp_path):
    teacher = load_teacher("gmm-ring8").denoiser
    stop = StopRequest(announce=lambda text: None)
    stop.request(signal.SIGTERM)
    with pytest.raises(Stopped):
        fitted_teacher_network(teacher, fit_spec(600, "seed=1"), tmp_path, CPU, lambda event: None, stop)
    events: list = []
    other = fit_spec(300)
    network, _ = fitted_teacher_network(teacher, other, tmp_path, CPU, events.append)
    assert not any(e.step == 0 for e in events)  # started afresh, not "going on from step 0" of the other fit
    (tmp_path / "fresh").mkdir()
    fresh, _ = fitted_teacher_network(teacher, other, tmp_path / "fresh", CPU, lambda event: None)
    assert weights_equal(network.state_dict(), fresh.state_dict())


@pytest.mark.slow  # about 40 s: two processes of simcli and a straight run
def test_ctrl_c_during_the_fit_is_acknowledged_at_once_and_saves_the_fit(tmp_path):
    """The command line: the first Ctrl-C is acknowledged within a second, the fit stops at its next step with its
    progress saved (exit code 130), and the same command goes on to the teacher fit of a command never stopped."""
    command = [sys.executable, "-m", "simcli", "distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--steps", "2",
               "--set", "teacher_fit.steps=1500"]
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SIMCLI_DEBUG", None)
    run_dir = tmp_path / "run"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([*command, "--out", str(run_dir)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            deadline = time.monotonic() + 240
            while "fitting the network" not in err_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            ack = "simcli: Ctrl-C: stopping after this teacher-fit step and saving; press Ctrl-C again to quit at once without saving"
            while ack not in err_path.read_text() and proc.poll() is None and time.monotonic() - sent < 10:
                time.sleep(0.01)
            acknowledged = time.monotonic() - sent
            code = proc.wait(timeout=60)
            stopped = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text()
    lines = [line for line in stderr.splitlines() if line.startswith("simcli: ")]
    assert code == 130 and len(lines) == 2 and lines[0] == ack, stderr
    assert lines[1].startswith("simcli: stopped by SIGINT during the teacher fit, at step "), lines
    assert acknowledged < 1.0 and stopped < 10, (acknowledged, stopped)
    step = torch.load(run_dir / PARTIAL_FIT_FILE, weights_only=True)["step"]
    assert f"at step {step} of 1500: saved its progress in {run_dir / PARTIAL_FIT_FILE}" in lines[1]

    resumed = subprocess.run([*command, "--out", str(run_dir)], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"fitting the network to the analytic teacher: step {step}/1500" in resumed.stderr
    straight = tmp_path / "straight"
    from simcli.distill.loop import run_distillation

    spec, _ = resolve_spec("gmm-ring8", describe_teacher_name, preset="tiny", flags={"training": {"duration_steps": 2}},
                           sets=["teacher_fit.steps=1500"])
    run_distillation(spec, straight)
    assert json.loads((straight / "config.json").read_text()) == json.loads((run_dir / "config.json").read_text())
    assert weights_equal(load_file(straight / "teacher-fit.safetensors"), load_file(run_dir / "teacher-fit.safetensors"))
