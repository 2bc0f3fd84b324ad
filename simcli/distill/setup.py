"""Set up a run: check (or create) the run directory and choose the state it resumes from, and build the three
networks copied from the teacher."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simcli.config.resolve import spec_differences
from simcli.config.spec import RESUMABLE_CHANGES, RunSpec
from simcli.distill.dmd2 import attach_head
from simcli.distill.events import EventHandler
from simcli.distill.memory_estimate import check_memory
from simcli.distill.stop import StopRequest
from simcli.distill.teacher_fit import fitted_teacher_network
from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.registry import with_dropout
from simcli.rundir.atomic import remove_stale_temp_files, write_json_atomic
from simcli.rundir.layout import (
    BEST_GENERATOR_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    WRITE_PROBE_FILE,
    is_foreign,
    list_generators,
    list_grids,
    list_states,
)
from simcli.rundir.snapshots import load_latest_state, load_state_file, move_aside
from simcli.teachers.guidance import teacher_network
from simcli.teachers.registry import Teacher
from simcli.world import World

LORA_PHASE = 7
"""The stream phase the LoRA adapters' initial values are drawn from (simcli.distill.streams), at iteration 0."""

LoadedState = tuple[dict[str, Any], Path, list[str]]
"""(state, its path, warnings about unreadable newer states), as simcli.rundir.snapshots.load_latest_state gives it."""


@dataclass
class Networks:
    """The frozen teacher, and the generator, online model and generator EMA initialised from it."""

    teacher: Denoiser
    generator: Denoiser
    online: Denoiser
    ema: Denoiser
    architecture: dict[str, Any]


def _summarise_keys(keys: list[str], limit: int = 6) -> str:
    """Differing spec keys for a message: the teacher and loss first, several keys of one section as 'section.*'."""
    ordered = sorted(keys, key=lambda k: (k != "teacher", not k.startswith("loss."), k))
    sections: dict[str, list[str]] = {}
    for key in ordered:
        sections.setdefault(".".join(key.split(".")[:2]), []).append(key)
    shown = [leaves[0] if len(leaves) == 1 else f"{section}.*" for section, leaves in sections.items()]
    return ", ".join(shown[:limit]) + (" ..." if len(shown) > limit else "")


def _spec_of_state(state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        spec = json.loads(state["spec"])
    except (KeyError, TypeError, ValueError):
        return None
    return spec if isinstance(spec, dict) else None


def _old_run_outputs(run_dir: Path) -> list[Path]:
    """What a restart moves aside: states, generator snapshots (generator-best too), metrics.jsonl, EMA grids."""
    outputs = [*list_states(run_dir), *list_generators(run_dir)]
    outputs += [p for p in (run_dir / BEST_GENERATOR_FILE, run_dir / METRICS_FILE) if p.is_file()]
    return outputs + list_grids(run_dir)


def prepare_run_dir(
    run_dir: Path, spec: RunSpec, restart: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[LoadedState | None, list[str]]:
    """Create or check the run directory, load its newest readable state, and write config.json; returns the state
    (None for a new run) and warnings for the user.

    A new run needs an empty directory, or one holding only a teacher-fit cache copied from another run. A run
    that is there resumes when the spec differs at most in the resumable settings; a missing config.json is
    recovered from the spec embedded in the newest readable state. State files none of which is readable are
    refused (the run would silently start again from iteration 0); with `restart` they are moved aside, with
    the old run's other outputs, into a `discarded-<time>/` folder, and the run starts from 0.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / WRITE_PROBE_FILE
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to run directory {run_dir}: {exc.strerror or exc}", hint="choose another --out") from None
    config_path = run_dir / CONFIG_FILE
    new = spec.model_dump(mode="json")
    states = list_states(run_dir)
    loaded = load_latest_state(run_dir, map_location=map_location) if states else None
    warnings = list(loaded[2]) if loaded is not None else []
    old = None
    if config_path.is_file():
        try:
            old = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise UsageError(f"{config_path} is corrupt", hint="choose a new --out") from None
    elif loaded is not None:
        old = _spec_of_state(loaded[0])
        if old is None:
            raise UsageError(f"{config_path} is missing and {loaded[1].name} records no spec to recover it from",
                             hint="put config.json back, or choose a new --out")
        warnings.append(f"config.json was missing; recovered the run's spec from {loaded[1].name}")
    if old is not None:
        changed = spec_differences(old, new, RESUMABLE_CHANGES)
        if changed:
            shown = _summarise_keys(changed)
            raise UsageError(
                f"{run_dir} holds a run with a different spec ({shown}); refusing to resume it",
                hint="use a new --out, or repeat the original settings to resume",
            )
    elif not states and any(is_foreign(p.name) for p in run_dir.iterdir()):
        raise UsageError(f"{run_dir} is not empty and holds no simcli run", hint="choose a new or empty --out")
    if states and loaded is None:
        names = ", ".join(p.name for p in states)
        if not restart:
            raise UsageError(
                f"{run_dir} holds state files but none is readable ({names}); refusing to start it again from iteration 0",
                hint="pass --restart to move them aside into discarded-<time>/ and start from 0, or put back a good copy",
            )
        outputs = _old_run_outputs(run_dir)
        folder = move_aside(run_dir, outputs)
        warnings.append(f"no state file was readable ({names}): moved them and the old run's other outputs "
                        f"({len(outputs)} files) into {folder.name}/; starting again from iteration 0")
    elif restart and loaded is not None:
        raise UsageError(f"--restart given, but {loaded[1].name} in {run_dir} is readable",
                         hint="drop --restart to resume from it, or choose a new --out")
    write_json_atomic(config_path, new)
    return loaded, warnings


def choose_state(run_dir: Path, spec: RunSpec, restart: bool, world: World, device: torch.device) -> tuple[LoadedState | None, list[str]]:
    """The state the run goes on from (None for a new run) and warnings: rank 0 checks the run directory, clears
    stale temporary files and writes config.json (prepare_run_dir); the other processes then read the state it chose."""
    found: dict[str, LoadedState | None] = {}

    def prepare() -> tuple[Path | None, list[str]]:
        loaded, warnings = prepare_run_dir(run_dir, spec, restart=restart, map_location=device)
        remove_stale_temp_files(run_dir)
        found["loaded"] = loaded
        return (loaded[1] if loaded else None), warnings

    path, warnings = world.on_main(prepare)
    if world.is_main or path is None:
        return found.get("loaded"), warnings
    return (load_state_file(path, device), path, []), warnings


def check_network_settings(spec: RunSpec, teacher: Teacher) -> None:
    """Refuse settings the teacher's network cannot take, and sizes the machine's memory cannot hold (a lower-bound
    estimate: simcli.distill.memory_estimate), before the run directory is touched."""
    fitted = teacher.architecture is None  # an analytic teacher: its copies are a fitted MLP
    what = "an analytic teacher's fitted MLP" if fitted else f"teacher '{teacher.display_name}'"
    if spec.training.dropout is not None and (fitted or not teacher.denoiser.supports_dropout):
        raise UsageError(f"training.dropout applies to copies of an EDM network, not {what}",
                         hint="unset it" + (" (the MLP's is network.dropout)" if fitted else ""))
    if spec.training.activation_checkpointing and (fitted or not teacher.denoiser.supports_activation_checkpointing):
        raise UsageError(f"training.activation_checkpointing needs an EDM or diffusers network, not {what}",
                         hint="unset it")
    if spec.loss.method == "dmd2" and spec.data.source is not None and spec.online.lora_rank is not None:
        raise UsageError("DMD2's classifier head trains whole, beside an online model with LoRA adapters: not supported",
                         hint="drop --lora-rank (online.lora_rank), or --data for DMD2 without its GAN term")
    if fitted and (spec.generator.lora_rank is not None or spec.online.lora_rank is not None):
        raise UsageError(f"LoRA adapts a teacher's network, and {what} is small enough to train whole",
                         hint="drop --lora-rank (generator.lora_rank, online.lora_rank)")
    check_uncertainty_settings(spec, teacher)
    conditioning = teacher.denoiser.conditioning
    if conditioning.takes_text and conditioning.guidance == "none" and spec.text.guidance_scale != 1.0:
        raise UsageError(f"teacher '{teacher.display_name}' takes no guidance (a timestep-distilled FLUX), but "
                         f"text.guidance_scale is {spec.text.guidance_scale:g}",
                         hint="--set text.guidance_scale=1 (the flux-schnell preset's)")
    check_memory(spec, teacher)


def check_uncertainty_settings(spec: RunSpec, teacher: Teacher) -> None:
    """Refuse online.weighting 'uncertainty' and generator.uncertainty_scaling for networks without EDM2's learned
    uncertainty u(sigma) (Denoiser.supports_uncertainty; a guided teacher's own network counts), and the scaling for
    DMD2 (its GAN term is computed in passes of its own, at other noise levels, without u; no DMD2 run scales by it)."""
    asked = [name for name, on in (("online.weighting 'uncertainty'", spec.online.weighting == "uncertainty"),
                                   ("generator.uncertainty_scaling", spec.generator.uncertainty_scaling)) if on]
    if not asked:
        return
    if teacher.architecture is None or not teacher_network(teacher.denoiser).supports_uncertainty:
        raise UsageError(f"{asked[0]} needs a network with EDM2's learned uncertainty u(sigma), not teacher "
                         f"'{teacher.display_name}'", hint="use an EDM2 teacher (edm2-img512-xs, ...), or unset it")
    if spec.generator.uncertainty_scaling and spec.loss.method == "dmd2":
        raise UsageError("generator.uncertainty_scaling is SiDA's scaling of the SiD, SIM or Diff-Instruct loss, not "
                         "DMD2's", hint="unset it (online.weighting 'uncertainty' is fine with dmd2)")


def build_networks(spec: RunSpec, loaded: Teacher, run_dir: Path, device: torch.device, on_event: EventHandler,
                   stop: StopRequest | None = None, shard: Callable[[Denoiser, str], None] | None = None) -> Networks:
    """Teacher plus generator, online model and EMA, all three initialised from the teacher's network.

    A teacher's network is copied as it is (dropout as recorded, or training.dropout when set: active while the
    generator or the online model is being updated, as in SiD); a teacher without a network (an analytic mixture)
    gets an MLP fitted to it first; `stop` is served between the fit's steps (its progress is saved, then
    simcli.errors.Stopped raised). `shard` (simcli.distill.sharding.network_sharder): shards each copy as soon as it is
    made, and the teacher last, so that no more than two whole networks are alive at once.
    """
    teacher = loaded.denoiser.to(device)
    fitted = loaded.architecture is None
    if fitted:
        source, architecture = fitted_teacher_network(teacher, spec, run_dir, device, on_event, stop)
    else:  # a guided teacher's own network (simcli.distill.guidance), never its guide
        source, architecture = teacher_network(teacher), loaded.architecture
        if spec.training.dropout is not None:  # the teacher too, for shared-mask score dropout (it runs in train mode)
            teacher.set_dropout(spec.training.dropout)
            architecture = with_dropout(architecture, spec.training.dropout)
    teacher.eval().requires_grad_(False)
    if spec.generator.lora_rank is not None or spec.online.lora_rank is not None:
        generator, online, ema = _lora_copies(source, spec, device)
    elif shard is not None:  # each copy sharded before the next is made (FSDP modules cannot be deep-copied)
        generator = _sharded(copy.deepcopy(source), shard, "trained")
        online = _sharded(_with_head(copy.deepcopy(source), spec), shard, "trained")
        ema = _sharded(copy.deepcopy(source), shard, "ema")
        generator.requires_grad_(True)
        online.requires_grad_(False)
        ema.requires_grad_(False)
    else:
        base = source if fitted else copy.deepcopy(source)  # a fitted MLP is the base itself
        online = _with_head(copy.deepcopy(base), spec).requires_grad_(False)
        ema = copy.deepcopy(base).requires_grad_(False)
        generator = base.requires_grad_(True)  # the copy itself: no fourth copy alive during the set-up
    if shard is not None:
        shard(teacher, "teacher")
    if teacher.conditioning.guidance != "none":  # the teacher guided, the copies on the condition alone
        teacher.set_guidance_scale(spec.text.guidance_scale)
        for net in (generator, online, ema):
            net.set_guidance_scale(1.0)
    if spec.training.activation_checkpointing:  # check_network_settings refused networks without it
        for net in (teacher, generator, online):
            net.set_activation_checkpointing(True)
    return Networks(teacher, generator, online, ema, architecture)


def _with_head(online: Denoiser, spec: RunSpec) -> Denoiser:
    """The online model, given DMD2's classifier head when the run has one (--method dmd2 with --data)."""
    if spec.loss.method == "dmd2" and spec.data.source is not None:
        attach_head(online, spec.seed)
    return online


def _sharded(net: Denoiser, shard: Callable[[Denoiser, str], None], role: str) -> Denoiser:
    """net, sharded in place (one copy at a time: FSDP modules cannot be deep-copied)."""
    shard(net, role)
    return net


def _lora_copies(source: Denoiser, spec: RunSpec, device: torch.device) -> tuple[Denoiser, ...]:
    """(generator, online model, EMA) when generator.lora_rank or online.lora_rank is set: a network with LoRA is a
    copy of the source's module tree (the teacher's network, or the MLP fitted to an analytic teacher) sharing its
    frozen tensors (simcli.nets.lora.shared_copy) with its own adapters (the EMA: of the generator's), seeded from the
    run's seed so that every process builds the same ones; a network without LoRA is a whole copy, as without LoRA."""
    from simcli.distill.streams import stream_seed
    from simcli.nets.lora import add_lora, set_trainable, shared_copy

    def copy_of(index: int, rank: int | None, alpha: float | None) -> Denoiser:
        if rank is None:
            return copy.deepcopy(source).requires_grad_(False)
        seeded = torch.Generator(device=device).manual_seed(stream_seed(spec.seed, 0, LORA_PHASE, index))
        return set_trainable(add_lora(shared_copy(source), rank, alpha, seeded), False)

    generator = copy_of(0, spec.generator.lora_rank, spec.generator.lora_alpha)
    online = copy_of(1, spec.online.lora_rank, spec.online.lora_alpha)
    ema = shared_copy(generator) if spec.generator.lora_rank is not None else copy.deepcopy(generator)
    return set_trainable(generator, True), online, set_trainable(ema, False)


def speed_up_networks(nets: Networks, channels_last: bool, compile: bool) -> None:
    """training.channels_last: image networks' weights (and the EMA's) in channels-last layout; training.compile:
    torch.compile the teacher, generator and online model in place (state dict keys unchanged)."""
    if channels_last:
        for net in (nets.teacher, nets.generator, nets.online, nets.ema):
            if len(net.sample_shape) == 3:
                net.to(memory_format=torch.channels_last)
    if compile:
        for net in (nets.teacher, nets.generator, nets.online):
            net.compile()
