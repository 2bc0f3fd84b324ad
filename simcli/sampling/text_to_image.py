"""Text-to-image samples from prompts: a one-step generator distilled from a diffusers teacher, or the teacher's
own pipeline with DPM-Solver (the paper's 14-step comparison), decoded to images by the pipeline's VAE.

Sample i (seed seed + i) gets prompt i mod len(prompts), and its latent from its own generator seeded with its
seed, so a sample does not depend on the batch it is drawn in. The generator's text encoder and VAE are the
teacher pipeline's, found from the teacher name the snapshot records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.data.prompts import read_prompts
from simcli.errors import UsageError
from simcli.nets.denoiser import generate
from simcli.rundir.atomic import check_png_path, write_bytes_atomic
from simcli.runtime import resolve_device
from simcli.sampling.finite import GENERATOR_HINT, TEACHER_HINT, check_finite
from simcli.sampling.generator import generator_choice, load_generator
from simcli.sampling.images import save_grid, save_pngs
from simcli.sampling.run import check_sample_out, write_npz
from simcli.sampling.seeds import per_seed_randn, seed_generators
from simcli.teachers.diffusers_teacher import require_t2i_packages
from simcli.teachers.registry import teacher_pipeline

DEFAULT_TEACHER_STEPS = 14
"""DPM-Solver steps of the teacher's pipeline: the paper's comparison (PixArt-alpha, 14 steps)."""


def sample_prompts(prompts: list[str] | None, prompts_file: Path | None, n: int) -> list[str]:
    """The prompt of each of the n samples: --prompt values and/or a prompt file, cycled."""
    given = list(prompts or [])
    if prompts_file is not None:
        given += read_prompts(prompts_file)
    if not given:
        raise UsageError("no prompts given", hint="pass --prompt TEXT (repeatable) or --prompts FILE")
    return [given[i % len(given)] for i in range(n)]


def _chunks(n: int, batch_size: int) -> list[range]:
    return [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def generator_text_images(
    generator: str | Path, prompts: list[str], seed: int, batch_size: int, device: torch.device,
) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images [n, 3, H, W] from a text-to-image generator snapshot (one network evaluation each)."""
    net, meta, file = load_generator(generator, device)
    teacher = meta.get("spec", {}).get("teacher")
    source = teacher_pipeline(teacher) if net.conditioning.takes_text and isinstance(teacher, str) else None
    if source is None:
        raise UsageError(f"{file} is not a text-to-image generator", hint="drop --prompt/--prompts for this generator")
    # the encoder as the run's embedding store used it: bfloat16 on GPUs (simcli.distill.text_setup)
    encode = source.encoder(device, torch.bfloat16 if device.type == "cuda" else None)
    decode = source.decoder(device)
    images = []
    for part in _chunks(len(prompts), batch_size):
        seeds = [seed + i for i in part]
        z = per_seed_randn(seeds, tuple(net.sample_shape), device)
        with torch.no_grad():
            condition = encode([prompts[i] for i in part]).to(device)
            latents = generate(net, z, meta["sigma_init"], condition)
            check_finite(latents, seeds, f"generator {file}", "nothing was written", GENERATOR_HINT)  # before the VAE
            images.append(decode(latents).cpu())
    info = {"source": "generator", **generator_choice(generator, file), "teacher": teacher,
            "images_seen": meta.get("images_seen"), "nfe": 1}
    return torch.cat(images).numpy(), info


def teacher_text_images(
    teacher: str, prompts: list[str], seed: int, batch_size: int, device: torch.device,
    steps: int = DEFAULT_TEACHER_STEPS, guidance_scale: float = 4.5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images [n, 3, H, W] from the teacher's own pipeline with DPM-Solver (multistep) and guidance."""
    source = teacher_pipeline(teacher)
    if source is None:
        raise UsageError(f"--prompt needs a text-to-image teacher, not '{teacher}'",
                         hint="pixart-alpha-512 or diffusers:PATH")
    require_t2i_packages()
    from diffusers import DPMSolverMultistepScheduler

    pipe = source.pipeline(device)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor  # the resolution the teacher was trained at
    images = []
    for part in _chunks(len(prompts), batch_size):
        out = pipe(prompt=[prompts[i] for i in part], num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=seed_generators([seed + i for i in part], device), output_type="pt", height=size,
                   width=size, use_resolution_binning=False, clean_caption=False)  # as training embeds them
        pixels = out.images if hasattr(out, "images") else out[0]  # [b, 3, H, W] in [0, 1]
        check_finite(pixels, [seed + i for i in part], f"teacher {teacher}", "nothing was written", TEACHER_HINT)
        images.append((pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    # classifier-free guidance evaluates the transformer twice per step (the first step once more for DPM-Solver's order)
    info = {"source": "teacher", "teacher": teacher, "sampler": "dpm-solver-multistep", "steps": steps,
            "guidance_scale": guidance_scale, "nfe": steps * (2 if guidance_scale > 1 else 1)}
    return torch.cat(images).numpy(), info


def text_samples_to_file(
    out: Path, *, generator: Path | None, teacher: str | None, prompts: list[str], seed: int, batch_size: int,
    device: str, steps: int | None = None, guidance_scale: float = 4.5, overwrite: bool = False, grid: Path | None = None,
) -> dict[str, Any]:
    """Write text-to-image samples and return a summary: PNGs {seed:06d}.png plus prompts.jsonl (seed and prompt
    of each, in sample order: what `simcli eval --clip-score --prompts` reads), or an npz with 'images' uint8
    [N, H, W, C], 'prompts' and 'seeds'."""
    out = Path(out)
    check_sample_out(out, overwrite, is_image=True)
    if grid is not None:
        check_png_path(Path(grid))
    dev = resolve_device(device)
    if generator is not None:
        if steps is not None:
            raise UsageError("--steps applies to --teacher only", hint="a one-step generator takes one evaluation per sample")
        images, info = generator_text_images(generator, prompts, seed, batch_size, dev)
    else:
        images, info = teacher_text_images(teacher, prompts, seed, batch_size, dev, steps or DEFAULT_TEACHER_STEPS,
                                           guidance_scale)
    images = images.transpose(0, 2, 3, 1)  # NHWC, as every sample file holds them
    seeds = list(range(seed, seed + len(prompts)))
    if out.suffix == ".npz":
        write_npz(out, images=images, prompts=np.array(prompts), seeds=np.array(seeds, dtype=np.int64))
    else:
        save_pngs(images, seeds, out)
        lines = "".join(json.dumps({"seed": s, "prompt": p}) + "\n" for s, p in zip(seeds, prompts, strict=True))
        write_bytes_atomic(out / "prompts.jsonl", lines.encode())
    summary = {"out": str(out), "n": len(prompts), "first_seed": seed, "prompts": len(set(prompts)), **info}
    if grid is not None:
        summary["grid"] = str(save_grid(images[:256], Path(grid)))
    return summary
