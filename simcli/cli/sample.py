"""`simcli sample`: one-step samples from a generator, or the teacher's EDM Heun sampler for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simcli.cli.errors import reported_errors
from simcli.cli.options import DeviceOpt, ForceOpt, JsonOpt, SeedOpt, TeacherOpt, ThreadsOpt
from simcli.cli.output import print_json, stderr_console
from simcli.errors import UsageError

EPILOG = """Examples:

  simcli sample --generator runs/ring8-sim --n 10000 --out ring8-sim.npz

  simcli sample --teacher gmm-ring8 --steps 18 --n 10000 --out ring8-teacher.npz

Sample i uses seed + i with its own random generator, so it does not depend on the batch size.
"""


def sample(
    out: Annotated[Path, typer.Option("--out", help="Output: .npz, or a directory of {seed:06d}.png for images.")],
    generator: Annotated[Path | None, typer.Option("--generator", help="Run directory (newest snapshot) or generator-*.safetensors.")] = None,
    teacher: TeacherOpt = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Heun steps for --teacher (2*steps-1 evaluations).")] = 18,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples.")] = 10000,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per forward pass.")] = 4096,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    class_label: Annotated[int | None, typer.Option("--class", help="Class index for conditional models (default: random per seed).")] = None,
    grid: Annotated[Path | None, typer.Option("--grid", help="Also write a PNG grid of the first 256 images.")] = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write samples of a one-step generator (or of the teacher's multi-step sampler) to an .npz file."""
    with reported_errors():
        from simcli.runtime import set_cpu_threads

        set_cpu_threads(threads)
        from simcli.sampling.run import sample_to_file

        if (generator is None) == (teacher is None):
            raise UsageError("give exactly one of --generator and --teacher")
        summary = sample_to_file(
            out, generator=generator, teacher=teacher, heun_steps=steps, n=n, seed=seed,
            batch_size=batch_size, device=device, overwrite=force, class_label=class_label, grid=grid,
        )
        if json_out:
            print_json(summary)
        else:
            stderr_console().print(f"wrote {summary['n']} samples ({summary['source']}) to {summary['out']}")
