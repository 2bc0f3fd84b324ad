"""`simcli eval`: score samples. Exact metrics against analytic teachers (FID/IS for images come later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from simcli.cli.errors import reported_errors
from simcli.cli.options import DeviceOpt, JsonOpt, SeedOpt, TeacherOpt, ThreadsOpt
from simcli.cli.output import print_json, stderr_console
from simcli.errors import UsageError

EPILOG = """Examples:

  simcli eval --teacher gmm-ring8 --samples ring8-sim.npz

  simcli eval --teacher gmm-ring8 --generator runs/ring8-sim --n 10000 --json
"""


def eval_command(
    teacher: TeacherOpt = None,
    samples: Annotated[Path | None, typer.Option("--samples", help="An .npz written by 'simcli sample'.")] = None,
    generator: Annotated[Path | None, typer.Option("--generator", help="Run directory or generator snapshot (samples made in memory).")] = None,
    n: Annotated[int, typer.Option("--n", min=2, help="Samples to generate with --generator.")] = 10000,
    seed: SeedOpt = 0,
    mmd_bandwidth: Annotated[float | None, typer.Option("--mmd-bandwidth", help="RBF bandwidth of MMD (default: twice the mixture's typical component std).")] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score samples against an analytic teacher: mode weights, precision, MMD, sliced W2."""
    with reported_errors():
        from simcli.runtime import set_cpu_threads

        set_cpu_threads(threads)
        from simcli.eval.gmm_eval import evaluate_against_teacher

        if teacher is None:
            raise UsageError("no teacher given", hint="exact metrics need --teacher gmm-...")
        report = evaluate_against_teacher(
            teacher, samples=samples, generator=generator, n=n, seed=seed, mmd_bandwidth=mmd_bandwidth, device=device
        )
        if json_out:
            print_json(report)
            return
        table = Table(title=f"exact metrics against {teacher} ({report['n']} samples)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("mode-weight L1 error", f"{report['mode_weight_l1']:.4f}")
        table.add_row(f"precision (within {report['precision_num_std']:g} std)", f"{report['precision']:.4f}")
        table.add_row(f"MMD^2 (RBF bandwidth {report['mmd_bandwidth']:.4g})", f"{report['mmd']:.3e}")
        table.add_row(f"sliced W2 ({report['sw2_num_projections']} directions)", f"{report['sw2']:.4f}")
        table.add_row("mode weights", " ".join(f"{w:.3f}" for w in report["mode_weights"]))
        stderr_console().print(table)
