"""The distillation loop: online update, generator update, EMA, report, evaluate, snapshot (Algorithm 2).

Iteration k draws every random number from generators seeded by (seed, k), so a run resumed from a
state file repeats, number for number, what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simcli.config.spec import RunSpec
from simcli.distill.augment import online_augmentation
from simcli.distill.ema import ema_beta, update_ema
from simcli.distill.events import (
    DownloadProgress,
    Evaluated,
    EventHandler,
    GridSaved,
    Heartbeat,
    NonFiniteStep,
    RunStarted,
    SnapshotSaved,
    Status,
    ignore_event,
)
from simcli.distill.setup import build_networks, prepare_run_dir
from simcli.distill.state import Progress, restore, state_dict
from simcli.distill.steps import BatchPlan, generator_update, make_generator_loss, online_update
from simcli.distill.stop import StopRequest
from simcli.distill.teacher_fit import TEACHER_FIT_FILE
from simcli.errors import RunFailed, Stopped, UsageError
from simcli.rundir.atomic import remove_stale_temp_files
from simcli.rundir.lock import RunDirLock
from simcli.rundir.metrics import append_record, truncate_after
from simcli.rundir.snapshots import (
    STATE_RE,
    kimg_tag,
    list_generators,
    list_states,
    load_generator_file,
    prune_generators,
    prune_states,
    save_generator,
    save_state,
)
from simcli.runtime import resolve_device
from simcli.sampling.grids import grid_images
from simcli.sampling.heun import heun_num_evals
from simcli.sampling.images import save_grid
from simcli.teachers.registry import Teacher, load_teacher

TEACHER_GRID = "teacher-grid.png"
TEACHER_GRID_STEPS = 18
GRID_SEED = 0

Evaluator = Callable[[nn.Module, int], dict[str, Any]]
"""Called with (EMA generator, images seen) at every evaluation point; returns the eval record's values and a
'score' (lower is better) that decides the best generator."""
EvaluatorFactory = Callable[[RunSpec, Teacher, torch.device], Evaluator | None]
"""Builds the evaluator for a run once its teacher is loaded (the CLI passes simcli.eval's); None: no evaluation."""


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, iteration, stream), independent across iterations."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _memory_record(device: torch.device) -> dict[str, float]:
    rec = {"cpu_mem_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device.type == "cuda":
        rec["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return rec


@dataclass(frozen=True)
class Due:
    """What an iteration's end calls for."""

    status: bool
    evaluate: bool
    snapshot: bool


def _now() -> float:
    """The loop's time source (seconds; tests replace it with a fake clock)."""
    return time.perf_counter()


@dataclass
class Durations:
    """The last measured seconds of an iteration, a snapshot (or the first grids) and an evaluation."""

    iteration: float = 0.0
    snapshot: float = 0.0
    evaluation: float = 0.0

    def needed(self, safety: float = 1.5) -> float:
        """What a time budget must still hold to run one more iteration (and an evaluation it may trigger) and then
        save: the safety factor covers jitter, a slower snapshot than the last one, and the process's exit."""
        return safety * (2 * self.iteration + self.snapshot + self.evaluation)


class Clock:
    """The run's wall time; a resumed run continues from the time saved in its state."""

    def __init__(self, elapsed_before: float = 0.0):
        self.origin = _now() - elapsed_before

    def elapsed(self) -> float:
        return _now() - self.origin


class Distillation:
    """One run directory's distillation: set up (or resumed) in __init__, advanced by run(), ended by close().

    It holds the run directory's lock (simcli.rundir.lock) from before anything there is written until close()
    (or the end of a `with` block, or of the process); a second process on the same directory is refused.
    `restart`: when the directory's state files are all unreadable, move them aside and start from 0.
    `stop`: checked once the set-up is done and after every iteration; when set, the run finishes its iteration,
    writes a state and a generator snapshot and raises simcli.errors.Stopped (the CLI sets it from signals).
    """

    def __init__(
        self, spec: RunSpec, run_dir: Path, on_event: EventHandler = ignore_event, make_evaluator: EvaluatorFactory | None = None,
        restart: bool = False, stop: StopRequest | None = None,
    ):
        self.spec, self.run_dir, self.on_event = spec, Path(run_dir), on_event
        self.stop = stop if stop is not None else StopRequest()
        self._snapshot_pending = False
        self.device = resolve_device(spec.device)
        # The teacher first: an unknown name, a bad file or a failed download leaves the run directory untouched.
        teacher = load_teacher(spec.teacher, on_download=lambda done, total: on_event(DownloadProgress(done, total)))
        # The evaluator's reference and feature weights, too, are checked before the run directory is touched.
        self.evaluator = make_evaluator(spec, teacher, self.device) if make_evaluator is not None else None
        if self.stop.requested:  # e.g. during a download: nothing in the run directory was touched
            raise Stopped(f"stopped by {self.stop.name} before the run started; nothing was written in {self.run_dir}; "
                          "run the same command again to start", self.stop.exit_code)
        self.lock = RunDirLock(self.run_dir)
        try:
            self._set_up(teacher, restart)
        except BaseException:
            self.close()
            raise

    def _set_up(self, teacher: Teacher, restart: bool) -> None:
        spec = self.spec
        prepared = prepare_run_dir(self.run_dir, spec, restart=restart, map_location=self.device)
        remove_stale_temp_files(self.run_dir)
        self.nets = build_networks(spec, teacher, self.run_dir, self.device, self.on_event)
        self.opts = {
            "generator": self._adam(self.nets.generator, spec.generator.optimizer),
            "online": self._adam(self.nets.online, spec.online.optimizer),
        }
        self.progress, self.resumed_from, warnings = Progress(), None, prepared.warnings
        if prepared.loaded is not None:
            state, self.resumed_from, _ = prepared.loaded
            self.progress = restore(state, self.nets, self.opts)
            repaired = self._repair_generator()
            warnings += [repaired] if repaired else []
        dropped = truncate_after(self.run_dir, self.progress.step).describe(self.progress.step)
        warnings += [dropped] if dropped else []
        if prepared.loaded is not None:
            warnings += self._apply_optimizer_settings()
        tr = spec.training
        sample_shape = tuple(self.nets.teacher.sample_shape)
        self.plan = BatchPlan(spec.generator.sigma_init, tr.batch_size, tr.rounds, sample_shape, self.nets.teacher.label_dim, self.device)
        self.loss_fn = make_generator_loss(spec.loss, spec.generator.weighting, int(np.prod(sample_shape)))
        self.augment, augment_warnings = online_augmentation(spec.online.augment_p, self.nets.online)
        warnings = [*warnings, *augment_warnings]
        self.started = RunStarted(
            self.run_dir, str(self.device), self.progress.step, tr.total_steps, tr.batch_size, self.resumed_from,
            sum(p.numel() for p in self.nets.generator.parameters()), warnings, self.progress.elapsed_s,
        )

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        self.lock.release()

    def __enter__(self) -> Distillation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repair_generator(self) -> str | None:
        """Rewrite the generator snapshot of the state resumed from when it is missing or unreadable; says so."""
        path = self.run_dir / f"generator-{kimg_tag(self.images_seen)}.safetensors"
        if path.is_file():
            try:
                load_generator_file(path)
                return None
            except UsageError:
                what = "unreadable"
        else:
            what = "missing"
        save_generator(path, self.nets.ema.state_dict(), self._generator_meta())
        return f"{path.name} was {what}; rewrote it from {self.resumed_from.name}"

    def _apply_optimizer_settings(self) -> list[str]:
        """On resume: give the restored optimisers the spec's settings (which may have changed) and log any change.

        Adam's state (its moments) is kept; only lr, betas and eps follow the new spec. A change is logged as a
        'spec_change' record in metrics.jsonl with the old and new values, and returned as a warning.
        """
        changes: dict[str, dict[str, float]] = {}
        for name in ("generator", "online"):
            opt = getattr(self.spec, name).optimizer
            wanted = {"lr": opt.lr, "beta1": opt.beta1, "beta2": opt.beta2, "eps": opt.eps}
            for group in self.opts[name].param_groups:
                had = {"lr": group["lr"], "beta1": group["betas"][0], "beta2": group["betas"][1], "eps": group["eps"]}
                for key, value in wanted.items():
                    if float(had[key]) != float(value):
                        changes.setdefault(f"{name}.optimizer.{key}", {"old": float(had[key]), "new": float(value)})
                group.update(lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)
        if not changes:
            return []
        append_record(self.run_dir, {"kind": "spec_change", "step": self.progress.step, "images_seen": self.images_seen,
                                     "kimg": self.images_seen / 1000, "changes": changes})
        shown = ", ".join(f"{k} {v['old']:g} -> {v['new']:g}" for k, v in changes.items())
        return [f"resuming with changed optimiser settings: {shown}"]

    @staticmethod
    def _adam(net: nn.Module, opt) -> torch.optim.Adam:
        return torch.optim.Adam(net.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)

    @property
    def images_seen(self) -> int:
        return self.progress.step * self.spec.training.batch_size

    @property
    def done(self) -> bool:
        return self.progress.step >= self.spec.training.total_steps

    def run(self) -> dict[str, Any]:
        """Iterate to the end of the run; returns a JSON-ready summary."""
        self.on_event(self.started)
        if self.stop.requested and not self.done:  # a signal during the set-up (the teacher fit is saved by now)
            self._stopped(None)
        self.clock = Clock(self.progress.elapsed_s)
        self.durations = Durations(snapshot=self._timed(self.write_grids))
        self.window_start = (self.clock.elapsed(), self.progress.step)  # (seconds, step) of the status window
        self.last_report = self.window_start[0]  # the last status or heartbeat (seconds)
        while not self.done:
            images_before = self.images_seen
            self.durations.iteration = self._timed(self.iteration)  # online update(s), generator update, EMA
            due = self.due(images_before)
            if due.status:
                self.report_status()
            else:
                self.heartbeat()
            if due.evaluate:
                self.durations.evaluation = self._timed(self.evaluate)
            saved = None
            if due.snapshot or self._snapshot_pending:
                # Never during a non-finite streak: if it reaches max_nonfinite_steps, the rerun must start before it.
                if self.progress.nonfinite_consecutive and not self.done:
                    self._snapshot_pending = True
                else:
                    start = self.clock.elapsed()
                    saved, self._snapshot_pending = self.snapshot(), False
                    self.durations.snapshot = self.clock.elapsed() - start
            if self.stop.due_to_time_limit(self.durations.needed()) and not self.done:
                if saved is None and not self.progress.nonfinite_consecutive:
                    saved = self.snapshot()
                self._stopped(saved)
        return self.summary()

    def _timed(self, action: Callable[[], object]) -> float:
        """Run action(); returns the seconds it took."""
        start = self.clock.elapsed()
        action()
        return self.clock.elapsed() - start

    def _state_step(self, path: Path) -> int:
        """The iteration a state file was written at, from its name (images seen / batch size)."""
        return round(float(STATE_RE.match(path.name).group(1)) * 1000 / self.spec.training.batch_size)

    def _stopped(self, saved: Path | None) -> None:
        """Raise Stopped with one line: what was saved (or is kept) and how to go on."""
        p, how = self.progress, "run the same command again to resume"
        if p.step > self.started.start_step:
            where = f"at iteration {p.step} of {self.spec.training.total_steps}"
        else:
            where = "before its first iteration" + (f" (resuming at iteration {p.step})" if p.step else "")
        if saved is not None:
            gen = f"generator-{kimg_tag(self.images_seen)}.safetensors"
            what = f"saved {saved.name} (iteration {p.step}) and {gen} in {self.run_dir}"
        else:
            states = list_states(self.run_dir)
            if states:
                why = " (no snapshot during a non-finite streak)" if p.nonfinite_consecutive else ""
                what = f"kept {states[-1].name} (iteration {self._state_step(states[-1])}) in {self.run_dir}{why}"
            else:
                fit = " (the teacher fit is saved in " + TEACHER_FIT_FILE + ")" if (self.run_dir / TEACHER_FIT_FILE).is_file() else ""
                what, how = f"no state was written yet{fit}", "run the same command again to start"
        raise Stopped(f"stopped by {self.stop.name} {where}: {what}; {how}", self.stop.exit_code)

    def due(self, images_before: int) -> Due:
        """Which reports the images seen in the last iteration crossed (all of them at the end of the run)."""
        logging, end = self.spec.logging, self.done

        def crossed(every_kimg: float | None) -> bool:
            if every_kimg is None:
                return False
            return math.floor(self.images_seen / (every_kimg * 1000)) > math.floor(images_before / (every_kimg * 1000))

        evaluate = self.evaluator is not None and (end or crossed(logging.eval_every_kimg))
        return Due(end or crossed(logging.status_every_kimg), evaluate, end or evaluate or crossed(logging.snapshot_every_kimg))

    def iteration(self) -> None:
        """One iteration of Algorithm 2, with every random draw seeded by (seed, iteration)."""
        spec, nets, step = self.spec, self.nets, self.progress.step
        rng = torch.Generator(device=self.device).manual_seed(step_seed(spec.seed, step))
        torch.manual_seed(step_seed(spec.seed, step, stream=1))  # dropout masks
        ok_online = True
        for _ in range(spec.online.updates_per_generator_update):
            loss_online, ok = online_update(
                nets.generator, nets.online, self.opts["online"], self.plan, spec.online.noise, rng, augment=self.augment
            )
            ok_online = ok_online and ok
        loss_gen, ok_gen = generator_update(
            nets.generator, nets.online, nets.teacher, self.opts["generator"], self.loss_fn, self.plan,
            spec.generator.noise, rng, grad_through_networks=spec.loss.method != "di",
            score_dropout=spec.generator.score_dropout,
        )
        self.progress.step += 1
        # EDM's convention: the half-life's ramp-up counts the images seen before this step (simcli.distill.ema).
        beta = ema_beta(spec.training.batch_size, step * spec.training.batch_size, spec.ema.halflife_kimg, spec.ema.rampup_ratio)
        update_ema(nets.ema, nets.generator, beta)
        self._account(step, loss_online, loss_gen, ok_online, ok_gen)

    def _account(self, step: int, loss_online: float, loss_gen: float, ok_online: bool, ok_gen: bool) -> None:
        """Add finite losses to the status window; count non-finite iterations and stop after K in a row."""
        p = self.progress
        if ok_online and ok_gen:
            p.nonfinite_consecutive = 0
            p.window["loss_online"] += loss_online
            p.window["loss_generator"] += loss_gen
            p.window["n"] += 1
            return
        p.nonfinite_consecutive += 1
        p.nonfinite_total += 1
        p.window["nonfinite"] += 1
        self.on_event(NonFiniteStep(step, "generator" if not ok_gen else "online", p.nonfinite_consecutive))
        if p.nonfinite_consecutive >= self.spec.training.max_nonfinite_steps:
            kept = self._roll_back_streak(p.step - p.nonfinite_consecutive)
            raise RunFailed(
                f"{p.nonfinite_consecutive} iterations in a row had non-finite losses or gradients "
                f"(iterations {p.step - p.nonfinite_consecutive} to {step}); {kept}",
                hint="lower the learning rates (--set generator.optimizer.lr=... and online.optimizer.lr=... may change "
                     "on resume) and run again, or check the teacher",
            )

    def _roll_back_streak(self, good_step: int) -> str:
        """Remove the states (and their generator snapshots) written after iteration good_step, where a non-finite
        streak began (by an earlier process, before it was stopped), so a rerun starts before the streak; says what is kept."""
        removed = [s for s in list_states(self.run_dir) if self._state_step(s) > good_step]
        for state in removed:
            tag = STATE_RE.match(state.name).group(1)
            (self.run_dir / f"generator-{tag}.safetensors").unlink(missing_ok=True)
            state.unlink()
        left = list_states(self.run_dir)
        kept = (f"the last state before the streak, {left[-1].name} (iteration {self._state_step(left[-1])}), is kept"
                if left else f"no state from before the streak is left in {self.run_dir}")
        if removed:
            kept += f"; removed {', '.join(s.name for s in removed)}, written during the streak"
        return kept

    def report_status(self) -> None:
        """Append a status record (losses averaged since the last one) and announce it."""
        p, n = self.progress, self.progress.window["n"]
        p.elapsed_s = self.clock.elapsed()
        window_seconds, window_step = p.elapsed_s - self.window_start[0], self.window_start[1]
        kimg = (p.step - window_step) * self.spec.training.batch_size / 1000
        record = {
            "kind": "status",
            "step": p.step,
            "images_seen": self.images_seen,
            "kimg": self.images_seen / 1000,
            # null (JSON's NaN) when no iteration of the interval was finite; simcli compare skips it
            "loss_online": p.window["loss_online"] / n if n else None,
            "loss_generator": p.window["loss_generator"] / n if n else None,
            "nonfinite_in_interval": int(p.window["nonfinite"]),
            "nonfinite_total": p.nonfinite_total,
            "sec_per_kimg": window_seconds / kimg if kimg else None,
            "elapsed_s": round(p.elapsed_s, 3),
            **_memory_record(self.device),
        }
        append_record(self.run_dir, record)
        self.on_event(Status(record))
        p.reset_window()
        self.window_start = (self.clock.elapsed(), p.step)
        self.last_report = self.window_start[0]

    def heartbeat(self) -> None:
        """Announce a display-only Heartbeat when logging.heartbeat_every_s passed since the last status or heartbeat.

        Nothing is written: metrics.jsonl and the state stay independent of timing."""
        every = self.spec.logging.heartbeat_every_s
        now = self.clock.elapsed()
        if every is None or now - self.last_report < every:
            return
        self.last_report = now
        self.on_event(Heartbeat(self.progress.step, self.spec.training.total_steps, self.images_seen, round(now, 3)))

    def evaluate(self) -> None:
        """Score the EMA generator, log an 'eval' record, and keep the best generator so far."""
        values = dict(self.evaluator(self.nets.ema, self.images_seen))
        score = values.pop("score", values.get("fid"))  # lower is better: FID, or MMD for mixtures
        record = {"kind": "eval", "step": self.progress.step, "images_seen": self.images_seen,
                  "kimg": self.images_seen / 1000, **values}
        record["best"] = score is not None and (self.progress.best_score is None or score < self.progress.best_score)
        if record["best"]:
            self.progress.best_score = score
            save_generator(self.run_dir / "generator-best.safetensors", self.nets.ema.state_dict(),
                           {**self._generator_meta(), "score": score, **{k: v for k, v in values.items() if k != "n"}})
        append_record(self.run_dir, record)
        self.on_event(Evaluated(record))

    def _generator_meta(self) -> dict[str, Any]:
        return {"spec": self.spec.model_dump(mode="json"), "architecture": self.nets.architecture,
                "sigma_init": self.spec.generator.sigma_init, "step": self.progress.step,
                "images_seen": self.images_seen}

    def snapshot(self) -> Path:
        """Write the EMA generator and a resumable state, keeping the newest states only; returns the state's path."""
        self.progress.elapsed_s = self.clock.elapsed()
        self.write_grids()
        gen_path = self.run_dir / f"generator-{kimg_tag(self.images_seen)}.safetensors"
        save_generator(gen_path, self.nets.ema.state_dict(), self._generator_meta())
        state_path = save_state(self.run_dir, self.images_seen, state_dict(self.spec, self.nets, self.opts, self.progress))
        prune_states(self.run_dir, self.spec.logging.keep_states)
        prune_generators(self.run_dir, self.spec.logging.keep_generators)
        self.on_event(SnapshotSaved(gen_path, state_path, self.images_seen))
        return state_path

    def write_grids(self) -> None:
        """Image teachers: a grid of the EMA generator (grid-<kimg>.png) and, once per run, of the teacher's sampler."""
        n, net = self.spec.logging.grid_samples, self.nets.teacher
        if n == 0 or len(net.sample_shape) != 3:
            return
        teacher_path = self.run_dir / TEACHER_GRID
        if not teacher_path.exists():
            images, columns = grid_images(net, n, GRID_SEED, self.device, heun_steps=TEACHER_GRID_STEPS)
            save_grid(images, teacher_path, columns)
            self.on_event(GridSaved(teacher_path, f"the teacher, {TEACHER_GRID_STEPS} Heun steps ({heun_num_evals(TEACHER_GRID_STEPS)} NFE)"))
        path = self.run_dir / f"grid-{kimg_tag(self.images_seen)}.png"
        images, columns = grid_images(self.nets.ema, n, GRID_SEED, self.device, sigma_init=self.spec.generator.sigma_init)
        save_grid(images, path, columns)
        self.on_event(GridSaved(path, f"the EMA generator at {self.images_seen / 1000:g} kimg, 1 NFE"))

    def summary(self) -> dict[str, Any]:
        generators = list_generators(self.run_dir)
        grids = sorted(self.run_dir.glob("grid-*.png"))
        return {
            "run_dir": str(self.run_dir),
            "teacher": self.spec.teacher,
            "method": self.spec.loss.method,
            "distance": self.spec.loss.distance if self.spec.loss.method == "sim" else None,
            "steps": self.progress.step,
            "images_seen": self.images_seen,
            "nonfinite_total": self.progress.nonfinite_total,
            "wall_time_s": round(self.progress.elapsed_s, 3),
            "best_score": self.progress.best_score,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "generator": str(generators[-1]) if generators else None,
            "grid": str(grids[-1]) if grids else None,
        }


def run_distillation(
    spec: RunSpec, run_dir: Path, on_event: EventHandler = ignore_event, make_evaluator: EvaluatorFactory | None = None,
    restart: bool = False, stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Distill, or resume distilling, into run_dir; returns a JSON-ready summary of the run.

    The run directory stays locked until the run ends, also when it fails. `restart`, `stop`: see Distillation.
    """
    with Distillation(spec, run_dir, on_event, make_evaluator, restart=restart, stop=stop) as distillation:
        return distillation.run()
