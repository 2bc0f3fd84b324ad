"""The memory plan of `simcli distill --dry-run --json` against the peak memory of real CPU runs (issue 18).

For each configuration it runs two commands in subprocesses:

- `simcli distill --dry-run --json ...` and reads the plan's per-process parts (teacher, copies, gradients,
  optimizer, activations; simcli/distill/memory_plan.py);
- the same `simcli distill ... --steps 3 --precision fp32 --device cpu --json` for real, with PYTHONUNBUFFERED, while
  a thread reads its stderr line by line and reads /proc/PID/status VmHWM (the peak resident set so far) the moment
  the line "done 100%" (the end of the last training iteration) arrives: that is the peak of setup + training. After
  it exits, os.wait4 gives its own ru_maxrss (the whole process: also the final evaluation and the saving).

What is subtracted: the same two numbers of a baseline run, the same command with the networks made tiny (MLP
hidden_dim 16, 2 layers; or the same diffusers pipeline with a 1-layer, 16-wide transformer) and everything else
equal: the interpreter, torch, simcli and diffusers imports, the analytic teacher and the fit's data, the text
encoders, the prompt embeddings, the VAE, the evaluation's samples, torch's thread pools and allocator arenas. The
plan of the baseline (a few MiB) is subtracted from the plan too, so the ratio is
(peak - peak_baseline) / (plan - plan_baseline), with the training peak (VmHWM at "done") as the measured peak.

Mixture teachers are fitted for 1 step (teacher_fit.steps=1): the fit's own peak (one network, its gradients and
Adam, 4 weights) is below the distillation's (9 weights), so it does not set the peak. The diffusers pipeline is a
PixArt-Sigma pipeline of tests/helpers/tiny_pipelines.py whose transformer is replaced by a larger one (PIXART
below), saved with save_pretrained into a temporary folder.

glibc's malloc runs with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_, see MMAP_THRESHOLD): with its default,
dynamic threshold, blocks of activation size freed during a pass stay in the heap and in the resident set, which
then counts memory no tensor holds any more (benchmarks/sharding_memory.py has the numbers); the plan counts live
tensors, as CUDA's max_memory_allocated does. `--default-malloc` measures with glibc's default instead.

    .venv/bin/python benchmarks/memory_plan_check.py
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30
PARTS = ("teacher", "copies", "gradients", "optimizer", "activations")
MMAP_THRESHOLD = "65536"
"""Allocations from 64 KiB up are mmapped, so that freeing them returns them to the system (glibc)."""
COMMON = ["--steps", "3", "--precision", "fp32", "--device", "cpu", "--threads", "2", "--seed", "0"]
PIXART = {"num_layers": 8, "attention_head_dim": 64, "num_attention_heads": 8, "cross_attention_dim": 512,
          "sample_size": 16}
"""The larger transformer: 8 blocks of width 512 on 16 x 16 latents (64 tokens of patch 2)."""
PIXART_TINY = {"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2, "cross_attention_dim": 16,
               "sample_size": 16}
PROMPTS = ["a photo of a cat", "a red car in the city", "a painting of a mountain at sunset",
           "a small bird on a tree", "a portrait of a woman", "a white horse in the water"]


def write_pixart(path: Path, transformer: dict) -> Path:
    """The tiny PixArt-Sigma pipeline with its transformer replaced by one of `transformer`'s sizes."""
    sys.path.insert(0, str(ROOT))
    import diffusers
    import torch
    from diffusers import PixArtTransformer2DModel

    from tests.helpers.tiny_pipelines import tiny_components

    components = tiny_components("pixart-sigma")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        components["transformer"] = PixArtTransformer2DModel(
            patch_size=2, caption_channels=32, in_channels=4, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, **transformer).eval()
    diffusers.PixArtSigmaPipeline(**components).save_pretrained(path)
    return path


def simcli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "simcli", "distill", *args]


def plan(args: list[str]) -> dict:
    """The dry run's memory plan of `args`."""
    out = subprocess.run(simcli([*args, "--dry-run", "--json"]), capture_output=True, text=True, check=True,
                         cwd=ROOT)
    return json.loads(out.stdout)["memory"]


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def measure(args: list[str], out: Path) -> dict:
    """Run `args` for real; the peak resident set at the end of training (VmHWM at "done 100%") and of the whole
    process (ru_maxrss), in bytes, and the wall time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    start = time.monotonic()
    proc = subprocess.Popen(simcli([*args, "--out", str(out), "--json"]), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    seen: dict[str, int] = {}
    tail: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            tail.append(line)
            del tail[:-20]
            if "starting at iteration" in line and "setup" not in seen:
                seen["setup"] = hwm_kib(proc.pid) * 1024
            if " done 100%" in line and "training" not in seen:
                seen["training"] = hwm_kib(proc.pid) * 1024

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or "training" not in seen:
        raise RuntimeError(f"{shlex.join(args)} failed ({proc.returncode}):\n{''.join(tail)}")
    return {"setup_peak": seen["setup"], "training_peak": seen["training"], "process_peak": usage.ru_maxrss * 1024,
            "wall_s": round(time.monotonic() - start, 1)}


def check(name: str, args: list[str], baseline: dict, tmp: Path) -> dict:
    planned = plan(args)
    measured = measure(args, tmp / name)
    gib = planned["per_process_gib"]
    plan_delta = gib["total"] - baseline["plan"]["per_process_gib"]["total"]
    train_delta = (measured["training_peak"] - baseline["measured"]["training_peak"]) / GIB
    process_delta = (measured["process_peak"] - baseline["measured"]["process_peak"]) / GIB
    row = {"configuration": name, "args": args, "plan": planned, "measured": measured,
           "planned_gib": plan_delta, "measured_training_gib": train_delta, "measured_process_gib": process_delta,
           "ratio": train_delta / plan_delta, "ratio_process": process_delta / plan_delta}
    print(f"{name}: plan {plan_delta:.3f} GiB, measured {train_delta:.3f} GiB (process {process_delta:.3f}), "
          f"ratio {row['ratio']:.3f}", flush=True)
    return row


def group(name: str, base_args: list[str], configs: list[tuple[str, list[str]]], tmp: Path) -> dict:
    baseline = {"args": base_args, "plan": plan(base_args), "measured": measure(base_args, tmp / f"{name}-base")}
    m = baseline["measured"]
    print(f"{name} baseline: training peak {m['training_peak'] / GIB:.3f} GiB, process {m['process_peak'] / GIB:.3f}",
          flush=True)
    return {"baseline": baseline, "rows": [check(n, a, baseline, tmp) for n, a in configs]}


def mlp_groups(tmp: Path) -> dict:
    def mlp(hidden: int, layers: int, batch: int = 256, *extra: str) -> list[str]:
        return ["--teacher", "gmm-ring8", *COMMON, "--set", "teacher_fit.steps=1", "--batch-size", str(batch),
                "--set", f"network.hidden_dim={hidden}", "--set", f"network.num_layers={layers}", *extra]

    configs = [("mlp 2048x8, micro-batch 256", mlp(2048, 8)),
               ("mlp 2048x8, micro-batch 64", mlp(2048, 8, 256, "--batch-gpu", "64")),
               ("mlp 4096x8, micro-batch 256", mlp(4096, 8)),
               ("mlp 1024x4, micro-batch 4096", mlp(1024, 4, 4096))]
    return group("mlp", mlp(16, 2), configs, tmp)


def pixart_groups(tmp: Path) -> dict:
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    big, tiny = write_pixart(tmp / "pixart-big", PIXART), write_pixart(tmp / "pixart-tiny", PIXART_TINY)

    def args(path: Path, *extra: str) -> list[str]:
        return ["--teacher", f"diffusers:{path}", "--prompts", str(prompts), *COMMON, "--batch-size", "8", *extra]

    off, on = ("--set", "training.activation_checkpointing=false"), ("--set", "training.activation_checkpointing=true")
    configs = [("pixart 8x512, micro-batch 8", args(big, *off)),
               ("pixart 8x512, micro-batch 4", args(big, "--batch-gpu", "4", *off)),
               ("pixart 8x512, micro-batch 8, checkpointing", args(big, *on)),
               ("pixart 8x512, micro-batch 4, checkpointing", args(big, "--batch-gpu", "4", *on))]
    return group("pixart", args(tiny, *off), configs, tmp)


def gib_cell(x: float) -> str:
    return f"{x:.3f}"


def write(results: dict, command: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_plan_check.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Memory plan vs measured peak RSS (CPU, fp32, 3 steps)", "", f"    {command}", "",
             "Planned: the per-process total of `--dry-run --json` minus the baseline's plan; the parts as planned.",
             "Measured: VmHWM at the end of training (\"done 100%\") minus the baseline run's; the whole-process "
             "columns use ru_maxrss (also the final evaluation and the saving). Baseline: the same command with "
             "tiny networks (module docstring of benchmarks/memory_plan_check.py). Every run with "
             f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (freed activation-sized blocks leave the resident set).", ""]
    for name, g in results["groups"].items():
        b = g["baseline"]
        lines.append(f"- {name} baseline: `{shlex.join(b['args'])}`: training peak "
                     f"{b['measured']['training_peak'] / GIB:.3f} GiB, whole process "
                     f"{b['measured']['process_peak'] / GIB:.3f} GiB, planned "
                     f"{b['plan']['per_process_gib']['total']:.4f} GiB")
    lines += ["", "| configuration | planned GiB | teacher | copies | gradients | optimizer | activations "
              "| measured GiB (training) | ratio | measured GiB (whole process) | ratio | wall s |",
              "|" + "---|" * 12]
    for g in results["groups"].values():
        for r in g["rows"]:
            p = r["plan"]["per_process_gib"]
            lines.append(f"| {r['configuration']} | {gib_cell(r['planned_gib'])} | "
                         + " | ".join(gib_cell(p[k]) for k in PARTS)
                         + f" | {gib_cell(r['measured_training_gib'])} | {r['ratio']:.3f} | "
                         f"{gib_cell(r['measured_process_gib'])} | {r['ratio_process']:.3f} | "
                         f"{r['measured']['wall_s']} |")
    (RESULTS / "memory_plan_check.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    which = sys.argv[1:] or ["mlp", "pixart"]
    command = shlex.join([".venv/bin/python", "benchmarks/memory_plan_check.py", *sys.argv[1:]])
    results: dict = {"command": command, "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                                     "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}, "groups": {}}
    with tempfile.TemporaryDirectory(prefix="memory-plan-") as tmp:
        for name in which:
            results["groups"][name] = {"mlp": mlp_groups, "pixart": pixart_groups}[name](Path(tmp))
    write(results, command)


if __name__ == "__main__":
    main()
