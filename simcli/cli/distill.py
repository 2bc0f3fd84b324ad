"""`simcli distill`: distill a teacher into a one-step generator (or resume a run directory)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from simcli.cli.errors import interrupted, reported_errors, stop_on_signals
from simcli.cli.options import DistillTeacherOpt, JsonOpt, ThreadsOpt
from simcli.cli.output import DistillReporter, print_json, print_memory_plan, stdout_console
from simcli.config.presets import PRESETS
from simcli.errors import UsageError

FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "--method": ("loss.method",),
    "--distance": ("loss.distance",),
    "--kimg": ("training.duration_kimg",),
    "--steps": ("training.duration_steps",),
    "--batch-size": ("training.batch_size",),
    "--batch-gpu": ("training.batch_gpu",),
    "--precision": ("training.precision",),
    "--sharding": ("training.sharding",),
    "--lora-rank": ("generator.lora_rank", "online.lora_rank"),
    "--generator-steps": ("generator.steps",),
    "--data": ("data.source",),
    "--guide": ("guide.network",),
    "--guidance": ("guide.weight",),
    "--lr": ("generator.optimizer.lr", "online.optimizer.lr"),
    "--eval-every": ("logging.eval_every_kimg",),
    "--fid-ref": ("evaluation.reference",),
    "--fid-n": ("evaluation.num_samples",),
    "--seed": ("seed",),
    "--device": ("device",),
    "--prompts": ("text.prompts",),
}
"""The spec keys each flag of `distill` sets: the flags' layer of the spec is built from it, and an error about a
key whose value came from a flag names the flag."""
KEY_FLAGS = {key: flag for flag, keys in FLAG_KEYS.items() for key in keys}


def flag_layer(values: dict[str, Any]) -> dict[str, Any]:
    """The nested spec layer of the flags given (values None: not given)."""
    layer: dict[str, Any] = {}
    for flag, value in values.items():
        for key in FLAG_KEYS[flag] if value is not None else ():
            *parents, leaf = key.split(".")
            node = layer
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return layer


@contextmanager
def flags_named(provenance: dict[str, str]) -> Iterator[None]:
    """An error about a spec key whose value came from a flag names the flag (`--kimg`, not training.duration_kimg)."""
    from simcli.config.key_errors import SpecKeyError

    try:
        yield
    except SpecKeyError as exc:
        source = exc.source if exc.source is not None else provenance.get(exc.key)
        if source == "flag" and exc.key in KEY_FLAGS:
            raise exc.named(KEY_FLAGS[exc.key]) from None
        raise


EPILOG = """Examples:

  simcli distill --teacher gmm-ring8 --out runs/ring8-sim

  simcli distill --teacher gmm-ring8 --out runs/ring8-sid --method sid --kimg 256

  simcli distill --teacher gmm:mixture.json --out runs/mix --set online.optimizer.lr=3e-4 --dry-run

  simcli distill --teacher edm-cifar10 --distance pseudo-huber --out runs/cifar10-sim --batch-gpu 32

  simcli distill --teacher edm-cifar10 --out runs/cifar10-sim --max-minutes 230   # exit code 75: run it again

  torchrun --nproc_per_node 4 -m simcli distill --teacher pixart-alpha-512 --prompts captions.txt --out runs/pixart

Running the same command again on an existing run directory resumes it. One process at a time may write
a run directory; a second one is refused with the first one's PID and host. With --max-minutes the run saves
and stops with exit code 75 before its budget is spent (a job script requeues on it; see examples/slurm/).
"""


def distill(
    teacher: DistillTeacherOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (created; resumed when it holds a run). Required, except with --dry-run.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sim, sid, di or dmd2 (default: sim).")] = None,
    distance: Annotated[str | None, typer.Option("--distance", help="SIM distance: pseudo-huber, l2, l1, huber, lp, exp-lp (default: pseudo-huber).")] = None,
    kimg: Annotated[float | None, typer.Option("--kimg", help="Duration in thousands of generator images (default: the preset's; --dry-run shows it).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Duration in iterations.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Generator images per iteration (default: the preset's).")] = None,
    batch_gpu: Annotated[int | None, typer.Option("--batch-gpu", help="Images per forward pass; the batch is accumulated over rounds (default: the whole batch at once).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate of both the generator and the online model (default: the preset's).")] = None,
    eval_every: Annotated[float | None, typer.Option("--eval-every", help="Evaluate the EMA generator every this many kimg (FID/IS; exact metrics for mixtures).")] = None,
    fid_ref: Annotated[str | None, typer.Option("--fid-ref", help="FID reference for --eval-every (default: the teacher's dataset).")] = None,
    fid_n: Annotated[int | None, typer.Option("--fid-n", help="Samples per in-training evaluation (default: 10000, or the preset's).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Run seed (default: 0).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:N or auto (default: auto).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Spec file (YAML, TOML or JSON).")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help=f"Named preset (default: auto, chosen by the teacher): auto, {', '.join(PRESETS)}.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override any spec key: --set online.optimizer.lr=1e-4 (repeatable).")] = None,
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved spec with where each value came from, and exit.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="When no state file in RUN_DIR is readable: move them aside into discarded-<time>/ and start again from iteration 0.")] = False,
    prompts: Annotated[Path | None, typer.Option("--prompts", metavar="FILE", help="Text-to-image teachers: the prompts to distill from, one per line (.txt) or JSON lines with a 'prompt' field (.jsonl).")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="Network passes in fp32 (TF32 off), tf32, bf16 (autocast) or fp16 (autocast, loss scaling); weights and losses stay float32 (default: fp32).")] = None,
    data: Annotated[str | None, typer.Option("--data", metavar="SOURCE", help="Real training images for an adversarial term (SiDA's, beyond the data-free paper): an image folder (labels from its dataset.json), an EDM dataset .zip, an .npz, or digits-train. Default: data-free.")] = None,
    sharding: Annotated[str | None, typer.Option("--sharding", help="Under torchrun: none (each process holds whole networks) or fsdp (the networks, gradients and Adam states sharded over the processes with FSDP2; sharded checkpoints that resume with any number of processes). Default: none.")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", metavar="R", help="Train rank-R LoRA adapters of the generator and the online model over one shared, frozen copy of the teacher's weights, instead of all their weights (default: all weights).")] = None,
    guide: Annotated[str | None, typer.Option("--guide", metavar="NAME", help="EDM/EDM2 teachers: guide the teacher with a second network, D_guide + w (D - D_guide): an unconditional EDM2 network (classifier-free guidance) or a smaller conditional one (autoguidance), by official name or file stem, or a local .pkl. Default: unguided.")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", metavar="W", help="The guidance weight w with --guide (1: unguided; EDM2's presets use 1.2 to 2.9).")] = None,
    generator_steps: Annotated[int | None, typer.Option("--generator-steps", metavar="K", help="A generator of K steps: applied at K falling noise levels with fresh noise between them, trained on its own K-step outputs (backward simulation); sample and eval use the run's K (default: 1, one step).")] = None,
    plan_processes: Annotated[int | None, typer.Option("--processes", metavar="N", help="With --dry-run: plan for a run over N processes (torchrun --nproc_per_node times nodes), e.g. to see what --sharding fsdp gives on 8 GPUs (default: the processes torchrun started, or 1).")] = None,
    gpu_memory: Annotated[float | None, typer.Option("--gpu-memory", metavar="GIB", help="With --dry-run: the memory of each process's GPU in GiB that the memory plan is checked against (default: the visible GPU's; none on a machine without one).")] = None,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", metavar="MINUTES", help="Time budget in minutes, counted from the start of this process: the run saves and exits with code 75 before it is spent, so a job script can requeue it; run the same command again to resume.")] = None,
) -> None:
    """Distill a teacher into a one-step (or few-step) generator with SIM, SiD, Diff-Instruct or DMD2."""
    with reported_errors():
        from simcli.distill.stop import StopRequest  # no torch: signal and time only

        if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
            raise UsageError(f"--max-minutes must be a positive number of minutes, not {max_minutes:g}",
                             hint="give the job's time budget, e.g. --max-minutes 230")
        # First thing: the budget counts from here, so the teacher's download and loading count too.
        stop = StopRequest(max_seconds=None if max_minutes is None else max_minutes * 60)
        from simcli.config.resolve import resolve_spec
        from simcli.runtime import set_cpu_threads

        if kimg is not None and steps is not None:
            raise UsageError("--kimg and --steps both given", hint="give one duration")
        flags = flag_layer({
            "--method": method, "--distance": distance, "--kimg": kimg, "--steps": steps, "--batch-size": batch_size,
            "--batch-gpu": batch_gpu, "--precision": precision, "--sharding": sharding, "--lora-rank": lora_rank,
            "--generator-steps": generator_steps, "--data": _absolute(data), "--guide": guide, "--guidance": guidance, "--lr": lr, "--eval-every": eval_every, "--fid-ref": fid_ref,
            "--fid-n": fid_n, "--seed": seed, "--device": device,
            # absolute, so that the run resumes from any working directory
            "--prompts": str(prompts.resolve()) if prompts is not None else None,
        })
        from simcli.teachers.registry import check_teacher, describe_teacher_name
        from simcli.world import environment_world

        processes = (environment_world() or (0, 1, 0))[1]
        if plan_processes is not None:
            if not dry_run:
                raise UsageError("--processes plans a dry run; a run's processes are the ones torchrun starts",
                                 hint="add --dry-run, or start the run with torchrun --nproc_per_node N")
            if not 1 <= plan_processes <= 1_000_000:
                raise UsageError(f"--processes must be a number of processes from 1, not {plan_processes}",
                                 hint="e.g. --processes 8")
            processes = plan_processes
        provenance: dict[str, str] = {}
        with flags_named(provenance):
            spec, provenance_found = resolve_spec(teacher, describe_teacher_name, preset=preset, config_file=config,
                                                  flags=flags, sets=set_, processes=processes, recorded=_recorded_spec(out))
        provenance.update(provenance_found)
        set_cpu_threads(threads)  # after the spec checks: it imports torch, which takes seconds
        if dry_run:
            check_teacher(spec.teacher)
            _print_dry_run(spec, provenance, json_out, _memory_plan(spec, processes, gpu_memory))
            return
        if out is None:
            raise UsageError("no run directory given", hint="pass --out RUN_DIR")
        from simcli.distill.loop import run_distillation
        from simcli.eval.during_training import make_evaluator
        from simcli.world import join_world, leave_world

        # Under torchrun: join the other processes (rank 0 reports and writes; the others stay quiet).
        world = join_world(spec.device, spec.training.collective_timeout_min, stop)
        reporter = DistillReporter()
        reporter.notes = _resolution_notes(spec, provenance, world.size)
        try:
            with stop_on_signals(stop), flags_named(provenance):
                summary = run_distillation(spec, out, reporter, make_evaluator, restart=restart, stop=stop, world=world)
        except KeyboardInterrupt:  # a second Ctrl-C: at once, without a new snapshot
            reporter.close()
            interrupted(f"interrupted; {_kept_snapshot(out, spec.training.batch_size)}")
        finally:
            reporter.close()
            leave_world(world)
        if not world.is_main:
            return
        if json_out:
            print_json(summary)
        else:
            reporter.line(
                f"done: {summary['steps']} iterations, {summary['images_seen'] / 1000:g} kimg, "
                f"{summary['wall_time_s']:.1f} s; generator: {summary['generator']}"
            )


def _recorded_spec(run_dir: Path | None) -> dict | None:
    """The spec a run directory records (its config.json), or None: no directory, no file, or not a mapping (the
    run directory's own checks report a damaged file)."""
    import json

    from simcli.config.files import TooComplex, check_shape
    from simcli.rundir.layout import CONFIG_FILE

    try:
        recorded = json.loads((run_dir / CONFIG_FILE).read_text()) if run_dir is not None else None
        check_shape(recorded)  # bounded, like a --config file: keep_recorded walks it
    except (OSError, ValueError, RecursionError, TooComplex):
        return None
    return recorded if isinstance(recorded, dict) else None


def _resolution_notes(spec, provenance: dict[str, str], processes: int) -> list[str]:
    """What the spec's resolution chose for the user: values kept from the run directory's record, an adapted
    preset micro-batch."""
    from simcli.config.resolve import ADAPTED, RECORDED

    notes = []
    kept = sorted(key for key, source in provenance.items() if source == RECORDED)
    if kept:
        notes.append(f"the run goes on with the values its config.json records for {', '.join(kept)} (a preset or "
                     "default gives others now; flags, --set and --config still change what may change)")
    source = provenance.get("training.batch_gpu", "")
    if source.endswith(ADAPTED):
        preset = source.split(",")[0].removeprefix("preset:").split(":")[0]
        notes.append(f"micro-batches of {spec.training.batch_gpu} images, as the {preset} preset's do not divide the "
                     f"batch of {spec.training.batch_size // processes} images per process (--batch-gpu sets them)")
    return notes


def _kept_snapshot(run_dir: Path, batch_size: int) -> str:
    """What an abort leaves: the newest state (and its iteration), or that there is none yet."""
    from simcli.rundir.layout import newest_state

    newest = newest_state(run_dir, batch_size)
    if newest is None:
        return "no snapshot was written yet; run the same command again to start"
    return f"the last snapshot, {newest[0].name} (iteration {newest[1]}), is kept; run the same command again to resume"


def _absolute(source: str | None) -> str | None:
    """A --data path made absolute (the run resumes from any working directory); shipped names as they are."""
    if source is None:
        return None
    from simcli.data.real_data import SHIPPED_SETS

    return source if source in SHIPPED_SETS else str(Path(source).expanduser().resolve())


def _memory_plan(spec, processes: int, gpu_memory: float | None):
    """The memory plan of the resolved spec (simcli.distill.memory_plan), or None for a teacher whose architecture
    is known only from its weights."""
    if gpu_memory is not None and not (math.isfinite(gpu_memory) and gpu_memory > 0):
        raise UsageError(f"--gpu-memory must be a positive number of GiB, not {gpu_memory:g}", hint="e.g. --gpu-memory 80")
    from simcli.distill.memory_plan import dry_run_architecture, plan_memory, visible_gpu_bytes

    found = dry_run_architecture(spec)
    if found is None:
        return None
    device = round(gpu_memory * 2**30) if gpu_memory is not None else visible_gpu_bytes()
    return plan_memory(found[0], spec, processes, device, text_tokens=found[1])


def _print_dry_run(spec, provenance: dict[str, str], json_out: bool, plan=None) -> None:
    from simcli.config.resolve import _leaves

    values = spec.model_dump(mode="json")
    if json_out:
        print_json({"spec": values, "provenance": provenance, "memory": plan.as_json() if plan is not None else None})
        return
    console = stdout_console()
    for path, value in _leaves(values):
        key = ".".join(path)
        console.print(f"{key} = {value!r}  [dim]({provenance.get(key, 'default')})[/dim]")
    print_memory_plan(console, plan)
