"""Sample to a file: one-step generator samples or the teacher's EDM Heun sampler, seed by seed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.distill.checkpoint import atomic_write
from simcli.distill.setup import resolve_device
from simcli.errors import UsageError
from simcli.sampling.generator import load_generator
from simcli.sampling.heun import edm_heun_sample, heun_num_evals, one_step_generate
from simcli.sampling.seeds import SeedRNG
from simcli.teachers.registry import load_teacher


def generator_samples(
    generator: str | Path, n: int, seed: int = 0, batch_size: int = 4096, device: str = "auto"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """n one-step samples [n, D] from seeds seed..seed+n-1, and a description of their source."""
    dev = resolve_device(device)
    net, meta, file = load_generator(generator, dev)
    seeds = list(range(seed, seed + n))
    latents = SeedRNG(seeds).randn(tuple(net.sample_shape))  # [n, D] on CPU, one generator per seed
    x = one_step_generate(net, latents, sigma_init=meta["sigma_init"], batch_size=batch_size, device=dev)
    spec = meta.get("spec", {})
    return x.cpu(), {
        "source": "generator",
        "generator": str(file),
        "teacher": spec.get("teacher"),
        "images_seen": meta.get("images_seen"),
        "nfe": 1,
    }


def teacher_samples(
    teacher: str, n: int, seed: int = 0, heun_steps: int = 18, batch_size: int = 4096, device: str = "auto"
) -> tuple[torch.Tensor, dict[str, Any]]:
    """n samples of the teacher's EDM Heun sampler (2*steps - 1 evaluations each)."""
    dev = resolve_device(device)
    net = load_teacher(teacher).to(dev).eval()
    chunks = []
    for start in range(seed, seed + n, batch_size):
        seeds = list(range(start, min(start + batch_size, seed + n)))
        rng = SeedRNG(seeds, device=dev)
        latents = rng.randn(tuple(net.sample_shape))
        chunks.append(edm_heun_sample(net, latents, num_steps=heun_steps, rng=rng).cpu())
    return torch.cat(chunks), {"source": "teacher", "teacher": teacher, "heun_steps": heun_steps, "nfe": heun_num_evals(heun_steps)}


def sample_to_file(
    out: Path,
    *,
    generator: Path | None,
    teacher: str | None,
    heun_steps: int,
    n: int,
    seed: int,
    batch_size: int,
    device: str,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write samples (npz: 'samples' [N, D] float32, 'seeds' [N] int64) atomically; returns a summary."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"output must end in .npz, got {out.name}")
    if out.is_dir():
        raise UsageError(f"{out} is a directory", hint="--out names the .npz file to write")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists", hint="pass --force to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"directory {out.parent} does not exist")
    if generator is not None:
        x, info = generator_samples(generator, n, seed, batch_size, device)
    else:
        x, info = teacher_samples(teacher, n, seed, heun_steps, batch_size, device)
    seeds = np.arange(seed, seed + n, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, samples=x.numpy().astype(np.float32), seeds=seeds)
    atomic_write(out, lambda p: p.write_bytes(buf.getvalue()))
    return {"out": str(out), "n": n, "first_seed": seed, **info}
