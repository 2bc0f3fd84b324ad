"""Shared option aliases, so every command spells the same option the same way."""

from __future__ import annotations

from typing import Annotated

import typer

from simcli.teachers.registry import known_teachers

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout; human output goes to stderr.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="First seed; sample i uses seed + i.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for torch (default: one per core; 1 is fastest for tiny nets on busy machines).")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace an existing output file.")]
TEACHER_HELP = f"Teacher: {', '.join(known_teachers())}."
DistillTeacherOpt = Annotated[
    str | None, typer.Option("--teacher", help=f"Required (unless the --config file names the teacher). {TEACHER_HELP}")
]
EvalTeacherOpt = Annotated[
    str | None,
    typer.Option("--teacher", help="Score samples of a mixture against this analytic teacher (exact metrics instead of "
                 f"FID/IS). {TEACHER_HELP}"),
]

# Readable metavars in the help, by option (or 'COMMAND --option' where commands differ); the rest get one by
# type in simcli.cli.app (flags none, paths PATH, integers N, numbers NUMBER, text TEXT).
METAVARS = {
    "--teacher": "TEACHER", "--set": "KEY=VALUE", "--config": "FILE", "--kimg": "KIMG", "--eval-every": "KIMG",
    "--lr": "LR", "--method": "METHOD", "--distance": "DISTANCE", "--preset": "NAME", "--device": "DEVICE",
    "--fid-ref": "REF", "--ref": "REF", "--generator": "RUN_DIR|FILE", "--samples": "DIR|FILE",
    "--feature-weights": "FILE", "--save-stats": "FILE", "--grid": "FILE", "--plot": "FILE", "--backend": "NAME",
    "--mode": "MODE", "--sort": "KEY", "--class": "N", "distill --out": "RUN_DIR", "sample --out": "FILE|DIR",
    "compare run_dirs": "RUN_DIR",
}
