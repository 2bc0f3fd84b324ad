"""Peak memory per process with and without sharding, and with LoRA, against the memory plan (issue 18).

The network: EDM's DDPM++ at CIFAR-10's configuration (55.7M parameters, the `edm-cifar10` record of simcli's catalog)
with random weights, saved as a simcli teacher file. Configurations, each 3 iterations on the CPU in fp32:

- whole networks, 1 process;
- whole networks, 2 processes (torchrun, gloo): each process holds everything;
- --sharding fsdp, 2 processes: each process a half;
- --lora-rank 8 and 64, 1 process: one teacher and the adapters.

Each process's peak resident set (VmHWM of /proc/PID/status, polled while it runs; the workers of torchrun are found as
its children) minus a baseline's, against the plan of `simcli distill --dry-run --json --processes N` minus the
baseline's plan. The baseline is the same command with a tiny DDPM++ (channels 16, one block per resolution): the
interpreter, torch and simcli, the gloo group and the evaluation-free run's fixed costs.

The runs use glibc's malloc with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=65536): with its default, dynamic
threshold, blocks of activation size freed during a pass stay in the heap and in the resident set, so the peak
resident set counts memory no tensor holds any more (on the DDPM++ at micro-batch 4 the three passes of a generator
update grew the resident set by 1.78 GiB with the default and by 1.52 with the fixed threshold, against 1.39 GiB of
tensors the plan counts). The plan counts live tensors, as CUDA's max_memory_allocated does.

    .venv/bin/python benchmarks/sharding_memory.py        # about 10 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30
COMMON = ["--preset", "tiny", "--steps", "3", "--batch-size", "8", "--batch-gpu", "4", "--precision", "fp32",
          "--device", "cpu", "--set", "logging.grid_samples=0", "--set", "logging.snapshot_every_kimg=1000"]


def write_teacher(path: Path, tiny: bool) -> Path:
    """A DDPM++ (CIFAR-10's configuration, or a tiny one) with random weights as a simcli teacher file."""
    sys.path.insert(0, str(ROOT))
    from simcli.nets.registry import build_network
    from simcli.rundir.network_file import TEACHER_FORMAT, save_network_file
    from simcli.teachers.edm_catalog import edm_network_record, get_edm_teacher

    record = edm_network_record(get_edm_teacher("edm-cifar10"))
    if tiny:
        kwargs = {**record["init_kwargs"], "model_channels": 16, "channel_mult": [1, 1], "num_blocks": 1,
                  "attn_resolutions": [16]}
        record = {**record, "init_kwargs": kwargs}
    net = build_network(record)
    save_network_file(path, net.state_dict(), {"architecture": record}, TEACHER_FORMAT)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(processes: int, args: list[str]) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "simcli", "distill", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            str(free_port()), "-m", "simcli", "distill", *args]


def plan(processes: int, args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "simcli", "distill", *args, "--dry-run", "--json", "--processes",
                          str(processes)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)["memory"]


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out += [int(c) for c in children]
        todo += [int(c) for c in children]
    return out


def hwm(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("VmHWM:")), None)


def measure(processes: int, args: list[str], out: Path) -> dict:
    """Run it; the largest peak resident set among its training processes (the workers under torchrun), bytes: at
    the end of training (when rank 0 says "done 100%", before the final snapshot, which the plan does not model:
    writing the generator file holds a second copy of the EMA generator's bytes, gathered first when sharded) and
    over the whole run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    start = time.monotonic()
    log = out.with_name(out.name + ".log")
    with open(log, "w") as err:  # a file, not a pipe: nothing blocks the run while it is polled
        proc = subprocess.Popen(command(processes, [*args, "--out", str(out), "--threads", "1"]), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    peaks: dict[int, int] = {}
    training: list[int] | None = None
    while proc.poll() is None:
        if training is None and " done 100%" in log.read_text():
            training = sorted(peaks.values(), reverse=True)[:processes]
        for pid in [proc.pid] if processes == 1 else descendants(proc.pid):
            value = hwm(pid)
            if value is not None:
                peaks[pid] = max(peaks.get(pid, 0), value)
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    workers = sorted(peaks.values(), reverse=True)[:processes]
    if training is None:
        raise RuntimeError(f"{args}: no 'done 100%' line in {log}")
    return {"peak": max(training), "peaks": training, "process_peak": max(workers), "process_peaks": workers,
            "wall_s": round(time.monotonic() - start, 1)}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sharding-memory-") as tmp_name:
        tmp = Path(tmp_name)
        big, tiny = write_teacher(tmp / "ddpmpp.safetensors", False), write_teacher(tmp / "tiny.safetensors", True)
        configs = [("whole, 1 process", 1, []), ("whole, 2 processes", 2, []),
                   ("--sharding fsdp, 2 processes", 2, ["--sharding", "fsdp"]),
                   ("--lora-rank 8, 1 process", 1, ["--lora-rank", "8"]),
                   ("--lora-rank 64, 1 process", 1, ["--lora-rank", "64"])]
        baselines: dict[tuple, dict] = {}
        for name, processes, extra in configs:
            key = (processes, tuple(extra))
            if key not in baselines:
                base = ["--teacher", str(tiny), *COMMON, *extra]
                baselines[key] = {"plan": plan(processes, base), "measured": measure(processes, base, tmp / f"b{len(baselines)}")}
            args = ["--teacher", str(big), *COMMON, *extra]
            planned, measured = plan(processes, args), measure(processes, args, tmp / f"r{len(rows)}")
            b = baselines[key]
            plan_gib = planned["per_process_gib"]["total"] - b["plan"]["per_process_gib"]["total"]
            measured_gib = (measured["peak"] - b["measured"]["peak"]) / GIB
            whole_run_gib = (measured["process_peak"] - b["measured"]["process_peak"]) / GIB
            rows.append({"configuration": name, "processes": processes, "plan": planned, "measured": measured,
                         "baseline": b, "planned_gib": plan_gib, "measured_gib": measured_gib,
                         "ratio": measured_gib / plan_gib, "whole_run_gib": whole_run_gib})
            print(f"{name}: planned {plan_gib:.3f} GiB, measured {measured_gib:.3f} GiB, ratio {rows[-1]['ratio']:.3f}",
                  flush=True)
    write(rows)


def write(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sharding_memory.json").write_text(json.dumps(rows, indent=2) + "\n")
    parts = ("teacher", "copies", "gradients", "optimizer", "gathered", "activations")
    lines = ["# Peak memory per process: sharding and LoRA against the memory plan (CPU, fp32, 3 iterations)", "",
             "    .venv/bin/python benchmarks/sharding_memory.py", "",
             "DDPM++ at CIFAR-10's configuration (55.7M parameters, random weights). Planned: the per-process total of "
             "`--dry-run --json --processes N` minus the baseline's plan. Measured: the largest peak resident set "
             "(VmHWM) among the run's training processes minus the baseline run's (the same command with a tiny DDPM++; "
             "module docstring of benchmarks/sharding_memory.py). Training: at rank 0's 'done 100%', before the "
             "final snapshot; whole run: also the final snapshot (the generator file's bytes, gathered first when "
             "sharded).", "",
             "| configuration | planned GiB | " + " | ".join(parts)
             + " | measured GiB (training) | ratio | peaks (GiB, each process) | measured GiB (whole run) | wall s |",
             "|---|---|" + "---|" * len(parts) + "---|---|---|---|---|"]
    for r in rows:
        gib = r["plan"]["per_process_gib"]
        peaks = ", ".join(f"{p / GIB:.2f}" for p in r["measured"]["peaks"])
        lines.append(f"| {r['configuration']} | {r['planned_gib']:.3f} | " + " | ".join(f"{gib[p]:.3f}" for p in parts)
                     + f" | {r['measured_gib']:.3f} | {r['ratio']:.3f} | {peaks} | {r['whole_run_gib']:.3f}"
                     f" | {r['measured']['wall_s']} |")
    load = os.getloadavg()
    lines += ["", f"Load average when written: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores."]
    (RESULTS / "sharding_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
