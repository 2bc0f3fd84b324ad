"""Speed, memory and engine overhead of one distillation iteration (SIM, pseudo-Huber) for a teacher architecture.

For each configuration (architecture x batch x precision x compile x checkpointing x channels-last x sample
source) it reports seconds per iteration and per kimg, peak memory, and the overhead ratio: the time of one
simcli iteration (exactly what simcli.distill.loop.Distillation.iteration runs: online update, generator update,
EMA) divided by the time of the same network passes in a minimal hand-written plain-torch loop.

The minimal loop does only the necessary work: online step = generator forward under no_grad (none with
--sample-source generator-step) + online forward/backward on x = x0 + sigma eps (DSM loss, EDM weight) + Adam;
generator step = generator forward/backward, online model and teacher forward on the noisy x with the gradient
reaching the input (their parameters frozen), the SIM pseudo-Huber loss -d'(y).(D_psi - x0) with
d'(y) = y / sqrt(|y|^2 + c^2), y = D_psi - D_phi (weighting none, as simcli's default), backward, Adam; then the
EMA as one foreach lerp. Random numbers come from torch.randn on the global generator; fp16 uses
torch.amp.GradScaler. It has no per-micro-batch random streams, no loss .item(), no finite check.

Both loops use the same network objects, the same Adam optimisers, the same precision (autocast, TF32 switches),
the same options (activation checkpointing, channels-last, torch.compile) and the same micro-batches. They
alternate (simcli, minimal, simcli, minimal, ...) so that drift in the machine's speed hits both; warm-up
iterations (more with --compile) are not timed; times are medians (on CUDA synchronised around each iteration).
Peak memory: CUDA, torch.cuda.max_memory_allocated over the timed iterations of each loop; CPU, the process's
peak resident set (ru_maxrss), which only grows, so a row shows the peak of all rows run so far in the process.
The 1-minute load average before and after each row shows whether the machine was busy.

Results go to benchmarks/results/NAME.json (one document: "machine" and "rows") and NAME.md (a table and the
command); NAME defaults to bench_distill-<arch>-<device>. A configuration that fails (e.g. torch.compile without
a C compiler) is reported as a row with its error instead of stopping the sweep.

--breakdown also times, on their own, the pieces of simcli's iteration that the minimal loop does not have or does
differently (random streams, the gradients' finite check, the EMA, the train/eval and requires_grad switches), in
ms per iteration, to tell where an overhead comes from.

CPU:

    python benchmarks/bench_distill.py --arch tiny --batch 32 --precision fp32 bf16 --iterations 20
    python benchmarks/bench_distill.py --arch tiny --batch 32 --sample-source fresh generator-step --iterations 20
    python benchmarks/bench_distill.py --arch ddpmpp --batch 4 --precision fp32 bf16 --iterations 3 --breakdown
    python benchmarks/bench_distill.py --arch tiny --batch 32 --compile off on --iterations 20

GPU (full CIFAR-10 DDPM++, batch 256 in one micro-batch and in micro-batches of 64):

    python benchmarks/bench_distill.py --arch ddpmpp --device cuda --batch 256 --iterations 10 \\
        --precision fp32 tf32 bf16 --compile off on --checkpointing off on --breakdown
    python benchmarks/bench_distill.py --arch ddpmpp --device cuda --batch 256 --batch-gpu 64 --iterations 10 \\
        --precision bf16 --channels-last off on --sample-source fresh generator-step --out bench_distill-ddpmpp-cuda-b64
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simcli.config.spec import EMASpec, LognormalNoise, LossSpec, OptimizerSpec
from simcli.distill.batches import BatchPlan
from simcli.distill.distances import default_pseudo_huber_c
from simcli.distill.ema import ema_beta, update_ema
from simcli.distill.precision import LossScaler, Precision
from simcli.distill.setup import Networks, speed_up_networks
from simcli.distill.steps import (
    Context,
    Samples,
    generator_update,
    grads_are_finite,
    make_generator_loss,
    online_update,
)
from simcli.distill.streams import IterationStreams, online_phase
from simcli.nets.registry import build_edm_network
from simcli.world import World

RESULTS = Path(__file__).resolve().parent / "results"

CIFAR10_DDPMPP = {
    "model_type": "SongUNet", "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
    "channel_mult_noise": 1, "resample_filter": [1, 1], "model_channels": 128, "channel_mult": [2, 2, 2],
    "augment_dim": 9, "dropout": 0.13, "use_fp16": False, "img_resolution": 32, "img_channels": 3, "label_dim": 0,
}
"""EDM's CIFAR-10 unconditional DDPM++ (55.7 M parameters, 32x32)."""

TINY_DDPMPP = {
    **CIFAR10_DDPMPP, "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
    "img_resolution": 8,
}
"""The tests' tiny DDPM++ (8x8, 16 channels; tests/helpers/tiny_edm.py)."""

EDM2_IMG512_XS = {"img_resolution": 64, "img_channels": 4, "label_dim": 1000, "model_channels": 128, "dropout": 0.0}
"""EDM2-XS of ImageNet-512 (124.7 M parameters) on its 4 x 64 x 64 SD VAE latents, as its pickles record it."""

EDM2_TINY = {**EDM2_IMG512_XS, "img_resolution": 8, "label_dim": 10, "model_channels": 16, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4], "channels_per_head": 8}
"""The tests' tiny EDM2 network (tests/helpers/edm2_pickle_writer.py)."""

ARCHITECTURES = {"tiny": TINY_DDPMPP, "ddpmpp": CIFAR10_DDPMPP}
EDM2_ARCHITECTURES = {"edm2-xs": EDM2_IMG512_XS, "edm2-tiny": EDM2_TINY}
ARCH_CHOICES = ("tiny", "ddpmpp", "digits", *EDM2_ARCHITECTURES)
"""digits: simcli's shipped 8x8 class-conditional teacher (its real weights); edm2-*: EDM2's Precond (random weights)."""

SIGMA_INIT = 2.5
ONLINE_NOISE = LognormalNoise(p_mean=-1.2, p_std=1.2)
GENERATOR_NOISE = LognormalNoise(p_mean=-3.5, p_std=2.5)
SIGMA_DATA = 0.5
OPTIMIZER = OptimizerSpec()
EMA = EMASpec()
WARMUP = 2
WARMUP_COMPILE = 5


def build_teacher(arch: str) -> nn.Module:
    """The teacher network of an architecture (random weights, seeded, except digits), on the CPU."""
    if arch == "digits":
        from simcli.teachers.registry import load_teacher

        return load_teacher("digits").denoiser
    torch.manual_seed(0)
    if arch in EDM2_ARCHITECTURES:
        return build_edm_network("Precond", EDM2_ARCHITECTURES[arch])
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; one of {', '.join(ARCH_CHOICES)}")
    return build_edm_network("EDMPrecond", ARCHITECTURES[arch])


@dataclass
class Setup:
    """The networks, optimisers and settings both loops share."""

    teacher: nn.Module
    generator: nn.Module
    online: nn.Module
    ema: nn.Module
    opt_gen: torch.optim.Optimizer
    opt_online: torch.optim.Optimizer
    plan: BatchPlan
    precision: Precision
    scaled: bool
    reuse: bool
    loss_fn: Callable[..., torch.Tensor]
    seed: int = 0
    scalers: dict[str, LossScaler] = field(default_factory=dict)
    grad_scaler: Any = None
    step_simcli: int = 0
    step_minimal: int = 0


def make_setup(arch: str, batch: int, batch_gpu: int | None, device: torch.device, precision: str, compile: bool,
               checkpointing: bool, channels_last: bool, sample_source: str, seed: int = 0) -> Setup:
    """Teacher, generator, online model and EMA as simcli.distill.setup.build_networks makes them, with the
    run's precision and speed options applied in the order Distillation applies them."""
    teacher = build_teacher(arch).to(device).eval().requires_grad_(False)
    generator = copy.deepcopy(teacher).requires_grad_(True)
    online = copy.deepcopy(teacher).requires_grad_(False)
    ema = copy.deepcopy(teacher).requires_grad_(False)
    if checkpointing:
        for net in (teacher, generator, online):
            net.set_activation_checkpointing(True)
    o = OPTIMIZER
    opts = [torch.optim.Adam(net.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
            for net in (generator, online)]
    plan = BatchPlan(SIGMA_INIT, batch, batch_gpu or batch, tuple(teacher.sample_shape), teacher.label_dim, device)
    prec = Precision(precision, device)
    scaled = prec.adapt([teacher, generator, online, ema])
    if compile:
        torch._dynamo.reset()  # fresh networks: do not let earlier rows' compiled code use up the recompile limit
    nets = Networks(teacher, generator, online, ema, architecture={})
    speed_up_networks(nets, channels_last=channels_last, compile=compile)
    loss_fn = make_generator_loss(LossSpec(), "none", _numel(plan.sample_shape))
    s = Setup(teacher, generator, online, ema, opts[0], opts[1], plan, prec, scaled, sample_source == "generator-step",
              loss_fn, seed)
    s.scalers = {name: LossScaler(enabled=scaled) for name in ("generator", "online")}
    s.grad_scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    return s


# ---------------------------------------------------------------------------------------------------- simcli

def simcli_iteration(s: Setup) -> None:
    """One iteration exactly as simcli.distill.loop.Distillation.iteration runs it (SIM, pseudo-Huber, one online
    update per generator update, no augmentation; the loop's bookkeeping of the losses left out)."""
    step, batch = s.step_simcli, s.plan.batch_size
    ctx = Context(s.plan, IterationStreams(s.seed, step, s.plan.device), World(), s.precision.autocast)
    kept: list[Samples] | None = [] if s.reuse else None
    def update_generator() -> tuple[float, bool]:
        return generator_update(s.generator, s.online, s.teacher, s.opt_gen, s.loss_fn, ctx, GENERATOR_NOISE,
                                scaler=s.scalers["generator"], keep_samples=kept)

    if s.reuse:
        update_generator()
    online_update(s.generator, s.online, s.opt_online, ctx, online_phase(0), ONLINE_NOISE,
                  scaler=s.scalers["online"], samples=kept)
    if not s.reuse:
        update_generator()
    s.step_simcli += 1
    update_ema(s.ema, s.generator, ema_beta(batch, step * batch, EMA.halflife_kimg, EMA.rampup_ratio))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# ---------------------------------------------------------------------------------------------------- minimal

def minimal_iteration(s: Setup) -> None:
    """The same network passes in plain torch, nothing else (see the module docstring)."""
    plan, gen, online, teacher = s.plan, s.generator, s.online, s.teacher
    n, m, dev, shape = plan.micro_batch, plan.micro_batches, plan.device, plan.sample_shape
    autocast, scaler = s.precision.autocast, s.grad_scaler
    c = default_pseudo_huber_c(_numel(shape))
    sigma_g = torch.full((n,), SIGMA_INIT, device=dev)

    def labels() -> torch.Tensor | None:
        if plan.label_dim == 0:
            return None
        return nn.functional.one_hot(torch.randint(plan.label_dim, (n,), device=dev), plan.label_dim).float()

    def lognormal(noise: LognormalNoise) -> torch.Tensor:
        return (noise.p_mean + noise.p_std * torch.randn(n, device=dev)).exp()

    def online_step(kept: list[tuple[torch.Tensor, torch.Tensor | None]] | None) -> None:
        gen.eval()
        online.train().requires_grad_(True)
        for k in range(m):
            if kept is None:
                z, lab = torch.randn((n, *shape), device=dev), labels()
                with torch.no_grad(), autocast():
                    x0 = gen(SIGMA_INIT * z, sigma_g, lab).float()
            else:
                x0, lab = kept[k]
            sigma = lognormal(ONLINE_NOISE)
            x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(x0)
            with autocast():
                denoised = online(x, sigma, lab).float()
            weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
            loss = (weight * (denoised - x0).pow(2).flatten(1).sum(1)).mean() / m
            scaler.scale(loss).backward()
        scaler.step(s.opt_online)
        scaler.update()
        s.opt_online.zero_grad(set_to_none=True)
        online.eval().requires_grad_(False)

    def generator_step(keep: list[tuple[torch.Tensor, torch.Tensor | None]] | None) -> None:
        gen.train()
        for _ in range(m):
            z, lab = torch.randn((n, *shape), device=dev), labels()
            with autocast():
                x0 = gen(SIGMA_INIT * z, sigma_g, lab).float()
            if keep is not None:
                keep.append((x0.detach(), lab))
            sigma = lognormal(GENERATOR_NOISE)
            x = x0 + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(x0)
            with autocast():
                on, te = online(x, sigma, lab).float(), teacher(x, sigma, lab).float()
            y = (on - te).flatten(1)
            d_prime = y / torch.sqrt(y.pow(2).sum(1, keepdim=True) + c**2)
            loss = -(d_prime * (on - x0).flatten(1)).sum(1).mean() / m
            scaler.scale(loss).backward()
        scaler.step(s.opt_gen)
        scaler.update()
        s.opt_gen.zero_grad(set_to_none=True)
        gen.eval()

    if s.reuse:
        kept: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        generator_step(kept)
        online_step(kept)
    else:
        online_step(None)
        generator_step(None)
    step, batch = s.step_minimal, plan.batch_size
    halflife = EMA.halflife_kimg * 1000
    if EMA.rampup_ratio is not None:
        halflife = min(halflife, EMA.rampup_ratio * step * batch)
    beta = 0.5 ** (batch / halflife) if halflife > 0 else 0.0
    with torch.no_grad():
        torch._foreach_lerp_(list(s.ema.parameters()), list(gen.parameters()), 1.0 - beta)
    s.step_minimal += 1


# ---------------------------------------------------------------------------------------------------- measuring

def _timed(fn: Callable[[Setup], None], s: Setup) -> tuple[float, float | None]:
    """(seconds, peak CUDA memory in GiB or None) of one call."""
    dev = s.plan.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    fn(s)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec = time.perf_counter() - t0
    return sec, (torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None)


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _median_ms(fn: Callable[[], object], dev: torch.device, reps: int) -> float:
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def simcli_parts(s: Setup, reps: int = 5) -> dict[str, float]:
    """Milliseconds per iteration of the work simcli's iteration does and the minimal loop does not (or does
    differently), each timed on its own on this row's networks: the random streams (two SeedSequence seeds, a
    torch.manual_seed and a new torch.Generator per micro-batch and update), the finite check of the gradients
    (one isfinite().all() per parameter, for both updates), the EMA (a copy_(lerp) per parameter and a copy per
    buffer; the minimal loop's foreach lerp for comparison), and the train/eval and requires_grad switches."""
    dev, plan = s.plan.device, s.plan
    streams = IterationStreams(s.seed, 0, dev)

    def begin_all() -> None:
        for phase in (0, 1):
            for k in range(plan.micro_batches):
                streams.begin(phase, k)

    nets = (s.generator, s.online)
    for net in nets:
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
    params = [list(net.parameters()) for net in nets]
    finite = _median_ms(lambda: [grads_are_finite(ps) for ps in params], dev, reps)
    for net in nets:
        for p in net.parameters():
            p.grad = None
    ema_params = list(s.ema.parameters())

    def foreach_lerp() -> None:
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params[0], 0.001)

    def switches() -> None:  # as online_update and generator_update switch them
        s.generator.eval()
        s.online.train().requires_grad_(True)
        s.online.eval().requires_grad_(False)
        s.online.train(False).requires_grad_(False)
        s.teacher.train(False).requires_grad_(False)
        s.generator.train().requires_grad_(True)
        s.generator.eval(), s.online.eval(), s.teacher.eval()

    parts = {
        "streams": _median_ms(begin_all, dev, reps),
        "finite_check": finite,
        "ema": _median_ms(lambda: update_ema(s.ema, s.generator, 0.999), dev, reps),
        "ema_foreach_lerp": _median_ms(foreach_lerp, dev, reps),
        "mode_switches": _median_ms(switches, dev, reps),
    }
    torch.manual_seed(s.seed)
    return parts


def config_row(arch: str, batch: int, batch_gpu: int | None, device: str, precision: str, compile: bool,
               checkpointing: bool, channels_last: bool, sample_source: str) -> dict[str, Any]:
    return {"arch": arch, "batch": batch, "batch_gpu": batch_gpu or batch, "precision": precision, "compile": compile,
            "checkpointing": checkpointing, "channels_last": channels_last, "sample_source": sample_source,
            "device": device}


def measure(arch: str = "tiny", batch: int = 32, *, batch_gpu: int | None = None, iterations: int = 10,
            warmup: int | None = None, device: str = "cpu", precision: str = "fp32", compile: bool = False,
            checkpointing: bool = False, channels_last: bool = False, sample_source: str = "fresh",
            seed: int = 0, breakdown: bool = False) -> dict[str, Any]:
    """Measure one configuration; returns its row. Raises when the configuration fails (see measure_or_error)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    warmup = (WARMUP_COMPILE if compile else WARMUP) if warmup is None else warmup
    row = config_row(arch, batch, batch_gpu, device, precision, compile, checkpointing, channels_last, sample_source)
    dev = torch.device(device)
    load_before, rss_before = _load1(), _peak_rss_gib()
    s = make_setup(arch, batch, batch_gpu, dev, precision, compile, checkpointing, channels_last, sample_source, seed)
    times: dict[str, list[float]] = {"simcli": [], "minimal": []}
    peaks: dict[str, list[float]] = {"simcli": [], "minimal": []}
    with s.precision.tf32():
        for i in range(warmup + iterations):
            for name, fn in (("simcli", simcli_iteration), ("minimal", minimal_iteration)):
                sec, peak = _timed(fn, s)
                if i >= warmup:
                    times[name].append(sec)
                    if peak is not None:
                        peaks[name].append(peak)
        parts = simcli_parts(s) if breakdown else None
    sec_s, sec_m = statistics.median(times["simcli"]), statistics.median(times["minimal"])
    row.update({
        "params": sum(p.numel() for p in s.generator.parameters()),
        "micro_batches": s.plan.micro_batches,
        "warmup": warmup,
        "iterations": iterations,
        "sec_per_iter_simcli": sec_s,
        "sec_per_iter_minimal": sec_m,
        "overhead_ratio": sec_s / sec_m,
        "overhead_ratio_paired_median": statistics.median(
            a / b for a, b in zip(times["simcli"], times["minimal"], strict=True)),
        "overhead_ratio_best": min(times["simcli"]) / min(times["minimal"]),
        "sec_per_kimg": sec_s * 1000 / batch,
        "sec_per_kimg_minimal": sec_m * 1000 / batch,
        "times_simcli": times["simcli"],
        "times_minimal": times["minimal"],
        "gpu_peak_gib_simcli": max(peaks["simcli"]) if peaks["simcli"] else None,
        "gpu_peak_gib_minimal": max(peaks["minimal"]) if peaks["minimal"] else None,
        "process_peak_rss_gib": _peak_rss_gib(),
        "process_peak_rss_growth_gib": _peak_rss_gib() - rss_before,
        "loss_scaling": s.scaled,
        "simcli_parts_ms": parts,
        "load1_before": load_before,
        "load1_after": _load1(),
        "error": None,
    })
    return row


def measure_or_error(**config: Any) -> dict[str, Any]:
    """measure(), or the configuration's row with the error (and no times) when it fails."""
    try:
        return measure(**config)
    except Exception as exc:  # reported in the row: one failing configuration must not end the sweep
        keys = ("arch", "batch", "batch_gpu", "device", "precision", "compile", "checkpointing", "channels_last",
                "sample_source")
        row = config_row(**{k: config[k] for k in keys})
        message = str(exc).strip().splitlines()
        row.update({"sec_per_iter_simcli": None, "sec_per_iter_minimal": None, "overhead_ratio": None,
                    "sec_per_kimg": None, "load1_after": _load1(),
                    "error": f"{type(exc).__name__}: {message[0][:300] if message else ''}"})
        return row
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    dev = torch.device(device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "load1_start": _load1(),
    }


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    where = m["gpu"] or m["cpu"]
    lines = [
        f"# One distillation iteration: simcli vs a minimal loop ({where}; torch {m['torch']}, {m['threads']} threads)",
        "",
        f"Run as `{doc['command']}`. Medians of the timed iterations (the two loops alternate); overhead = simcli / "
        "minimal (paired: median of the per-iteration ratios; best: fastest / fastest); sec/kimg is simcli's; "
        "peak memory is max_memory_allocated per loop on CUDA, the process's peak "
        f"RSS on the CPU (it only grows over the rows); load = 1-minute load average before -> after the row "
        f"(start {_fmt(m['load1_start'], '.2f')}, end {_fmt(m.get('load1_end'), '.2f')}).",
        "",
        "| arch | params (M) | batch | batch_gpu | precision | compile | ckpt | ch-last | samples | sec/iter simcli "
        "| sec/iter minimal | overhead | paired | best | sec/kimg | peak mem (GiB) | load | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if r.get("gpu_peak_gib_simcli") is not None:
            mem = f"{r['gpu_peak_gib_simcli']:.2f} / {r['gpu_peak_gib_minimal']:.2f} (GPU simcli / minimal)"
        else:
            mem = f"{_fmt(r.get('process_peak_rss_gib'), '.2f')} (process RSS)"
        params = _fmt(r.get("params") / 1e6 if r.get("params") else None, ".3g")
        lines.append(
            f"| {r['arch']} | {params} | {r['batch']} | {r['batch_gpu']} | {r['precision']} | {_on(r['compile'])} | "
            f"{_on(r['checkpointing'])} | {_on(r['channels_last'])} | {r['sample_source']} | "
            f"{_fmt(r['sec_per_iter_simcli'], '.4g')} | {_fmt(r['sec_per_iter_minimal'], '.4g')} | "
            f"{_fmt(r['overhead_ratio'], '.3f')} | {_fmt(r.get('overhead_ratio_paired_median'), '.3f')} | "
            f"{_fmt(r.get('overhead_ratio_best'), '.3f')} | {_fmt(r['sec_per_kimg'], '.4g')} | {mem} | "
            f"{_fmt(r.get('load1_before'), '.2f')} -> {_fmt(r.get('load1_after'), '.2f')} | {r['error'] or ''} |")
    parted = [r for r in doc["rows"] if r.get("simcli_parts_ms")]
    if parted:
        names = list(parted[0]["simcli_parts_ms"])
        lines += ["", "simcli's extra pieces, each timed on its own, ms per iteration (--breakdown): streams = a "
                  "torch.manual_seed, two SeedSequence seeds and a torch.Generator per micro-batch and update; "
                  "finite_check = isfinite().all() per gradient, both updates; ema = simcli's update_ema, "
                  "ema_foreach_lerp = the minimal loop's; mode_switches = the train/eval and requires_grad_ calls of "
                  "the two updates.", "",
                  "| batch | batch_gpu | precision | compile | ckpt | ch-last | samples | " + " | ".join(names) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(names)]
        for r in parted:
            lines.append(f"| {r['batch']} | {r['batch_gpu']} | {r['precision']} | {_on(r['compile'])} | "
                         f"{_on(r['checkpointing'])} | "
                         f"{_on(r['channels_last'])} | {r['sample_source']} | "
                         + " | ".join(f"{r['simcli_parts_ms'][k]:.3g}" for k in names) + " |")
    return "\n".join(lines) + "\n"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def out_base(name: str) -> Path:
    """--out NAME: benchmarks/results/NAME; a NAME with a directory part is used as the path itself."""
    path = Path(name)
    base = path if path.is_absolute() or path.parent != Path(".") else RESULTS / path
    return base.with_suffix("") if base.suffix in (".json", ".md") else base


def with_ext(base: Path, ext: str) -> Path:
    return base.parent / (base.name + ext)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    onoff = {"choices": ("off", "on"), "nargs": "+"}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=ARCH_CHOICES, default="tiny")
    p.add_argument("--batch", type=int, nargs="+", default=[32], help="batch sizes (images per update)")
    p.add_argument("--batch-gpu", type=int, default=None, help="micro-batch (default: the whole batch)")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations of each loop")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed iterations of each loop (default {WARMUP}, {WARMUP_COMPILE} with --compile on)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", nargs="+", choices=("fp32", "tf32", "bf16", "fp16"), default=["fp32"])
    p.add_argument("--compile", default=["off"], **onoff)
    p.add_argument("--checkpointing", default=["off"], **onoff)
    p.add_argument("--channels-last", default=["off"], **onoff)
    p.add_argument("--sample-source", nargs="+", choices=("fresh", "generator-step"), default=["fresh"])
    p.add_argument("--breakdown", action="store_true",
                   help="also time, on their own, the pieces of simcli's iteration the minimal loop does not have")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results name (default bench_distill-<arch>-<device>)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    for b in args.batch:
        if args.batch_gpu and b % args.batch_gpu:
            raise SystemExit(f"--batch-gpu {args.batch_gpu} does not divide the batch {b}")
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python benchmarks/bench_distill.py " + shlex.join(argv_list)
    doc: dict[str, Any] = {"machine": machine_info(device), "command": command.strip(), "rows": []}
    base = out_base(args.out or f"bench_distill-{args.arch}-{torch.device(device).type}")
    for batch, precision, compile, ckpt, ch_last, source in itertools.product(
            args.batch, args.precision, args.compile, args.checkpointing, args.channels_last, args.sample_source):
        row = measure_or_error(arch=args.arch, batch=batch, batch_gpu=args.batch_gpu, iterations=args.iterations,
                               warmup=args.warmup, device=device, precision=precision, compile=compile == "on",
                               checkpointing=ckpt == "on", channels_last=ch_last == "on", sample_source=source,
                               seed=args.seed, breakdown=args.breakdown)
        doc["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("times_")}), flush=True)
    doc["machine"]["load1_end"] = _load1()
    base.parent.mkdir(parents=True, exist_ok=True)
    with_ext(base, ".json").write_text(json.dumps(doc, indent=2) + "\n")
    with_ext(base, ".md").write_text(markdown(doc))
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
