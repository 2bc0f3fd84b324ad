"""Resume bookkeeping: make the networks, the optimisers, the counters and the run directory agree with the state
the run goes on from (simcli.distill.setup.choose_state picks it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simcli.config.spec import RunSpec
from simcli.distill.outputs import generator_meta, generator_tensors
from simcli.distill.recovery import generator_damage, repair_generator
from simcli.distill.setup import LoadedState, Networks
from simcli.distill.state import Progress, restore
from simcli.rundir.metrics import append_record, lag_warning, truncate_after
from simcli.world import World


def apply_optimizer_settings(spec: RunSpec, opts: dict[str, torch.optim.Optimizer]) -> dict[str, dict[str, float]]:
    """Give restored optimisers the spec's lr, betas and eps (Adam's moments are kept); returns what changed, as
    {"generator.optimizer.lr": {"old": ..., "new": ...}, ...}."""
    changes: dict[str, dict[str, float]] = {}
    for name in ("generator", "online"):
        opt = getattr(spec, name).optimizer
        wanted = {"lr": opt.lr, "beta1": opt.beta1, "beta2": opt.beta2, "eps": opt.eps}
        for group in opts[name].param_groups:
            had = {"lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"]}
            for key, value in wanted.items():
                if float(had[key]) != float(value):
                    changes.setdefault(f"{name}.optimizer.{key}", {"old": float(had[key]), "new": float(value)})
            group.update(lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
    return changes


def cpu_threads_warning(progress: Progress, device: torch.device) -> str | None:
    """Record in `progress` the CPU threads this process computes with; a warning when the run computed with
    another count so far (CPU reductions split by it, so the numbers leave those of an uninterrupted run)."""
    if device.type != "cpu":
        return None
    before, progress.cpu_threads = progress.cpu_threads, torch.get_num_threads()
    if before is None or before == progress.cpu_threads:
        return None
    return (f"this run computed with {before} CPU threads until iteration {progress.step}, now with "
            f"{progress.cpu_threads}: its numbers from here on differ from those of an uninterrupted run "
            f"(pass --threads {before} to keep them)")


def resume(
    run_dir: Path, spec: RunSpec, loaded: LoadedState | None, nets: Networks, opts: dict[str, torch.optim.Optimizer],
    world: World,
) -> tuple[Progress, list[str]]:
    """The run's counters (fresh ones for a new run) and warnings for the user:

    - the networks, optimisers and counters are restored from the state;
    - rank 0 rewrites that state's generator snapshot when it is missing or unreadable, drops the records of
      metrics.jsonl written after it (by the process that was stopped; after iteration 0 for a new run), and warns
      when metrics.jsonl lacks status records from before it (the state's window counts the iterations since its
      last status record, so the iteration of that record is known exactly);
    - the spec's optimiser settings replace the restored ones; a change is logged as a 'spec_change' record;
    - on the CPU, a resume with another thread count than the run's warns (cpu_threads_warning).
    """
    progress = restore(loaded[0], nets, opts) if loaded is not None else Progress()
    images_seen = progress.step * spec.training.batch_size
    warnings: list[str] = []
    # Rank 0 looks at the snapshot; only a missing or unreadable one costs the EMA's tensors (gathered when sharded,
    # by every process together).
    damage = world.on_main(lambda: generator_damage(run_dir, images_seen)) if loaded is not None else None
    if damage is not None:
        ema_state = generator_tensors(nets.ema, spec)
        if world.is_main:
            meta = generator_meta(spec, nets.architecture, progress.step, images_seen)
            warnings.append(repair_generator(run_dir, images_seen, ema_state, meta, loaded[1], damage))
    if world.is_main:
        dropped = truncate_after(run_dir, progress.step).describe(progress.step)
        warnings += [dropped] if dropped else []
    if world.is_main and loaded is not None:
        last_status = progress.step - int(progress.window["n"]) - int(progress.window["nonfinite"])
        lag = lag_warning(run_dir, progress.step, last_status)
        warnings += [lag] if lag else []
    threads = cpu_threads_warning(progress, next(nets.generator.parameters()).device)
    warnings += [threads] if threads else []
    if loaded is None:
        return progress, warnings
    changes = apply_optimizer_settings(spec, opts)
    if changes:
        if world.is_main:
            record: dict[str, Any] = {"kind": "spec_change", "step": progress.step, "images_seen": images_seen,
                                      "kimg": images_seen / 1000, "changes": changes}
            append_record(run_dir, record)
        shown = ", ".join(f"{k} {v['old']:g} -> {v['new']:g}" for k, v in changes.items())
        warnings.append(f"resuming with changed optimiser settings: {shown}")
    return progress, warnings
