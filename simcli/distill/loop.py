"""The distillation loop: online update, generator update, EMA, report, snapshot (paper Algorithm 2).

Iteration k draws every random number from generators seeded by (seed, k), so a run resumed from a
state file repeats, number for number, what the uninterrupted run would have done.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.config.spec import RunSpec
from simcli.distill.checkpoint import (
    kimg_tag,
    list_generators,
    load_latest_state,
    prune_states,
    remove_stale_temp_files,
    save_generator,
    save_state,
)
from simcli.distill.ema import ema_beta, update_ema
from simcli.distill.events import (
    DownloadProgress,
    EventHandler,
    NonFiniteStep,
    RunStarted,
    SnapshotSaved,
    Status,
    ignore_event,
)
from simcli.distill.setup import Networks, build_networks, prepare_run_dir, resolve_device
from simcli.distill.steps import BatchPlan, generator_update, make_generator_loss, online_update
from simcli.errors import RunFailed, UsageError
from simcli.teachers.registry import load_teacher

STATE_FORMAT = "simcli-state/1"
METRICS_FILE = "metrics.jsonl"


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, iteration, stream), independent across iterations."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class Progress:
    """Counters saved in every state file."""

    step: int = 0
    nonfinite_consecutive: int = 0
    nonfinite_total: int = 0
    elapsed_s: float = 0.0
    window: dict[str, float] = field(default_factory=lambda: {"loss_online": 0.0, "loss_generator": 0.0, "n": 0})


def _optimizer(params, opt_spec) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=opt_spec.lr, betas=(opt_spec.beta1, opt_spec.beta2), eps=opt_spec.eps)


def _memory_record(device: torch.device) -> dict[str, float]:
    rec = {"cpu_mem_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        rec["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return rec


def _crossed(prev_nimg: int, nimg: int, every_kimg: float) -> bool:
    interval = every_kimg * 1000
    return math.floor(nimg / interval) > math.floor(prev_nimg / interval)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records written after the state a run resumes from, so the log has no duplicates."""
    if not path.is_file():
        return

    def keep(line: str) -> bool:  # a torn last line (killed mid-write) is dropped, not a crash on resume
        try:
            return json.loads(line).get("step", 0) <= last_step
        except (json.JSONDecodeError, AttributeError):
            return False

    kept = [line for line in path.read_text().splitlines() if line.strip() and keep(line)]
    path.write_text("".join(line + "\n" for line in kept))


def _state_dict(spec: RunSpec, nets: Networks, opts: dict[str, torch.optim.Optimizer], progress: Progress) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "spec": spec.model_dump_json(),
        "architecture": json.dumps(nets.architecture),
        "generator": nets.generator.state_dict(),
        "online": nets.online.state_dict(),
        "ema": nets.ema.state_dict(),
        "opt_generator": opts["generator"].state_dict(),
        "opt_online": opts["online"].state_dict(),
        "progress": {
            "step": progress.step,
            "nonfinite_consecutive": progress.nonfinite_consecutive,
            "nonfinite_total": progress.nonfinite_total,
            "elapsed_s": progress.elapsed_s,
            "window": dict(progress.window),
        },
    }


def _restore(state: dict[str, Any], nets: Networks, opts: dict[str, torch.optim.Optimizer]) -> Progress:
    if state.get("format") != STATE_FORMAT:
        raise UsageError(f"state file has unknown format {state.get('format')!r}")
    nets.generator.load_state_dict(state["generator"])
    nets.online.load_state_dict(state["online"])
    nets.ema.load_state_dict(state["ema"])
    opts["generator"].load_state_dict(state["opt_generator"])
    opts["online"].load_state_dict(state["opt_online"])
    p = state["progress"]
    return Progress(p["step"], p["nonfinite_consecutive"], p["nonfinite_total"], p["elapsed_s"], dict(p["window"]))


def _snapshot(run_dir: Path, spec: RunSpec, nets: Networks, opts, progress: Progress) -> SnapshotSaved:
    images_seen = progress.step * spec.training.batch_size
    gen_path = run_dir / f"generator-{kimg_tag(images_seen)}.safetensors"
    meta = {
        "spec": spec.model_dump(mode="json"),
        "architecture": nets.architecture,
        "sigma_init": spec.generator.sigma_init,
        "step": progress.step,
        "images_seen": images_seen,
    }
    save_generator(gen_path, nets.ema.state_dict(), meta)
    state_path = save_state(run_dir, images_seen, _state_dict(spec, nets, opts, progress))
    prune_states(run_dir, spec.logging.keep_states)
    return SnapshotSaved(gen_path, state_path, images_seen)


def run_distillation(spec: RunSpec, run_dir: Path, on_event: EventHandler = ignore_event) -> dict[str, Any]:
    """Distill, or resume distilling, into run_dir; returns a JSON-ready summary of the run."""
    run_dir = Path(run_dir)
    device = resolve_device(spec.device)
    # The teacher first: an unknown name, a bad file or a failed download leaves the run directory untouched.
    teacher = load_teacher(spec.teacher, on_download=lambda done, total: on_event(DownloadProgress(done, total)))
    prepare_run_dir(run_dir, spec)
    remove_stale_temp_files(run_dir)
    nets = build_networks(spec, teacher, run_dir, device, on_event)
    opts = {
        "generator": _optimizer(nets.generator.parameters(), spec.generator.optimizer),
        "online": _optimizer(nets.online.parameters(), spec.online.optimizer),
    }
    progress, resumed_from, warnings = Progress(), None, []
    loaded = load_latest_state(run_dir, map_location=device)
    if loaded is not None:
        state, resumed_from, warnings = loaded
        progress = _restore(state, nets, opts)
    metrics_path = run_dir / METRICS_FILE
    _truncate_metrics(metrics_path, progress.step)

    tr = spec.training
    total_steps = tr.total_steps
    sample_shape = tuple(nets.teacher.sample_shape)
    loss_fn = make_generator_loss(spec.loss, spec.generator.weighting, int(np.prod(sample_shape)))
    grad_through = spec.loss.method != "di"
    plan = BatchPlan(spec.generator.sigma_init, tr.batch_size, tr.rounds, sample_shape, nets.teacher.label_dim, device)
    on_event(
        RunStarted(
            run_dir, str(device), progress.step, total_steps, tr.batch_size, resumed_from,
            sum(p.numel() for p in nets.generator.parameters()), warnings,
        )
    )

    window_start = time.perf_counter()
    window_start_step = progress.step
    last_time = time.perf_counter()
    while progress.step < total_steps:
        step = progress.step
        rng = torch.Generator(device=device).manual_seed(step_seed(spec.seed, step))
        torch.manual_seed(step_seed(spec.seed, step, stream=1))  # dropout masks
        loss_online, ok = 0.0, True
        for _ in range(spec.online.updates_per_generator_update):
            loss_online, ok_o = online_update(nets.generator, nets.online, opts["online"], plan, spec.online.noise, rng)
            ok = ok and ok_o
        loss_gen, ok_g = generator_update(
            nets.generator, nets.online, nets.teacher, opts["generator"], loss_fn, plan, spec.generator.noise, rng,
            grad_through_networks=grad_through,
        )
        ok = ok and ok_g
        prev_nimg = step * tr.batch_size
        progress.step = step + 1
        nimg = progress.step * tr.batch_size
        update_ema(nets.ema, nets.generator, ema_beta(tr.batch_size, nimg, spec.ema.halflife_kimg, spec.ema.rampup_ratio))

        if ok:
            progress.nonfinite_consecutive = 0
            progress.window["loss_online"] += loss_online
            progress.window["loss_generator"] += loss_gen
            progress.window["n"] += 1
        else:
            progress.nonfinite_consecutive += 1
            progress.nonfinite_total += 1
            on_event(NonFiniteStep(step, "online" if not ok_g else "generator", progress.nonfinite_consecutive))
            if progress.nonfinite_consecutive >= tr.max_nonfinite_steps:
                raise RunFailed(
                    f"{progress.nonfinite_consecutive} iterations in a row had non-finite losses or gradients "
                    f"(at iteration {step}); the last good checkpoint in {run_dir} is kept",
                    hint="lower the learning rates or check the teacher",
                )
        now = time.perf_counter()
        progress.elapsed_s += now - last_time
        last_time = now

        done = progress.step >= total_steps
        if done or _crossed(prev_nimg, nimg, spec.logging.status_every_kimg):
            n = max(progress.window["n"], 1)
            kimg_in_window = (progress.step - window_start_step) * tr.batch_size / 1000
            record = {
                "kind": "status",
                "step": progress.step,
                "images_seen": nimg,
                "kimg": nimg / 1000,
                "loss_online": progress.window["loss_online"] / n,
                "loss_generator": progress.window["loss_generator"] / n,
                "nonfinite_total": progress.nonfinite_total,
                "sec_per_kimg": (now - window_start) / kimg_in_window if kimg_in_window else None,
                "elapsed_s": round(progress.elapsed_s, 3),
                **_memory_record(device),
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            on_event(Status(record))
            progress.window = {"loss_online": 0.0, "loss_generator": 0.0, "n": 0}
            window_start, window_start_step = time.perf_counter(), progress.step
        if done or _crossed(prev_nimg, nimg, spec.logging.snapshot_every_kimg):
            on_event(_snapshot(run_dir, spec, nets, opts, progress))
        last_time = time.perf_counter()

    generators = list_generators(run_dir)
    return {
        "run_dir": str(run_dir),
        "teacher": spec.teacher,
        "method": spec.loss.method,
        "distance": spec.loss.distance if spec.loss.method == "sim" else None,
        "steps": progress.step,
        "images_seen": progress.step * tr.batch_size,
        "nonfinite_total": progress.nonfinite_total,
        "wall_time_s": round(progress.elapsed_s, 3),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "generator": str(generators[-1]) if generators else None,
    }
