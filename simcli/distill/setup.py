"""Set up a run: the run directory, the device, the teacher and the three networks copied from it."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simcli.config.resolve import spec_differences
from simcli.config.spec import RESUMABLE_CHANGES, RunSpec
from simcli.distill.checkpoint import load_generator_file, save_generator, write_json_atomic
from simcli.distill.events import EventHandler, TeacherFitProgress
from simcli.errors import UsageError
from simcli.nets.registry import build_network, mlp_architecture
from simcli.teachers.base import Denoiser
from simcli.teachers.fit import fit_mlp_denoiser
from simcli.teachers.gmm import GaussianMixture

TEACHER_FIT_FILE = "teacher-fit.safetensors"


@dataclass
class Networks:
    """The frozen teacher, and the generator, online model and generator EMA initialised from it."""

    teacher: Denoiser
    generator: nn.Module
    online: nn.Module
    ema: nn.Module
    architecture: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """'auto' is cuda when available, else cpu; anything else must name an available device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'", hint="use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for, but CUDA is not available", hint="use --device cpu")
    return device


def _summarise_keys(keys: list[str], limit: int = 6) -> str:
    """Differing spec keys for a message: the teacher and loss first, several keys of one section as 'section.*'."""
    ordered = sorted(keys, key=lambda k: (k != "teacher", not k.startswith("loss."), k))
    sections: dict[str, list[str]] = {}
    for key in ordered:
        sections.setdefault(".".join(key.split(".")[:2]), []).append(key)
    shown = [leaves[0] if len(leaves) == 1 else f"{section}.*" for section, leaves in sections.items()]
    return ", ".join(shown[:limit]) + (" ..." if len(shown) > limit else "")


def prepare_run_dir(run_dir: Path, spec: RunSpec) -> bool:
    """Create or check the run directory and write config.json; returns True when a run is already there.

    A new run needs an empty directory, or one holding only a teacher-fit cache copied from another run.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".simcli-write-probe"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to run directory {run_dir}: {exc.strerror or exc}", hint="choose another --out") from None
    config_path = run_dir / "config.json"
    new = spec.model_dump(mode="json")
    existing = config_path.is_file()
    if existing:
        try:
            old = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{config_path} is corrupt", hint="choose a new --out") from None
        changed = spec_differences(old, new, RESUMABLE_CHANGES)
        if changed:
            shown = _summarise_keys(changed)
            raise UsageError(
                f"{run_dir} holds a run with a different spec ({shown}); refusing to resume it",
                hint="use a new --out, or repeat the original settings to resume",
            )
    elif any(not p.name.startswith(".") and p.name != TEACHER_FIT_FILE for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} is not empty and holds no simcli run", hint="choose a new or empty --out")
    write_json_atomic(config_path, new)
    return existing


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


def build_networks(spec: RunSpec, teacher: Denoiser, run_dir: Path, device: torch.device, on_event: EventHandler) -> Networks:
    """Teacher plus generator, online model and EMA, all three initialised from the teacher's network.

    An EDM teacher's network is copied as it is (dropout as recorded: active while the generator or the
    online model is being updated, as in SiD); an analytic teacher gets an MLP fitted to it first.
    """
    if isinstance(teacher, GaussianMixture):
        teacher = teacher.to(device)
        base, architecture = fitted_teacher_network(teacher, spec, run_dir, device, on_event)
    else:
        architecture = teacher.architecture
        teacher = teacher.to(device)
        base = copy.deepcopy(teacher)
    teacher.eval().requires_grad_(False)
    generator = copy.deepcopy(base).requires_grad_(True)
    online = copy.deepcopy(base).requires_grad_(False)
    ema = copy.deepcopy(base).requires_grad_(False)
    if spec.training.activation_checkpointing:
        for net in (teacher, generator, online):
            if not hasattr(net, "set_activation_checkpointing"):
                raise UsageError("training.activation_checkpointing needs an EDM network", hint="unset it for mixture teachers")
            net.set_activation_checkpointing(True)
    return Networks(teacher, generator, online, ema, architecture)
