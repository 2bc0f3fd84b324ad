"""Seconds per SIM iteration and peak memory for the full CIFAR-10 DDPM++ (55.7 M parameters).

One iteration = one online update + one generator update (SIM, pseudo-Huber), teacher, generator and
online model all full size, random weights (speed does not depend on them). Writes
benchmarks/results/edm_iteration.{json,md}; on a GPU it also reports sec/kimg.

    python benchmarks/edm_iteration.py --device cpu --batch 2 4 --iterations 3
    python benchmarks/edm_iteration.py --device cuda --batch 64 256 --iterations 10 [--checkpointing]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import time
from pathlib import Path

import torch

from simcli.config.spec import LognormalNoise, LossSpec
from simcli.distill.steps import BatchPlan, generator_update, make_generator_loss, online_update
from simcli.nets.registry import build_edm_network

CIFAR10_UNCOND = {
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
    "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 128, "channel_mult": [2, 2, 2],
    "augment_dim": 9, "dropout": 0.13, "use_fp16": False, "img_resolution": 32, "img_channels": 3, "label_dim": 0,
}


def measure(batch: int, iterations: int, device: torch.device, checkpointing: bool, rounds: int) -> dict:
    torch.manual_seed(0)
    teacher = build_edm_network("EDMPrecond", CIFAR10_UNCOND).to(device).eval().requires_grad_(False)
    generator, online = copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher)
    if checkpointing:
        for net in (teacher, generator, online):
            net.set_activation_checkpointing(True)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-5, betas=(0.0, 0.999))
    opt_o = torch.optim.Adam(online.parameters(), lr=1e-5, betas=(0.0, 0.999))
    plan = BatchPlan(2.5, batch, rounds, (3, 32, 32), 0, device)
    loss_fn = make_generator_loss(LossSpec(), "none", 3 * 32 * 32)
    noise_online, noise_gen = LognormalNoise(p_mean=-1.2, p_std=1.2), LognormalNoise(p_mean=-3.5, p_std=2.5)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(iterations + 1):  # the first iteration warms up (allocations, kernels) and is not timed
        rng = torch.Generator(device=device).manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        online_update(generator, online, opt_o, plan, noise_online, rng)
        generator_update(generator, online, teacher, opt_g, loss_fn, plan, noise_gen, rng)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    row = {
        "batch": batch, "rounds": rounds, "activation_checkpointing": checkpointing, "iterations_timed": iterations,
        "sec_per_iteration_median": sec, "sec_per_kimg": sec * 1000 / batch,
        "cpu_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if device.type == "cuda":
        row["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=1, help="gradient-accumulation rounds per iteration")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "edm_iteration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(b, args.iterations, device, args.checkpointing, args.rounds) for b in args.batch]
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# SIM iteration, full CIFAR-10 DDPM++ ({meta['device']}, torch {meta['torch']}, {meta['threads']} threads)",
             "", "| batch | checkpointing | sec/iteration | sec/kimg | peak CPU RSS (GiB) | peak GPU (GiB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gpu = f"{r['gpu_peak_allocated_gib']:.2f}" if "gpu_peak_allocated_gib" in r else "-"
        lines.append(f"| {r['batch']} | {r['activation_checkpointing']} | {r['sec_per_iteration_median']:.2f} | "
                     f"{r['sec_per_kimg']:.0f} | {r['cpu_peak_rss_gib']:.2f} | {gpu} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
