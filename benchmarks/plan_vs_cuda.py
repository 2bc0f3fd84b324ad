"""simcli's memory plan against the CUDA peak of real SIM iterations, for one real-dimension model (issue 18).

The model is a shipped text-to-image teacher config (default PixArt-XL-2-512's transformer,
simcli/assets/network_configs/pixart-alpha-512.json) with random weights: nothing is downloaded. For each
configuration (micro-batch B x activation checkpointing x teacher guidance scale) it

1. resolves the run's spec as `simcli distill` does (simcli.config.resolve.resolve_spec: the model's preset,
   --batch-size B --batch-gpu B --precision P, --set training.activation_checkpointing=...) and computes the plan
   (simcli.distill.memory_plan.plan_memory: teacher, copies, gradients, optimizer, activations, total);
2. builds the networks as a run does (simcli.distill.setup.build_networks): the teacher frozen and guided at the
   guidance scale (its null condition a random one-row prompt), the generator, the online model and the EMA as
   copies of it, checkpointing on the teacher, generator and online model; Adam for the generator and the online
   model (simcli.distill.loop.Distillation._adam);
3. runs SIM iterations exactly as simcli.distill.loop.Distillation.iteration does (online_update, generator_update,
   update_ema from simcli itself, a BatchPlan whose condition source draws random TextConditions of the model's
   prompt length and width) under the run's precision (autocast and TF32 switches);
4. measures, on CUDA, torch.cuda.memory_allocated once the networks are built (the weights: planned teacher +
   copies) and after the warm-up iterations (the weights and Adam's moments: + optimizer), then
   torch.cuda.max_memory_allocated over the timed iterations after reset_peak_memory_stats (planned total), and
   seconds per iteration (median, synchronised).

The plan traces the networks unguided; a run guides the teacher (text.guidance_scale, 4.5 by default): its pass
then runs [null; condition], twice the micro-batch. `--guidance-scale 4.5 1` measures both, to tell that part apart.

Each configuration is built from nothing and freed afterwards (its objects dropped, gc, torch.cuda.empty_cache);
one that runs out of memory is recorded as "OOM" (with the peak it reached) and the sweep goes on. Results are
written after every configuration (a killed run keeps what it finished) to OUT.json and OUT.md; OUT defaults to
benchmarks/results/plan_vs_cuda-<gpu name> (plan_vs_cuda-cpu-tiny for the CPU smoke test).

    python benchmarks/plan_vs_cuda.py                                   # CUDA: B 1 4, checkpointing on off
    python benchmarks/plan_vs_cuda.py --batch 1 4 --guidance-scale 4.5 1
    python benchmarks/plan_vs_cuda.py --device cpu --tiny               # smoke test: 1-layer PixArt, no peak
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simcli.config.resolve import resolve_spec  # noqa: E402
from simcli.distill.batches import BatchPlan  # noqa: E402
from simcli.distill.ema import ema_beta, update_ema  # noqa: E402
from simcli.distill.memory_plan import MemoryPlan, plan_memory, shipped_architecture  # noqa: E402
from simcli.distill.precision import LossScaler, Precision  # noqa: E402
from simcli.distill.steps import Context, generator_update, make_generator_loss, online_update  # noqa: E402
from simcli.distill.streams import IterationStreams, online_phase  # noqa: E402
from simcli.nets.lora import trainable_parameters  # noqa: E402
from simcli.nets.registry import build_network  # noqa: E402
from simcli.nets.text_condition import TextCondition  # noqa: E402
from simcli.teachers.registry import describe_teacher_name  # noqa: E402
from simcli.world import World  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GIB = 2**30
PLAN_PARTS = ("teacher", "copies", "gradients", "optimizer", "activations")
TINY_PIXART = {"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2, "cross_attention_dim": 16,
               "caption_channels": 32, "sample_size": 8}
"""The --tiny transformer: one block of width 16 on 8 x 8 latents (16 tokens), 32-wide captions."""
TINY_TEXT_TOKENS = 8


class RandomPrompts:
    """A condition source (simcli.distill.conditions.Conditions) of random prompt embeddings: hidden states
    [n, tokens, width] (0.1 N(0, 1), about T5's scale), a full mask, and a pooled embedding where the model takes one;
    drawn from the micro-batch's stream like a run's prompts."""

    def __init__(self, tokens: int, width: int, pooled: int = 0):
        self.tokens, self.width, self.pooled = tokens, width, pooled

    def draw(self, n: int, rng: torch.Generator, device: torch.device) -> TextCondition:
        embeds = torch.randn(n, self.tokens, self.width, generator=rng, device=device) * 0.1
        pooled = torch.randn(n, self.pooled, generator=rng, device=device) * 0.1 if self.pooled else None
        return TextCondition(embeds, torch.ones(n, self.tokens, dtype=torch.long, device=device), pooled)


def architecture(model: str, tiny: bool) -> tuple[dict[str, Any], int]:
    """(the architecture record, prompt tokens) of the shipped config, or of its tiny version."""
    shipped = shipped_architecture(model)
    if shipped is None:
        raise SystemExit(f"simcli ships no network config named {model!r} (simcli/assets/network_configs)")
    record, tokens = shipped
    if not tiny:
        return record, tokens
    if record["class_name"] != "PixArtTransformer2DModel":
        raise SystemExit("--tiny shrinks a PixArt transformer only; use --model pixart-alpha-512")
    config = {**record["config"], **TINY_PIXART}
    shape = [record["sample_shape"][0], TINY_PIXART["sample_size"], TINY_PIXART["sample_size"]]
    return {**record, "config": config, "sample_shape": shape}, TINY_TEXT_TOKENS


def run_spec(model: str, batch: int, precision: str, checkpointing: bool, guidance: float | None):
    """The spec `simcli distill --teacher MODEL --batch-size B --batch-gpu B --precision P --set ...` resolves to."""
    sets = [f"training.activation_checkpointing={'true' if checkpointing else 'false'}"]
    if guidance is not None:
        sets.append(f"text.guidance_scale={guidance:g}")
    spec, _ = resolve_spec(model, describe_teacher_name, flags={
        "training": {"batch_size": batch, "batch_gpu": batch, "precision": precision}}, sets=sets)
    return spec


def build(record: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """A freshly initialised network of the record, made on `device` directly (a 0.6B network is slow to initialise
    on the CPU); on the CPU and moved when a constructor cannot make it there."""
    if device.type == "cpu":
        return build_network(record)
    try:
        with torch.device(device):
            net = build_network(record)
    except Exception:  # noqa: BLE001 - any constructor that assumes the CPU
        net = build_network(record)
    return net.to(device)


def networks(record: dict[str, Any], spec, tokens: int, device: torch.device) -> dict[str, Any]:
    """The teacher, generator, online model, EMA and the two Adams, as simcli.distill.setup.build_networks and
    Distillation._set_up make them."""
    teacher = build(record, device).eval().requires_grad_(False)
    base = copy.deepcopy(teacher)
    online = copy.deepcopy(base).requires_grad_(False)
    ema = copy.deepcopy(base).requires_grad_(False)
    generator = base.requires_grad_(True)
    cond = teacher.conditioning
    if cond.guidance != "none":
        teacher.set_guidance_scale(spec.text.guidance_scale)
        for net in (generator, online, ema):
            net.set_guidance_scale(1.0)
    if cond.guidance == "cfg":  # the empty prompt's embedding, as the run's prompts attach it
        null = RandomPrompts(tokens, cond.text_dim, cond.pooled_dim)
        teacher.set_null_condition(null.draw(1, torch.Generator(device=device).manual_seed(1), device))
    if spec.training.activation_checkpointing:
        for net in (teacher, generator, online):
            net.set_activation_checkpointing(True)

    def adam(net: torch.nn.Module, opt) -> torch.optim.Adam:
        return torch.optim.Adam(trainable_parameters(net), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)

    return {"teacher": teacher, "generator": generator, "online": online, "ema": ema,
            "opt_generator": adam(generator, spec.generator.optimizer),
            "opt_online": adam(online, spec.online.optimizer)}


def iterate(nets: dict[str, Any], spec, plan: BatchPlan, precision: Precision, scalers: dict[str, LossScaler],
            loss_fn, step: int, device: torch.device) -> tuple[float, float, bool]:
    """One iteration as simcli.distill.loop.Distillation.iteration runs it (fresh samples, online update first);
    returns (online loss, generator loss, both updates finite)."""
    ctx = Context(plan, IterationStreams(spec.seed, step, device), World(), precision.autocast)
    ok = True
    for j in range(spec.online.updates_per_generator_update):
        loss_online, finite = online_update(
            nets["generator"], nets["online"], nets["opt_online"], ctx, online_phase(j), spec.online.noise,
            scaler=scalers["online"], weighting=spec.online.weighting)
        ok = ok and finite
    loss_generator, finite = generator_update(
        nets["generator"], nets["online"], nets["teacher"], nets["opt_generator"], loss_fn, ctx, spec.generator.noise,
        grad_through_networks=spec.loss.method != "di", score_dropout=spec.generator.score_dropout,
        scaler=scalers["generator"])
    batch = spec.training.batch_size
    update_ema(nets["ema"], nets["generator"], ema_beta(batch, step * batch, spec.ema.halflife_kimg,
                                                        spec.ema.rampup_ratio))
    return loss_online, loss_generator, ok and finite


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(record: dict[str, Any], spec, tokens: int, device: torch.device, warmup: int, iterations: int,
            row: dict[str, Any]) -> None:
    """Build, warm up and time one configuration, filling `row` as it goes (so an OOM keeps what was measured)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    nets = networks(record, spec, tokens, device)
    teacher = nets["teacher"]
    cond = teacher.conditioning
    shape = tuple(teacher.sample_shape)
    plan = BatchPlan(spec.generator.sigma_init, spec.training.batch_size, spec.training.batch_gpu, shape,
                     teacher.label_dim, device, condition_source=RandomPrompts(tokens, cond.text_dim, cond.pooled_dim))
    precision = Precision(spec.training.precision, device)
    scaled = precision.adapt([teacher, nets["generator"], nets["online"], nets["ema"]])
    scalers = {name: LossScaler(enabled=scaled) for name in ("generator", "online")}
    loss_fn = make_generator_loss(spec.loss, spec.generator.weighting, math.prod(shape))
    if cuda:
        row["measured_weights_gib"] = (torch.cuda.memory_allocated(device) - start) / GIB
    times: list[float] = []
    row["nonfinite_iterations"] = 0
    with precision.tf32():
        for step in range(warmup + iterations):
            if step == warmup and cuda:  # the weights and Adam's moments; the gradients are freed (set_to_none)
                _sync(device)
                row["measured_static_gib"] = (torch.cuda.memory_allocated(device) - start) / GIB
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            loss_online, loss_generator, finite = iterate(nets, spec, plan, precision, scalers, loss_fn, step, device)
            _sync(device)
            row["nonfinite_iterations"] += not finite
            row["last_losses"] = {"online": loss_online, "generator": loss_generator}
            if step >= warmup:
                times.append(time.perf_counter() - t0)
    row["sec_per_iteration"] = statistics.median(times) if times else None
    row["times_s"] = [round(t, 4) for t in times]
    if cuda:
        row["measured_peak_gib"] = (torch.cuda.max_memory_allocated(device) - start) / GIB
        row["reserved_peak_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    row["status"] = "ok"


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plan_row(plan: MemoryPlan) -> dict[str, Any]:
    gib = plan.as_json()["per_process_gib"]
    return {**{part: gib[part] for part in PLAN_PARTS}, "total": gib["total"], "fits": plan.fits,
            "suggestions": list(plan.suggestions)}


def ratio(row: dict[str, Any]) -> float | None:
    peak = row.get("measured_peak_gib")
    return None if peak is None or row["status"] != "ok" else peak / row["plan"]["total"]


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"# Memory plan vs measured peak: {doc['model']}{' (tiny)' if doc['tiny'] else ''} on {m['device_name']}",
             "", f"    {doc['command']}", "",
             f"{doc['parameters']:,} parameters per network, {doc['text_tokens']} prompt tokens, precision "
             f"{doc['precision']}, {doc['warmup']} warm-up + {doc['iterations']} timed SIM iterations per row "
             f"(simcli's online_update, generator_update, update_ema). torch {m['torch']}, diffusers {m['diffusers']}.",
             "",
             "Planned (GiB, simcli.distill.memory_plan.plan_memory): the parts and their total. Measured (GiB, "
             "torch.cuda allocator): `weights` once the four networks are built (planned: teacher + copies), `static` "
             "after the warm-up (+ Adam's moments: + optimizer), `peak` = max_memory_allocated over the timed "
             "iterations (planned: total); ratio = peak / planned total. The plan traces an unguided teacher; "
             "`guidance` is the teacher's scale in the measured run (> 1: its passes run twice the micro-batch).", "",
             "| B | checkpointing | guidance | teacher | copies | gradients | optimizer | activations | planned total "
             "| measured weights | measured static | measured peak | ratio | sec/iteration | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        p = r["plan"]
        lines.append(
            f"| {r['batch']} | {'on' if r['checkpointing'] else 'off'} | {r['guidance_scale']:g} | "
            + " | ".join(_fmt(p[part]) for part in PLAN_PARTS) + f" | {_fmt(p['total'])} | "
            f"{_fmt(r.get('measured_weights_gib'))} | {_fmt(r.get('measured_static_gib'))} | "
            f"{_fmt(r.get('measured_peak_gib'))} | {_fmt(ratio(r), '.3f')} | "
            f"{_fmt(r.get('sec_per_iteration'), '.3f')} | {r['status']} |")
    errors = [r for r in doc["rows"] if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [f"- B {r['batch']}, checkpointing {r['checkpointing']}, guidance "
                                        f"{r['guidance_scale']:g}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine(device: torch.device) -> dict[str, Any]:
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers_version,
                            "python": platform.python_version(), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_total_gib=props.total_memory / GIB, cuda=torch.version.cuda)
    else:
        info.update(device_name=f"CPU ({platform.processor() or platform.machine()})", device_total_gib=None)
    return info


def out_base(out: str | None, device: torch.device, tiny: bool, name: str) -> Path:
    if out is None:
        label = slug(name) if device.type == "cuda" else "cpu"
        return RESULTS / f"plan_vs_cuda-{label}{'-tiny' if tiny else ''}"
    path = Path(out)
    return path.with_suffix("") if path.suffix in (".json", ".md") else path


def write(doc: dict[str, Any], base: Path) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    (base.parent / (base.name + ".json")).write_text(json.dumps(doc, indent=2) + "\n")
    (base.parent / (base.name + ".md")).write_text(markdown(doc))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="pixart-alpha-512",
                   help="a shipped network config (simcli/assets/network_configs)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: no peak is measured)")
    p.add_argument("--tiny", action="store_true", help="a 1-layer, 16-wide PixArt transformer (smoke test)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="micro-batches B (batch size = batch_gpu = B)")
    p.add_argument("--checkpointing", nargs="+", choices=("on", "off"), default=["on", "off"])
    p.add_argument("--guidance-scale", type=float, nargs="+", default=[None],
                   help="the teacher's guidance scale(s) in the measured run (default: the resolved spec's)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="bf16")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations before the peak is reset")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations (the peak is over these)")
    p.add_argument("--out", default=None, help="results path without extension (default benchmarks/results/"
                                               "plan_vs_cuda-<gpu name>); .json and .md are written")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but CUDA is not available (use --device cpu --tiny)")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    record, tokens = architecture(args.model, args.tiny)
    info = machine(device)
    base = out_base(args.out, device, args.tiny, info["device_name"])
    device_bytes = None if device.type != "cuda" else torch.cuda.get_device_properties(device).total_memory
    command = "python benchmarks/plan_vs_cuda.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    doc: dict[str, Any] = {"model": args.model, "tiny": args.tiny, "command": command.strip(), "machine": info,
                           "precision": args.precision, "text_tokens": tokens, "warmup": args.warmup,
                           "iterations": args.iterations, "architecture": record, "parameters": None, "rows": []}
    print(f"{args.model}{' (tiny)' if args.tiny else ''} on {info['device_name']}; results: {base}.md/.json",
          flush=True)
    plans: dict[tuple[int, bool], MemoryPlan] = {}  # the plan does not depend on the teacher's guidance
    for checkpointing in (c == "on" for c in args.checkpointing):
        for batch in args.batch:
            for guidance in args.guidance_scale:
                spec = run_spec(args.model, batch, args.precision, checkpointing, guidance)
                t0 = time.perf_counter()
                if (batch, checkpointing) not in plans:
                    plans[batch, checkpointing] = plan_memory(record, spec, 1, device_bytes, text_tokens=tokens)
                plan = plans[batch, checkpointing]
                doc["parameters"] = plan.parameters
                row: dict[str, Any] = {"batch": batch, "checkpointing": plan.checkpointing,
                                       "guidance_scale": spec.text.guidance_scale, "plan": plan_row(plan),
                                       "plan_s": round(time.perf_counter() - t0, 2), "status": "running"}
                t0 = time.perf_counter()
                try:
                    measure(record, spec, tokens, device, args.warmup, args.iterations, row)
                except torch.cuda.OutOfMemoryError:
                    row["status"] = "OOM"
                    row["measured_peak_gib"] = None
                    if device.type == "cuda":
                        row["oom_peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
                except Exception as exc:  # noqa: BLE001 - one configuration's failure must not end the sweep
                    row["status"] = "error"
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    traceback.print_exc()
                row["wall_s"] = round(time.perf_counter() - t0, 2)
                row.setdefault("measured_peak_gib", None)
                row["ratio"] = ratio(row)
                free(device)
                doc["rows"].append(row)
                write(doc, base)
                print(json.dumps({k: v for k, v in row.items() if k not in ("times_s",)}), flush=True)
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
