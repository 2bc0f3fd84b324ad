"""Fit an MLP denoiser to an analytic teacher's exact denoiser (data-free regression), cached in the run directory.

An analytic teacher has no network to copy into the generator and the online model, so simcli makes one:
the MLP is regressed onto D_teacher(x; sigma) at x = x0 + sigma eps with x0 exact teacher samples and
ln sigma uniform over [sigma_min, sigma_max]. The loss is EDM-weighted so every noise level counts alike
in the network's own output units.
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
from simcli.nets.mlp import MLPDenoiser
from simcli.nets.registry import build_network
from simcli.rundir.layout import TEACHER_FIT_FILE
from simcli.rundir.snapshots import load_generator_file, save_generator
from simcli.teachers.gmm import GaussianMixture


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
) -> list[float]:
    """Train `network` in place to match the teacher's denoiser; returns the loss every `report_every` steps and at the end.

    `on_progress(step, loss)` is called at those steps and also whenever `report_every_s` seconds (of `clock`)
    passed since the last call, so a slow fit still shows progress; the returned history does not depend on timing."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(network.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    teacher = teacher.to(device)
    network.train()
    history = []
    last_report = clock()
    for step in range(steps):
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
            history.append(loss.item())
        if on_progress is not None and (by_steps or (report_every_s is not None and clock() - last_report >= report_every_s)):
            last_report = clock()
            on_progress(step + 1, loss.item())
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


def fitted_teacher_network(
    teacher: GaussianMixture, spec: RunSpec, run_dir: Path, device: torch.device, on_event: EventHandler
) -> tuple[nn.Module, dict[str, Any]]:
    """The MLP fitted to an analytic teacher, from the run directory's cache when it matches."""
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
    )
    save_generator(cache, network.state_dict(), {"fit_key": key, "architecture": architecture, "teacher": spec.teacher})
    return network.eval(), architecture
