"""Fit an MLP denoiser to an analytic teacher's exact denoiser (data-free regression), cached in the run directory.

An analytic teacher has no network to copy into the generator and the online model, so simcli makes one:
the MLP is regressed onto D_teacher(x; sigma) at x = x0 + sigma eps with x0 exact teacher samples and
ln sigma uniform over [sigma_min, sigma_max]. The loss is EDM-weighted so every noise level counts alike
in the network's own output units.

A long fit is resumable: every FIT_SAVE_EVERY_S seconds its progress (the network, Adam's state, the schedule, the
random generators and the step) goes atomically into PARTIAL_FIT_FILE in the run directory, and a stop asked by a
signal is served between two steps by saving it and raising simcli.errors.Stopped. The same command then goes on
from the saved step, with the same result as a fit that was never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simcli.config.spec import NetworkSpec, RunSpec
from simcli.distill.events import EventHandler, TeacherFitProgress
from simcli.distill.losses import edm_weight
from simcli.errors import Stopped
from simcli.nets.mlp import MLPDenoiser
from simcli.nets.registry import build_network
from simcli.rundir.atomic import atomic_write
from simcli.rundir.layout import TEACHER_FIT_FILE
from simcli.rundir.snapshots import load_generator_file, save_generator
from simcli.teachers.gmm import GaussianMixture

PARTIAL_FIT_FILE = ".teacher-fit.partial.pt"
"""The progress of an unfinished fit, in the run directory (hidden: a new run may start in a folder that holds it)."""
PARTIAL_FIT_FORMAT = "simcli-teacher-fit-progress/1"
FIT_SAVE_EVERY_S = 5.0
"""How often a fit saves its progress."""


class FitInterrupted(Exception):
    """Raised by fit_mlp_denoiser once it saved its progress for a stop request; `step`: the steps done."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


def fit_mlp_denoiser(
    teacher: GaussianMixture,
    network: MLPDenoiser,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    sigma_min: float,
    sigma_max: float,
    seed: int,
    device: torch.device,
    on_progress: Callable[[int, float], None] | None = None,
    report_every: int = 250,
    report_every_s: float | None = 2.0,
    clock: Callable[[], float] = time.monotonic,
    stop: Any = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    save_every_s: float = FIT_SAVE_EVERY_S,
    resume: dict[str, Any] | None = None,
) -> list[float]:
    """Train `network` in place to match the teacher's denoiser; returns the loss every `report_every` steps and at the end.

    `on_progress(step, loss)` is called at those steps and also whenever `report_every_s` seconds (of `clock`)
    passed since the last call, so a slow fit still shows progress; the returned history does not depend on timing.
    `save(progress)` is handed the fit's progress (fit_progress's fields) every `save_every_s` seconds; `stop` (a
    simcli.distill.stop.StopRequest) is checked between steps: when a signal asked for a stop, the progress is saved
    and FitInterrupted raised (a time budget, --max-minutes, is checked by the loop after each iteration, as before;
    the progress saved every few seconds keeps a fit that outlasts it). `resume`: a saved progress to go on from (the
    result is the same as without the interruption)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    teacher = teacher.to(device)
    history: list[float] = []
    first, last_loss = 0, math.nan
    if resume is not None:
        network.load_state_dict(resume["network"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["rng"])
        torch.set_rng_state(resume["torch_rng"])  # dropout draws from it
        if device.type == "cuda" and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(resume["cuda_rng"], device)
        first, history, last_loss = int(resume["step"]), list(resume["history"]), float(resume["last_loss"])
    network.train()

    def progress(step: int) -> dict[str, Any]:
        return {"format": PARTIAL_FIT_FORMAT, "step": step, "network": network.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "history": list(history), "last_loss": last_loss}

    last_report = last_save = clock()
    for step in range(first, steps):
        if stop is not None and stop.requested:
            if save is not None:
                save(progress(step))
            raise FitInterrupted(step)
        if save is not None and clock() - last_save >= save_every_s:
            save(progress(step))
            last_save = clock()
        x0, _ = teacher.sample(batch_size, generator=gen)
        u = torch.rand(batch_size, generator=gen)
        sigma = torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
        x, sigma = x.to(device), sigma.to(device)
        with torch.no_grad():
            target = teacher(x, sigma)
        err = (network(x, sigma) - target).pow(2).sum(1)
        loss = (edm_weight(sigma, network.sigma_data) * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        by_steps = (step + 1) % report_every == 0 or step + 1 == steps
        if by_steps:
            last_loss = loss.item()
            history.append(last_loss)
        if on_progress is not None and (by_steps or (report_every_s is not None and clock() - last_report >= report_every_s)):
            last_report = clock()
            last_loss = loss.item()
            on_progress(step + 1, last_loss)
    network.eval()
    return history


def mlp_architecture(dim: int, network: NetworkSpec) -> dict[str, Any]:
    """The architecture record of an MLP denoiser (`simcli.nets.registry.build_network` rebuilds it)."""
    return {"kind": "mlp", "dim": dim, **network.model_dump()}


def _fit_key(teacher: GaussianMixture, spec: RunSpec) -> str:
    h = hashlib.sha256()
    for t in (teacher.weights, teacher.means, teacher.stds):
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(json.dumps([spec.network.model_dump(), spec.teacher_fit.model_dump(), spec.seed], sort_keys=True).encode())
    return h.hexdigest()


def _saved_progress(path: Path, key: str) -> dict[str, Any] | None:
    """The progress an earlier, stopped fit of the same teacher and settings saved; None when there is none (or it is
    unreadable, or of another fit: the fit then starts again)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(saved, dict) or saved.get("format") != PARTIAL_FIT_FORMAT or saved.get("fit_key") != key:
        return None
    return saved


def fitted_teacher_network(
    teacher: GaussianMixture, spec: RunSpec, run_dir: Path, device: torch.device, on_event: EventHandler,
    stop: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The MLP fitted to an analytic teacher, from the run directory's cache when it matches.

    `stop` (simcli.distill.stop.StopRequest): served between the fit's steps: the progress is saved in the run
    directory (PARTIAL_FIT_FILE) and simcli.errors.Stopped raised; the same command goes on from there."""
    architecture = mlp_architecture(teacher.dim, spec.network)
    network = build_network(architecture)
    key = _fit_key(teacher, spec)
    cache = run_dir / TEACHER_FIT_FILE
    if cache.is_file():
        tensors, meta = load_generator_file(cache)
        if meta.get("fit_key") == key:
            network.load_state_dict(tensors)
            return network.to(device).eval(), architecture
    torch.manual_seed(spec.seed)  # the MLP's initial weights
    network = build_network(architecture).to(device)
    fit = spec.teacher_fit
    partial = run_dir / PARTIAL_FIT_FILE
    resume = _saved_progress(partial, key)

    def save(progress: dict[str, Any]) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # through a Python file, so a full disk raises OSError (WriteFailed)
                torch.save({**progress, "fit_key": key}, f)

        atomic_write(partial, write)

    if resume is not None:  # say at once that the fit goes on from where it stopped
        on_event(TeacherFitProgress(int(resume["step"]), fit.steps, float(resume["last_loss"])))
    activity = getattr(stop, "activity", None)
    if stop is not None:
        stop.activity = "teacher-fit step"
    try:
        fit_mlp_denoiser(
            teacher,
            network,
            steps=fit.steps,
            batch_size=fit.batch_size,
            lr=fit.lr,
            sigma_min=fit.sigma_min,
            sigma_max=fit.sigma_max,
            seed=spec.seed,
            device=device,
            on_progress=lambda step, loss: on_event(TeacherFitProgress(step, fit.steps, loss)),
            stop=stop,
            save=save,
            resume=resume,
        )
    except FitInterrupted as interrupted:
        raise Stopped(f"stopped by {stop.name} during the teacher fit, at step {interrupted.step} of {fit.steps}: saved "
                      f"its progress in {partial}; run the same command again to go on with the fit",
                      stop.exit_code) from None
    finally:
        if stop is not None:
            stop.activity = activity
    save_generator(cache, network.state_dict(), {"fit_key": key, "architecture": architecture, "teacher": spec.teacher})
    partial.unlink(missing_ok=True)
    return network.eval(), architecture
