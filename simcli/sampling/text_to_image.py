"""Text-to-image samples from prompts: a one-step generator distilled from a diffusers teacher, or the teacher's
own pipeline, decoded to images by the pipeline's VAE.

The teacher samples with its family's pipeline class and the scheduler its folder holds, at the family's default
steps, guidance scale and resolution (simcli.teachers.pipeline_families) unless given; PixArt-alpha samples with
DPM-Solver (multistep), 14 steps by default: the SIM paper's comparison.

Sample i (seed seed + i) gets prompt i mod len(prompts), and its latent from its own generator seeded with its
seed, so a sample does not depend on the batch it is drawn in. The generator's text encoder and VAE are the
teacher pipeline's, found from the teacher name the snapshot records.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.data.prompts import read_prompts
from simcli.errors import UsageError
from simcli.nets.few_step import generate_steps
from simcli.rundir.atomic import check_png_path, write_bytes_atomic
from simcli.runtime import resolve_device
from simcli.sampling.finite import GENERATOR_HINT, TEACHER_HINT, check_finite
from simcli.sampling.generator import generator_choice, load_generator, snapshot_sigmas
from simcli.sampling.images import save_grid, save_pngs
from simcli.sampling.run import check_sample_out, write_npz
from simcli.sampling.seeds import SeedRNG, seed_generators, seed_noise
from simcli.teachers.diffusers_teacher import latent_multiple
from simcli.teachers.hf_loading import require_t2i_packages
from simcli.teachers.pipeline_families import PipelineFamily
from simcli.teachers.pipeline_folder import read_json
from simcli.teachers.registry import teacher_pipeline

PAPER_FAMILY = "pixart-alpha"
PAPER_STEPS = 14
"""The SIM paper's teacher comparison: PixArt-alpha with 14-step DPM-Solver (multistep). Every other family samples
with the scheduler its pipeline folder holds, and its pipeline's default steps."""

# Switched off in every pipeline whose __call__ takes them (PixArt, SANA): prompts as training embeds them (no
# caption cleaning) at exactly the requested size (no snapping to the aspect-ratio bins).
_SWITCHED_OFF = ("clean_caption", "use_resolution_binning")


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
    if meta.get("prompts_as_given"):  # the SIM release's inference tokenizes prompts unchanged (sampling.sim_release)
        encode.family = dataclasses.replace(encode.family, lowercase=False)
    decode = source.decoder(device)
    sigmas = snapshot_sigmas(meta, file)
    images = []
    for part in _chunks(len(prompts), batch_size):
        seeds = [seed + i for i in part]
        rng = SeedRNG(seeds)
        z = rng.randn(tuple(net.sample_shape)).to(device)
        with torch.no_grad():
            condition = encode([prompts[i] for i in part]).to(device)
            latents = generate_steps(net, z, sigmas, condition, seed_noise(rng, device))
            check_finite(latents, seeds, f"generator {file}", "nothing was written", GENERATOR_HINT)  # before the VAE
            images.append(decode(latents).cpu())
    info = {"source": "generator", **generator_choice(generator, file), "teacher": teacher,
            "images_seen": meta.get("images_seen"), "nfe": len(sigmas)}
    return torch.cat(images).numpy(), info


SCHNELL_STEPS = 4  # FLUX.1-schnell is timestep-distilled for about 4 steps (diffusers' FLUX docs; BFL's cli.py)


def default_steps(family, network_config: dict) -> int:
    """The teacher's default sampling steps: PixArt-alpha's 14 (the paper's comparison), FLUX-schnell's 4 (a FLUX
    transformer without a guidance embedding), else its pipeline's."""
    if family.key == PAPER_FAMILY:
        return PAPER_STEPS
    if family.takes_no_guidance(network_config):
        return SCHNELL_STEPS
    return family.steps


def teacher_text_images(
    teacher: str, prompts: list[str], seed: int, batch_size: int, device: torch.device,
    steps: int | None = None, guidance_scale: float | None = None, resolution: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images [n, 3, H, W] from the teacher's own pipeline and scheduler (PixArt-alpha: DPM-Solver multistep,
    the paper's comparison). steps, guidance_scale and resolution (pixels, square) default to the family's."""
    source = teacher_pipeline(teacher)
    if source is None:
        raise UsageError(f"--prompt needs a text-to-image teacher, not '{teacher}'",
                         hint="pixart-alpha-512 or diffusers:PATH")
    require_t2i_packages()
    family = source.family
    network_config = read_json(source.network_folder() / family.network / "config.json")
    guidance = teacher_guidance(teacher, family, network_config, guidance_scale)
    size = teacher_resolution(family, network_config, source.vae_scale_factor(), resolution)
    steps = steps or default_steps(family, network_config)

    pipe = source.pipeline(device)
    if family.key == PAPER_FAMILY:
        from diffusers import DPMSolverMultistepScheduler

        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    takes = inspect.signature(pipe.__call__).parameters
    options = {name: False for name in _SWITCHED_OFF if name in takes}
    if "max_sequence_length" in takes:
        options["max_sequence_length"] = source.max_tokens
    if guidance is not None:
        options["guidance_scale"] = guidance
    images, passes = [], _NetworkPasses(getattr(pipe, family.network))
    with passes:
        for part in _chunks(len(prompts), batch_size):
            seeds = [seed + i for i in part]
            out = pipe(prompt=[prompts[i] for i in part], num_inference_steps=steps, height=size, width=size,
                       generator=seed_generators(seeds, device), output_type="pt", **options)
            pixels = out.images if hasattr(out, "images") else out[0]  # [b, 3, H, W] in [0, 1]
            check_finite(pixels, seeds, f"teacher {teacher}", "nothing was written", TEACHER_HINT)
            images.append((pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    info = {"source": "teacher", "teacher": teacher, "sampler": type(pipe.scheduler).__name__, "steps": steps,
            "guidance_scale": guidance, "resolution": size, "nfe": passes.rows // len(prompts)}
    return torch.cat(images).numpy(), info


def teacher_guidance(teacher: str, family: PipelineFamily, network_config: dict[str, Any],
                     guidance_scale: float | None) -> float | None:
    """The guidance scale the teacher's pipeline applies: the one given, else the family's; None for FLUX without
    a guidance embedding (FLUX-schnell), which takes none."""
    if family.takes_no_guidance(network_config):
        if guidance_scale is not None:
            raise UsageError(f"teacher {teacher} takes no guidance scale (a FLUX transformer without guidance "
                             "embedding, as FLUX-schnell)", hint="drop --guidance")
        return None
    return family.guidance_scale if guidance_scale is None else guidance_scale


def teacher_resolution(family: PipelineFamily, network_config: dict[str, Any], vae_scale_factor: int,
                       resolution: int | None) -> int:
    """The image side in pixels: the one given, else the family's default latent side times the VAE's scale
    factor. A given side must be a multiple of the VAE factor times the network's latent multiple
    (simcli.teachers.diffusers_teacher.latent_multiple: patch size, FLUX's packing, a UNet's down-sampling)."""
    if resolution is None:
        _, height, width = family.sample_shape(network_config)
        return max(height, width) * vae_scale_factor  # the real teachers' defaults are square
    step = vae_scale_factor * latent_multiple({"class_name": family.network_class, "config": network_config})
    if resolution <= 0 or resolution % step:
        raise UsageError(f"resolution {resolution} px does not fit the teacher's {family.pipeline_class}: it takes "
                         f"multiples of {step} px", hint=f"pick a multiple of {step}, e.g. {max(1, resolution // step) * step}")
    return resolution


class _NetworkPasses:
    """While entered, counts the rows the denoising network evaluates: rows / samples is each sample's number of
    network evaluations (NFE) whatever the family's scheduler (PNDM takes one step more) and guidance (classifier-free
    guidance evaluates every sample twice per step; FLUX's embedded guidance once)."""

    def __init__(self, network: torch.nn.Module):
        self.network, self.rows, self._hook = network, 0, None

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        latents = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        self.rows += int(latents.shape[0])

    def __enter__(self) -> _NetworkPasses:
        self._hook = self.network.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


def text_samples_to_file(
    out: Path, *, generator: Path | None, teacher: str | None, prompts: list[str], seed: int, batch_size: int,
    device: str, steps: int | None = None, guidance_scale: float | None = None, resolution: int | None = None,
    overwrite: bool = False, grid: Path | None = None,
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
        given = [flag for flag, value in (("--steps", steps), ("--guidance", guidance_scale)) if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} apply to --teacher only",
                             hint="a one-step generator takes one evaluation per sample, without guidance")
        if resolution is not None:
            raise UsageError("a resolution applies to teacher samples only",
                             hint="a one-step generator samples at the size it was trained at")
        images, info = generator_text_images(generator, prompts, seed, batch_size, dev)
    else:
        images, info = teacher_text_images(teacher, prompts, seed, batch_size, dev, steps, guidance_scale, resolution)
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
