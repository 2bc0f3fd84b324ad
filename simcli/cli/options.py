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
TeacherOpt = Annotated[str | None, typer.Option("--teacher", help=TEACHER_HELP)]
