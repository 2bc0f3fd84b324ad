"""Set up a run: the run directory, the device, the teacher and the three networks copied from it."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simcli.config.resolve import spec_differences
from simcli.config.spec import RESUMABLE_CHANGES, RunSpec
from simcli.distill.events import EventHandler
from simcli.distill.teacher_fit import TEACHER_FIT_FILE, fitted_teacher_network
from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.rundir.atomic import write_json_atomic
from simcli.teachers.registry import Teacher


@dataclass
class Networks:
    """The frozen teacher, and the generator, online model and generator EMA initialised from it."""

    teacher: Denoiser
    generator: nn.Module
    online: nn.Module
    ema: nn.Module
    architecture: dict[str, Any]


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


def build_networks(spec: RunSpec, loaded: Teacher, run_dir: Path, device: torch.device, on_event: EventHandler) -> Networks:
    """Teacher plus generator, online model and EMA, all three initialised from the teacher's network.

    A teacher's network is copied as it is (dropout as recorded: active while the generator or the online
    model is being updated, as in SiD); a teacher without a network (an analytic mixture) gets an MLP fitted
    to it first.
    """
    teacher = loaded.denoiser.to(device)
    if loaded.architecture is None:
        base, architecture = fitted_teacher_network(teacher, spec, run_dir, device, on_event)
    else:
        base, architecture = copy.deepcopy(teacher), loaded.architecture
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
