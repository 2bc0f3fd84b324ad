"""One-step generators against the teacher's 35-NFE Heun sampler on analytic mixtures (CPU, minutes).

Distills each teacher with SIM (pseudo-Huber), SIM (l2), SiD and Diff-Instruct under the `gmm` preset,
then scores the EMA generator, the teacher's 18-step Heun sampler and exact samples at equal counts with
the exact metrics of `simcli eval`. Writes benchmarks/results/gmm_table.{md,json}.

    python benchmarks/gmm_table.py [--teachers gmm-ring8 gmm:examples/gmm-5mode-8d.json] [--n 10000]
        [--runs-dir /tmp/simcli-bench] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

from simcli.config.resolve import resolve_spec
from simcli.distill.loop import run_distillation
from simcli.distill.setup import fitted_teacher_network
from simcli.eval.gmm_metrics import gmm_report
from simcli.rundir.layout import TEACHER_FIT_FILE
from simcli.sampling.run import generator_samples, teacher_samples
from simcli.teachers.registry import describe_teacher_name, load_teacher

METHODS = {
    "SIM pseudo-huber": ["loss.method=sim", "loss.distance=pseudo-huber"],
    "SIM l2": ["loss.method=sim", "loss.distance=l2"],
    "SiD (alpha 1.2)": ["loss.method=sid"],
    "Diff-Instruct": ["loss.method=di"],
}
REFERENCE_SEED = 1_000_003
COLUMNS = ("mode_weight_l1", "precision", "mmd", "sw2")


def score(x: torch.Tensor, teacher: str) -> dict:
    report = gmm_report(x, load_teacher(teacher).mixture, seed=REFERENCE_SEED)
    return {k: report[k] for k in (*COLUMNS, "mmd_bandwidth", "mode_weights")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["gmm-ring8", "gmm:examples/gmm-5mode-8d.json"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/simcli-bench"))
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gmm_table")
    args = parser.parse_args()

    rows = []
    for teacher in args.teachers:
        t0 = time.perf_counter()
        x, _, _ = teacher_samples(teacher, args.n, seed=0, heun_steps=18, device="cpu")
        rows.append({"teacher": teacher, "sampler": "teacher Heun, 18 steps", "nfe": 35,
                     "wall_time_s": time.perf_counter() - t0, **score(x, teacher)})
        exact, _ = load_teacher(teacher).mixture.sample(args.n, generator=torch.Generator().manual_seed(7))
        rows.append({"teacher": teacher, "sampler": "exact samples", "nfe": None, "wall_time_s": None, **score(exact, teacher)})
        fitted = None  # every method starts from the same fitted MLP: fit once, copy it into each run
        for name in args.methods:
            run_dir = args.runs_dir / teacher.replace(":", "_").replace("/", "_") / name.replace(" ", "_")
            shutil.rmtree(run_dir, ignore_errors=True)
            spec, _ = resolve_spec(teacher, describe_teacher_name, sets=[*METHODS[name], *args.sets])
            fit_s = 0.0
            if fitted is None:
                t0 = time.perf_counter()
                fit_dir = args.runs_dir / "fit" / teacher.replace(":", "_").replace("/", "_")
                fit_dir.mkdir(parents=True, exist_ok=True)
                fitted_teacher_network(load_teacher(teacher).mixture, spec, fit_dir, torch.device("cpu"), lambda e: None)
                fitted, fit_s = fit_dir / TEACHER_FIT_FILE, time.perf_counter() - t0
            run_dir.mkdir(parents=True)
            shutil.copy(fitted, run_dir / TEACHER_FIT_FILE)
            t0 = time.perf_counter()
            summary = run_distillation(spec, run_dir)
            wall = time.perf_counter() - t0  # distillation only; the shared fit is reported once
            x, _, _ = generator_samples(run_dir, args.n, seed=0, device="cpu")
            rows.append({"teacher": teacher, "sampler": f"{name}, 1 step", "nfe": 1, "wall_time_s": wall,
                         "kimg": summary["images_seen"] / 1000, "fit_time_s": fit_s, **score(x, teacher)})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "mode_weights"}), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"n": args.n, "sets": args.sets, "torch": torch.__version__, "machine": platform.machine(),
            "threads": torch.get_num_threads(), "reference_seed": REFERENCE_SEED}
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# One-step generators vs the teacher's Heun sampler ({args.n} samples each)", "",
             f"torch {meta['torch']}, {meta['threads']} CPU threads, overrides: {args.sets or 'none'}", "",
             "Wall time: sampling for the teacher rows; distillation for the one-step rows (the MLP fit to the",
             "teacher, shared by all methods, is listed once in the JSON as fit_time_s).", "",
             "| teacher | sampler | NFE | mode-weight L1 | precision | MMD^2 | SW2 | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['wall_time_s']:.0f}" if r["wall_time_s"] is not None else "-"
        lines.append(f"| {r['teacher']} | {r['sampler']} | {r['nfe'] or '-'} | {r['mode_weight_l1']:.3f} | "
                     f"{r['precision']:.3f} | {r['mmd']:.2e} | {r['sw2']:.3f} | {wall} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
