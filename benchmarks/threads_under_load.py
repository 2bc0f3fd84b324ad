"""Seconds per kimg of the quick-start run (digits teacher, SIM) on a CPU that other processes keep busy.

The question it answers: which CPU thread setting should simcli use by default so that a run degrades gracefully
when the machine is shared? Each row runs `simcli distill --teacher digits` for a short, fixed duration in a
subprocess while LOAD busy-loop processes (pure Python `while True`) compete for the cores, and reports the median
sec/kimg of the run's status records (the first record, which holds the warm-up, is dropped).

Thread settings compared (SETTING names), each with torch's thread count (one per core) unless said:
  openmp-default  OMP_WAIT_POLICY empty: OpenMP's own default (libgomp: threads spin a while, then sleep); what
                  simcli used before it chose a wait policy
  active          OMP_WAIT_POLICY=ACTIVE (threads spin between parallel regions)
  passive         OMP_WAIT_POLICY=PASSIVE (threads sleep at once); simcli's default since it sets it
  one             --threads 1 (simcli's default wait policy)

    python benchmarks/threads_under_load.py --loads 0 2 6 --settings openmp-default active passive one
    python benchmarks/threads_under_load.py --loads 6 --settings openmp-default --append   # add rows to the file

Results go to benchmarks/results/threads_under_load.json and .md, with the machine's core count and its 1-minute
load average before each row (the busy-loops are on top of whatever else was running).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = ("openmp-default", "active", "passive", "one")
WAIT_POLICY = {"openmp-default": "", "active": "ACTIVE", "passive": "PASSIVE"}


def _command(run_dir: Path, kimg: float, setting: str) -> tuple[list[str], dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SIMCLI_THREADS")}
    args = [sys.executable, "-m", "simcli", "distill", "--teacher", "digits", "--out", str(run_dir), "--kimg", str(kimg),
            "--set", "logging.status_every_kimg=0.25", "--set", "logging.eval_every_kimg=1000",
            "--set", "logging.snapshot_every_kimg=1000", "--json"]
    if setting == "one":
        args += ["--threads", "1"]
    elif setting in WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = WAIT_POLICY[setting]
    else:
        raise SystemExit(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    return args, env


def _busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def run_row(load: int, setting: str, kimg: float) -> dict:
    loops = _busy_loops(load)
    try:
        time.sleep(2.0 if load else 0.0)
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            args, env = _command(run_dir, kimg, setting)
            started = time.perf_counter()
            proc = subprocess.run(args, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                return {"load": load, "setting": setting, "error": proc.stderr.strip().splitlines()[-1:]}
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            rates = [r["sec_per_kimg"] for r in records if r.get("sec_per_kimg") is not None][1:]
            threads = next((r.get("cpu_threads") for r in records if r.get("cpu_threads") is not None), None)
    finally:
        for p in loops:
            p.kill()
            p.wait()
    return {"load": load, "setting": setting, "sec_per_kimg": statistics.median(rates) if rates else None,
            "records": len(rates), "wall_s": round(wall, 1), "load_avg_1min_before": round(load_before, 2),
            "threads_recorded": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 2, 6])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--kimg", type=float, default=1.5)
    parser.add_argument("--out", default="threads_under_load")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in the results file")
    opts = parser.parse_args()
    rows = []
    if opts.append and (RESULTS / f"{opts.out}.json").is_file():
        rows = json.loads((RESULTS / f"{opts.out}.json").read_text())["rows"]
    for load in opts.loads:
        for setting in opts.settings:
            row = {**run_row(load, setting, opts.kimg), "kimg": opts.kimg}
            print(json.dumps(row), flush=True)
            rows.append(row)
    import torch

    machine = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "torch": torch.__version__}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{opts.out}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    lines = ["# sec/kimg of the digits quick-start run under competing busy-loops", "",
             f"{machine['cores']} cores, torch {machine['torch']}; `python benchmarks/threads_under_load.py --loads L "
             "--settings S --kimg K` (see the module docstring for the settings). The load average before a row "
             "includes whatever else ran on the machine then.", "",
             "| busy-loops | setting | threads | sec/kimg (median) | load avg before |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["load"], SETTINGS.index(r["setting"]))):
        rate = "error: " + " ".join(r["error"]) if "error" in r else f"{r['sec_per_kimg']:.1f}"
        lines.append(f"| {r['load']} | {r['setting']} | {r.get('threads_recorded') or '-'} | {rate} | "
                     f"{r.get('load_avg_1min_before', '-')} |")
    (RESULTS / f"{opts.out}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
