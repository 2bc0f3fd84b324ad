"""The distillation loop: online update, generator update, EMA, report, evaluate, snapshot (Algorithm 2).

Iteration k draws every random number from streams seeded by (seed, k, phase, micro-batch), so a run resumed
from a state file repeats, number for number, what the uninterrupted run would have done, and the same run
shared out over several processes (torchrun; simcli.world) computes the same numbers. Every process runs the
loop; rank 0 alone holds the run directory's lock, writes its files and reports events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simcli.config.spec import OptimizerSpec, RunSpec
from simcli.distill.adversarial import open_run_data, schedule_warnings
from simcli.distill.augment import online_augmentation
from simcli.distill.batches import BatchPlan, resolve_micro_batch, share_micro_batches
from simcli.distill.checkpoint import draw_grids, save_checkpoint
from simcli.distill.ema import ema_beta, update_ema
from simcli.distill.events import (
    DownloadProgress,
    Evaluated,
    EventHandler,
    Heartbeat,
    NonFiniteStep,
    RunStarted,
    SnapshotSaved,
    Status,
    ignore_event,
)
from simcli.distill.grad_clip import warmup_factor
from simcli.distill.guidance import guided_teacher
from simcli.distill.outputs import (
    Grids,
    ImageGrids,
    generator_meta,
    generator_tensors,
    run_summary,
    save_best_generator,
)
from simcli.distill.precision import LossScaler, Precision
from simcli.distill.recovery import roll_back_streak
from simcli.distill.reports import Clock, Durations, due_reports, status_record
from simcli.distill.resume import resume
from simcli.distill.setup import build_networks, check_network_settings, choose_state, speed_up_networks
from simcli.distill.sharding import ONE_PROCESS_NOTE, check_sharding, gathered, network_sharder
from simcli.distill.steps import Context, Samples, generator_update, make_generator_loss, online_update
from simcli.distill.stop import LastFinished, StopRequest
from simcli.distill.stopping import RunStops
from simcli.distill.streams import IterationStreams, online_phase
from simcli.distill.teacher_probe import check_teacher_finite
from simcli.distill.text_setup import RunPrompts, read_run_prompts
from simcli.errors import RunFailed, Stopped
from simcli.nets.few_step import generator_sigmas
from simcli.nets.lora import trainable_parameters
from simcli.peers import PeerFailed, PeerLost
from simcli.rundir.lock import RunDirLock
from simcli.rundir.metrics import append_record
from simcli.sampling.decode import image_decoder
from simcli.teachers.registry import Teacher, at_resolution, load_teacher
from simcli.world import World

GENERATOR_STEP_COST = (
    "online.sample_source = generator-step saves a generator forward per iteration but was measured to cost quality: "
    "on the digits teacher FID +64% at equal images seen for 11% less time (examples/digits/SPEED-OPTIONS.md)"
)

Evaluator = Callable[[nn.Module, int], dict[str, Any]]
"""Called on every process with (EMA generator, images seen) at every evaluation point; returns, on every
process, the eval record's values and a 'score' (lower is better) that decides the best generator."""
EvaluatorFactory = Callable[[RunSpec, Teacher, torch.device, World], Evaluator | None]
"""Builds the evaluator for a run once its teacher is loaded (the CLI passes simcli.eval's); None: no evaluation."""


class Distillation(RunStops):
    """One run directory's distillation: set up (or resumed) in __init__, advanced by run(), ended by close().

    Rank 0 holds the run directory's lock (simcli.rundir.lock) from before anything there is written until close()
    (or the end of a `with` block, or of the process); a second run on the same directory is refused.
    `restart`: when the directory's state files are all unreadable, move them aside and start from 0.
    `stop`: checked once the set-up is done and after every iteration (any process's request stops them all);
    when set, the run finishes its iteration, writes a state and a generator snapshot and raises
    simcli.errors.Stopped (the CLI sets it from signals and from --max-minutes).
    `world`: this process's place among the run's processes (simcli.world.join_world); one process by default.
    """

    def __init__(
        self, spec: RunSpec, run_dir: Path, on_event: EventHandler = ignore_event, make_evaluator: EvaluatorFactory | None = None,
        restart: bool = False, stop: StopRequest | None = None, world: World | None = None,
    ):
        self.world = world if world is not None else World()
        self.spec, self.run_dir = spec, Path(run_dir)
        self.on_event = on_event if self.world.is_main else ignore_event
        self.stop = stop if stop is not None else StopRequest()
        self._snapshot_pending = False
        self.device = self.world.device(spec.device)
        # The prompt file (text-to-image) is read before the teacher: a missing or malformed one costs no teacher load.
        prompt_file = read_run_prompts(spec)
        # The teacher first: an unknown name, a bad file or a failed download leaves the run directory untouched.
        # Rank 0 loads (and downloads) it before the others, which then find it in the cache.
        teacher = at_resolution(self._teacher(), spec.text.resolution)
        check_network_settings(spec, teacher)  # settings the teacher's network cannot take (dropout, checkpointing)
        self.sharded = check_sharding(spec, self.world, self.device)  # FSDP over the processes (fsdp, several of them)
        check_teacher_finite(spec, teacher, self.device)  # NaN/Inf teacher outputs: every iteration would be non-finite
        # Text-to-image: the prompt file, and the prompts' embeddings (a store built once in the cache, or a text
        # encoder loaded), also before the run directory is touched: a missing or malformed prompt file or a text
        # encoder that cannot be loaded leaves it as it was. Prompts for another teacher are refused.
        self.prompts = RunPrompts.prepare(spec, teacher, self.world, self.device, self.on_event, self.stop, prompt_file)
        self.real = open_run_data(spec, teacher)  # real images (--data): checked before the run directory too
        # The evaluator's reference and feature weights, too, are checked before the run directory is touched.
        self.evaluator = make_evaluator(spec, teacher, self.device, self.world) if make_evaluator is not None else None
        if self._stop_agreed():  # e.g. during a download (any process's signal): nothing in the run directory was touched
            raise Stopped(f"stopped by {self.stop.name} before the run started; nothing was written in {self.run_dir}; "
                          "run the same command again to start", self.stop.exit_code)
        self.lock = RunDirLock(self.run_dir) if self.world.is_main else None
        try:
            self._set_up(teacher, restart)
        except BaseException:
            self.close()
            raise

    def _teacher(self) -> Teacher:
        """Load the teacher (guided by its guide network when spec.guide names one); rank 0 first (it downloads
        them), then the others (from the cache)."""

        def on_download(done: int, total: int | None) -> None:
            self.on_event(DownloadProgress(done, total))

        return self.world.main_first(
            lambda: guided_teacher(self.spec, load_teacher(self.spec.teacher, on_download=on_download), on_download))

    def _set_up(self, teacher: Teacher, restart: bool) -> None:
        """The stages of a run's set-up: the state it goes on from, the networks, the optimisers, resuming, the
        prompts, the batches, the losses, the precision and the outputs."""
        spec, world, tr = self.spec, self.world, self.spec.training
        loaded, warnings = choose_state(self.run_dir, spec, restart, world, self.device)
        # Rank 0 fits an analytic teacher's network (and caches it) before the others, which then load the cache.
        shard = network_sharder(spec, self.device) if self.sharded else None  # before the optimisers: they hold shards
        if tr.sharding == "fsdp" and not self.sharded:
            warnings.append(ONE_PROCESS_NOTE)
        self.nets = world.main_first(
            lambda: build_networks(spec, teacher, self.run_dir, self.device, self.on_event, self.stop, shard=shard))
        self.opts = {
            "generator": self._adam(self.nets.generator, spec.generator.optimizer),
            "online": self._adam(self.nets.online, spec.online.optimizer),
        }
        self.progress, resume_warnings = resume(self.run_dir, spec, loaded, self.nets, self.opts, world)
        self.resumed_from = loaded[1] if loaded is not None else None
        warnings += resume_warnings
        if self.prompts is not None:  # the teacher's guidance contrasts with the empty prompt
            warnings += self.prompts.attach(self.nets.teacher, self.progress, spec, self.device)
        g = spec.generator
        self.sigmas = generator_sigmas(g.sigma_init, g.steps, g.step_sigmas)
        micro_batch, batch_warnings = resolve_micro_batch(tr.batch_size, tr.batch_gpu, world.size, self.progress.micro_batch)
        self.progress.micro_batch = micro_batch
        sample_shape = tuple(self.nets.teacher.sample_shape)
        self.plan = BatchPlan(spec.generator.sigma_init, tr.batch_size, micro_batch, sample_shape, self.nets.teacher.label_dim,
                              self.device, share_micro_batches(tr.batch_size // micro_batch, world),
                              self.prompts.conditions if self.prompts is not None else None,
                              step_sigmas=self.sigmas[1:])
        self.loss_fn = make_generator_loss(spec.loss, spec.generator.weighting, int(np.prod(sample_shape)))
        self.augment, augment_warnings = online_augmentation(spec.online.augment_p, self.nets.online)
        self.precision = Precision(tr.precision, self.device)
        scaled = self.precision.adapt([self.nets.teacher, self.nets.generator, self.nets.online, self.nets.ema])
        self.scalers = {name: LossScaler(**{**self.progress.loss_scalers.get(name, {}), "enabled": scaled})
                        for name in ("generator", "online")}
        # Rank 0 of several processes keeps what an iteration changes before its last collective, so that a collective
        # given up half-way (simcli.world.PeerLost) saves the last finished iteration (simcli.distill.stop.LastFinished).
        # A sharded run cannot save without the lost process's shards: it keeps its last state.
        first = ["generator", "online"] if spec.online.sample_source == "generator-step" else ["online"]
        self.last_finished = (LastFinished([(getattr(self.nets, n), self.opts[n], self.scalers[n]) for n in first])
                              if world.distributed and world.is_main and not self.sharded else None)
        speed_up_networks(self.nets, channels_last=tr.channels_last, compile=tr.compile)
        self.grids = self._grids() if world.is_main else None
        if spec.online.sample_source == "generator-step":
            batch_warnings.append(GENERATOR_STEP_COST)
        warnings = [*warnings, *batch_warnings, *augment_warnings,
                    *schedule_warnings(self.real, tr.total_steps * tr.batch_size, spec.loss.method)]
        self.started = RunStarted(
            self.run_dir, str(self.device), self.progress.step, tr.total_steps, tr.batch_size, self.resumed_from,
            sum(p.numel() for p in self.nets.generator.parameters()), warnings, self.progress.elapsed_s,
            world.size, micro_batch, tr.precision,
        )

    def _grids(self) -> Grids:
        """Rank 0's grids at every snapshot: latents decoded on the run's first prompts, or image samples."""
        n = self.spec.logging.grid_samples
        if self.prompts is not None:
            return self.prompts.grids(self.run_dir, n, self.sigmas, self.device, self.on_event)
        decode = image_decoder(self.nets.architecture, self.device)  # latents: the VAE loads at the first grid
        return ImageGrids(self.run_dir, self.nets.teacher, n, self.sigmas, self.device, self.on_event, decode)

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> Distillation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _adam(net: nn.Module, opt: OptimizerSpec) -> torch.optim.Optimizer:
        """Adam, or AdamW with decoupled weight decay when optimizer.weight_decay is set (DMD2)."""
        params, betas = trainable_parameters(net), (opt.beta1, opt.beta2)
        if opt.weight_decay > 0:
            return torch.optim.AdamW(params, lr=opt.lr, betas=betas, eps=opt.eps, weight_decay=opt.weight_decay)
        return torch.optim.Adam(params, lr=opt.lr, betas=betas, eps=opt.eps)

    @property
    def images_seen(self) -> int:
        return self.progress.step * self.spec.training.batch_size

    @property
    def done(self) -> bool:
        return self.progress.step >= self.spec.training.total_steps

    def run(self) -> dict[str, Any]:
        """Iterate to the end of the run; returns a JSON-ready summary."""
        self.on_event(self.started)
        with self.precision.tf32():
            return self._run()

    def _run(self) -> dict[str, Any]:
        if self._stop_agreed() and not self.done:  # a signal during the set-up (the teacher fit is saved by now)
            self._stopped(None)
        self.clock = Clock(self.progress.elapsed_s)
        self.durations = Durations(snapshot=self._timed(self.write_grids))
        self.window_start = (self.clock.elapsed(), self.progress.step)  # (seconds, step) of the status window
        self.last_report = self.window_start[0]  # the last status or heartbeat (seconds)
        try:
            self._iterate()
        except PeerLost as exc:  # a process stopped answering, or a stop came while a collective waited for one
            self._given_up(exc)
        return self.summary()

    def _iterate(self) -> None:
        while not self.done:
            images_before = self.images_seen
            self.durations.iteration = self._timed(self.iteration)  # online update(s), generator update, EMA
            due = due_reports(self.spec.logging, images_before, self.images_seen, self.done, self.evaluator is not None)
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
            self.stop.due_to_time_limit(self.durations.needed())
            if self._stop_agreed() and not self.done:
                if saved is None and not self.progress.nonfinite_consecutive:
                    saved = self.snapshot()
                self._stopped(saved)

    def _timed(self, action: Callable[[], object]) -> float:
        """Run action(); returns the seconds it took."""
        start = self.clock.elapsed()
        action()
        return self.clock.elapsed() - start

    def iteration(self) -> None:
        """One iteration of Algorithm 2, every random draw from the streams of (seed, iteration, phase, micro-batch).

        online.sample_source 'generator-step' runs the generator update first and trains the online model on its
        samples (one generator forward fewer)."""
        spec, nets, step = self.spec, self.nets, self.progress.step
        if self.last_finished is not None:
            self.last_finished.keep(step)
        ctx = Context(self.plan, IterationStreams(spec.seed, step, self.device), self.world, self.precision.autocast)
        reuse = spec.online.sample_source == "generator-step"
        kept: list[Samples] | None = [] if reuse else None

        images_before, real = step * spec.training.batch_size, self.real

        g_opt, o_opt, updates = spec.generator.optimizer, spec.online.optimizer, spec.online.updates_per_generator_update

        def update_generator() -> tuple[float, bool]:
            return generator_update(
                nets.generator, nets.online, nets.teacher, self.opts["generator"], self.loss_fn, ctx,
                spec.generator.noise, grad_through_networks=spec.loss.method not in ("di", "dmd2"),
                score_dropout=spec.generator.score_dropout, scaler=self.scalers["generator"], keep_samples=kept,
                real=real, adversarial=real is not None and real.generator_adversarial(images_before),
                frozen=real is not None and real.generator_frozen(images_before), max_grad_norm=g_opt.max_grad_norm,
                lr_factor=warmup_factor(step, g_opt.warmup_updates),
                uncertainty_scaling=spec.generator.uncertainty_scaling,
            )

        if reuse:
            loss_gen, ok_gen = update_generator()
        ok_online = True
        for j in range(updates):
            loss_online, ok = online_update(
                nets.generator, nets.online, self.opts["online"], ctx, online_phase(j), spec.online.noise,
                augment=self.augment, scaler=self.scalers["online"], samples=kept, weighting=spec.online.weighting,
                real=self.real, per_pixel=spec.loss.method == "dmd2", max_grad_norm=o_opt.max_grad_norm,
                lr_factor=warmup_factor(step * updates + j, o_opt.warmup_updates),
            )
            ok_online = ok_online and ok
        if not reuse:
            loss_gen, ok_gen = update_generator()
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
            good_step = p.step - p.nonfinite_consecutive
            kept = self.world.on_main(lambda: roll_back_streak(self.run_dir, good_step, self.spec.training.batch_size))
            if not self.world.is_main:  # the same on every process: rank 0 reports it
                raise PeerFailed("non-finite streak", RunFailed.exit_code)
            raise RunFailed(
                f"{p.nonfinite_consecutive} iterations in a row had non-finite losses or gradients "
                f"(iterations {good_step} to {step}); {kept}",
                hint="lower the learning rates (--set generator.optimizer.lr=... and online.optimizer.lr=... may change "
                     "on resume) and run again, or check the teacher",
            )

    def report_status(self) -> None:
        """Append a status record (losses averaged since the last one) and announce it (rank 0)."""
        p = self.progress
        p.elapsed_s = self.clock.elapsed()
        extra: dict[str, Any] = {"processes": self.world.size} if self.world.distributed else {}
        if self.scalers["generator"].enabled:
            extra.update({f"loss_scale_{k}": s.scale for k, s in self.scalers.items()})
            extra.update({f"loss_scale_overflows_{k}": s.overflows for k, s in self.scalers.items()})
        record = status_record(p, self.spec.training.batch_size, p.elapsed_s - self.window_start[0], self.window_start[1],
                               self.device, extra)
        if self.world.is_main:
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
        """Score the EMA generator (every process takes a share of the samples), log an 'eval' record and keep the
        best generator so far (rank 0)."""
        with gathered(self.nets.ema, self.world):  # sharded: each process generates its share without collectives
            values = dict(self.evaluator(self.nets.ema, self.images_seen))
        score = values.pop("score", values.get("fid"))  # lower is better: FID, or MMD^2 for mixtures
        record = {"kind": "eval", "step": self.progress.step, "images_seen": self.images_seen,
                  "kimg": self.images_seen / 1000, **values}
        record["best"] = score is not None and (self.progress.best_score is None or score < self.progress.best_score)
        if record["best"]:
            self.progress.best_score = score
            ema_state = generator_tensors(self.nets.ema, self.spec)  # sharded: gathered on rank 0 (all take part)
            if self.world.is_main:
                save_best_generator(self.run_dir, ema_state, {**self._generator_meta(), "score": score,
                                                              **{k: v for k, v in values.items() if k != "n"}})
        if self.world.is_main:
            append_record(self.run_dir, record)
        self.on_event(Evaluated(record))

    def _generator_meta(self) -> dict[str, Any]:
        return generator_meta(self.spec, self.nets.architecture, self.progress.step, self.images_seen)

    def snapshot(self) -> Path:
        """Write a resumable state and the EMA generator (simcli.distill.checkpoint), then the grids; returns the
        state's path (where rank 0 writes it)."""
        p = self.progress
        p.elapsed_s = self.clock.elapsed()
        p.loss_scalers = {k: dataclasses.asdict(s) for k, s in self.scalers.items()}
        gen_file, state_file = save_checkpoint(self.run_dir, self.spec, self.images_seen, self._generator_meta(),
                                               self.nets, self.opts, p, self.world, self.sharded)
        self.write_grids()  # after the state: a grid that fails (a VAE out of memory) loses no checkpoint
        if gen_file is not None:
            self.on_event(SnapshotSaved(gen_file, state_file, self.images_seen))
        return state_file

    def write_grids(self) -> None:
        draw_grids(self.grids, self.nets, self.world, self.sharded, self.images_seen)

    def summary(self) -> dict[str, Any]:
        return {**run_summary(self.run_dir, self.spec), "steps": self.progress.step, "images_seen": self.images_seen,
                "nonfinite_total": self.progress.nonfinite_total, "wall_time_s": round(self.progress.elapsed_s, 3),
                "best_score": self.progress.best_score,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                "processes": self.world.size, "micro_batch": self.progress.micro_batch}


def run_distillation(
    spec: RunSpec, run_dir: Path, on_event: EventHandler = ignore_event, make_evaluator: EvaluatorFactory | None = None,
    restart: bool = False, stop: StopRequest | None = None, world: World | None = None,
) -> dict[str, Any]:
    """Distill, or resume distilling, into run_dir; returns a JSON-ready summary of the run.

    The run directory stays locked until the run ends, also when it fails. `restart`, `stop`, `world`: see
    Distillation.
    """
    with Distillation(spec, run_dir, on_event, make_evaluator, restart=restart, stop=stop, world=world) as distillation:
        return distillation.run()
