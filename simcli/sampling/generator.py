"""Load a generator snapshot back into a network (all that sample and eval need), and say which one it is."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from simcli.config.spec import MAX_GENERATOR_STEPS
from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.registry import NATIVE_DTYPE_HINT, network_with_weights
from simcli.rundir.layout import BEST_GENERATOR_FILE
from simcli.rundir.network_file import short_repr
from simcli.rundir.snapshots import read_generator


def load_generator(path: str | Path, device: torch.device | str = "cpu") -> tuple[Denoiser, dict[str, Any], Path]:
    """(network in eval mode, snapshot metadata, resolved file) from a run directory or a snapshot file.

    Refused with a one-line UsageError naming the file: metadata of the wrong type (sigma_init not a finite positive
    number, among others: simcli.rundir.network_file.check_metadata), weights holding NaN or Inf, an architecture
    record that is hostile or disagrees with the weights (simcli.nets.registry.network_with_weights). The SIM
    authors' release (`sim-dit-600m`, or its .pt checkpoint) loads through simcli.sampling.sim_release."""
    from simcli.sampling.sim_release import is_sim_release, load_sim_release

    if is_sim_release(path):
        return load_sim_release(path, device)
    tensors, meta, file = read_generator(path)
    if "architecture" not in meta or "sigma_init" not in meta:
        raise UsageError(f"{file} lacks the architecture or sigma_init record", hint="is it a teacher-fit file?")
    if "lora" in meta:
        net = lora_generator(meta, tensors, file)
    else:
        net = network_with_weights(meta["architecture"], tensors, str(file), dtypes=True, dtype_hint=NATIVE_DTYPE_HINT)
    return net.to(device).eval().requires_grad_(False), meta, file


def lora_generator(meta: dict[str, Any], tensors: dict[str, torch.Tensor], file: Path) -> Denoiser:
    """A generator snapshot that holds LoRA adapters (generator.lora_snapshots adapters): the teacher its run
    distilled (loaded, or downloaded, by the name its spec records) with the adapters added. Refused in one line when
    the teacher's network is not the one the adapters were trained on, or the adapters do not fit it."""
    from simcli.nets.lora import add_lora, load_lora_state_dict, lora_settings
    from simcli.nets.registry import with_dropout
    from simcli.teachers.registry import at_resolution, load_teacher

    rank, alpha = lora_settings(meta)
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    name = spec.get("teacher")
    if not isinstance(name, str):
        raise UsageError(f"{file} holds LoRA adapters but records no teacher to add them to",
                         hint="is it a simcli generator snapshot?")
    teacher = at_resolution(load_teacher(name), (spec.get("text") or {}).get("resolution"))
    dropout = (spec.get("training") or {}).get("dropout")
    expected = teacher.architecture if dropout is None or teacher.architecture is None else with_dropout(teacher.architecture, dropout)
    if expected != meta["architecture"]:
        raise UsageError(f"{file} holds LoRA adapters for another network than teacher '{name}' has now",
                         hint="give the teacher the run distilled, or sample a snapshot with merged weights "
                              "(--set generator.lora_snapshots=merged)")
    net = teacher.denoiser
    if net.conditioning.guidance != "none":  # the generator runs on the condition alone, as in training
        net.set_guidance_scale(1.0)
    try:
        add_lora(net, rank, alpha)
        load_lora_state_dict(net, tensors)
    except ValueError as exc:
        raise UsageError(f"{file}: {exc}", hint="is it a snapshot of this teacher's run?") from None
    return net


def generator_choice(given: str | Path, file: Path) -> dict[str, Any]:
    """Which file a --generator argument chose: `generator` (the file), `generator_chosen` ('the file given', or 'the
    newest snapshot' of a run directory) and `best_generator` (generator-best.safetensors beside a chosen newest
    snapshot, which scores differ from; None when there is none)."""
    newest = Path(given).is_dir()
    best = Path(given) / BEST_GENERATOR_FILE if newest else None
    return {"generator": str(file), "generator_chosen": "the newest snapshot" if newest else "the file given",
            "best_generator": str(best) if best is not None and best.is_file() else None}


def snapshot_sigmas(meta: dict[str, Any], file: Path) -> tuple[float, ...]:
    """The noise levels a generator snapshot samples at: its `generator_sigmas` record (a few-step generator,
    simcli.nets.few_step), or its sigma_init alone. A record that is not a falling list of positive numbers starting at
    sigma_init, or longer than generator.steps allows, is refused in one line naming the file."""
    levels = meta.get("generator_sigmas")
    if levels is None:
        return (float(meta["sigma_init"]),)
    ok = (isinstance(levels, list) and 1 <= len(levels) <= MAX_GENERATOR_STEPS
          and all(type(v) in (int, float) and math.isfinite(v) for v in levels)
          and levels[0] == meta["sigma_init"] and all(0 < b < a for a, b in zip(levels, levels[1:], strict=False)))
    if not ok:
        raise UsageError(f"{file}: metadata generator_sigmas must be falling positive noise levels from sigma_init, at "
                         f"most {MAX_GENERATOR_STEPS}, got {short_repr(levels)}",
                         hint="the file is damaged or was edited by hand")
    return tuple(float(v) for v in levels)
