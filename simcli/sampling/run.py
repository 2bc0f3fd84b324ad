"""Sample to files: one-step generator samples or the teacher's EDM Heun sampler, seed by seed.

Sample i is drawn from its own random generator seeded with seed + i (latent first, then the class label
of conditional models, then the teacher sampler's churn noise, as EDM's generate.py does), so it does not
depend on the batch size. The teacher sampler's settings are a HeunSettings; `resolve_heun_settings` turns
the `sample` options (and --paper: a catalog teacher's published settings) into one.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.rundir.atomic import check_png_path, write_bytes_atomic
from simcli.runtime import resolve_device
from simcli.sampling.decode import latent_space, latents_decoder
from simcli.sampling.finite import GENERATOR_HINT, TEACHER_HINT, check_finite
from simcli.sampling.generator import generator_choice, load_generator, snapshot_sigmas
from simcli.sampling.heun import HeunSettings, edm_heun_sample, one_step_generate
from simcli.sampling.images import save_grid, save_pngs
from simcli.sampling.plots import MAX_POINTS, TEACHER_COLOUR, PlotSource, write_vector_plot
from simcli.sampling.seeds import SeedRNG, seed_noise
from simcli.teachers.edm2_catalog import EDM2_SAMPLER_STEPS, is_edm2_name
from simcli.teachers.edm_catalog import EDM_TEACHERS
from simcli.teachers.guidance import guide_teacher
from simcli.teachers.registry import Teacher, load_teacher, teacher_kind


def _labels(rng: SeedRNG, label_dim: int, class_label: int | None, device: torch.device) -> torch.Tensor | None:
    """One-hot labels [n, label_dim]: the fixed class, or one drawn per seed; None when unconditional.

    A class is drawn per seed even when class_label is given (then replaced), as EDM's generate.py does, so
    the churn noise drawn afterwards from the same generators is the same with and without --class.
    """
    if label_dim == 0:
        if class_label is not None:
            raise UsageError("--class given, but the model is unconditional")
        return None
    if class_label is not None and not 0 <= class_label < label_dim:
        raise UsageError(f"--class must be in 0..{label_dim - 1}, got {class_label}")
    classes = rng.randint(label_dim).cpu()
    if class_label is not None:
        classes = torch.full_like(classes, class_label)
    return torch.nn.functional.one_hot(classes, label_dim).to(device=device, dtype=torch.float32)


def _chunks(seed: int, n: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, seed + n))) for s in range(seed, seed + n, batch_size)]


def generator_batches(
    net: Denoiser, sigmas: Sequence[float], n: int, seed: int, batch_size: int, device: torch.device,
    class_label: int | None = None, shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Generator samples [b, ...] (float32, on the CPU) at the generator's noise levels `sigmas` (one for a one-step
    generator) and their class indices (or None), batch by batch. Each seed draws its latent, its class, then the
    noise between a few-step generator's steps.

    shard (index, count): only the index-th of count contiguous runs of batches, so that count processes
    concatenating their shares in index order get exactly the samples one process would."""
    chunks = _chunks(seed, n, batch_size)
    index, count = shard
    for seeds in chunks[index * len(chunks) // count : (index + 1) * len(chunks) // count]:
        rng = SeedRNG(seeds)  # on the CPU, so samples are the same on any device
        latents = rng.randn(tuple(net.sample_shape)).to(device)
        onehot = _labels(rng, net.label_dim, class_label, device)
        x = one_step_generate(net, latents, sigmas=sigmas, class_labels=onehot, renoise=seed_noise(rng, device)).cpu()
        yield x, (None if onehot is None else onehot.argmax(1).cpu())


def generator_samples(
    generator: str | Path, n: int, seed: int = 0, batch_size: int = 4096, device: str = "auto", class_label: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """n one-step samples [n, ...] from seeds seed..seed+n-1, their class indices (or None), and their source
    (with which file a run directory's newest snapshot was: simcli.sampling.generator.generator_choice). Samples
    holding NaN or Inf fail (RunFailed, naming their seeds)."""
    dev = resolve_device(device)
    net, meta, file = load_generator(generator, dev)
    _refuse_text_to_image(net)
    xs, labels = [], []
    sigmas = snapshot_sigmas(meta, file)
    for x, classes in generator_batches(net, sigmas, n, seed, batch_size, dev, class_label):
        xs.append(x)
        labels.append(classes)
    x = torch.cat(xs)
    check_finite(x, range(seed, seed + n), f"generator {file}", "nothing was written", GENERATOR_HINT)
    info = {"source": "generator", **generator_choice(generator, file), "teacher": meta.get("spec", {}).get("teacher"),
            "images_seen": meta.get("images_seen"), "nfe": len(sigmas), **_latents_info(meta["architecture"], str(file))}
    return x, (torch.cat(labels) if labels[0] is not None else None), info


def _latents_info(architecture: Any, source: str) -> dict[str, Any]:
    """{'latents': record} for a latent network (what decodes its samples: simcli.sampling.decode), else {}."""
    latents = latent_space(architecture, source)
    return {} if latents is None else {"latents": latents.record()}


SAMPLER_FLAGS = ("--steps", "--churn", "--s-min", "--s-max", "--s-noise")


def resolve_heun_settings(
    teacher: str | None, *, paper: bool = False, steps: int | None = None, churn: float | None = None,
    s_min: float | None = None, s_max: float | None = None, s_noise: float | None = None,
) -> HeunSettings:
    """The teacher sampler's settings from the `sample` options: EDM's deterministic 18-step sampler by
    default; with paper, the published settings of an official EDM teacher (edm_catalog SamplerPreset);
    options that are given (not None) override either. paper for any other teacher is a UsageError."""
    base = HeunSettings()
    if paper and isinstance(teacher, str) and is_edm2_name(teacher):  # EDM2's deterministic sampler
        base = HeunSettings(EDM2_SAMPLER_STEPS, preset="paper")
    elif paper:
        entry = EDM_TEACHERS.get(teacher) if isinstance(teacher, str) else None
        if entry is None:
            raise UsageError(
                f"--paper: teacher '{teacher}' has no published sampler settings",
                hint=f"--paper knows the official EDM and EDM2 teachers ({', '.join(EDM_TEACHERS)}, edm2-...); "
                f"give {', '.join(SAMPLER_FLAGS)} instead",
            )
        p = entry.sampler
        base = HeunSettings(p.steps, p.s_churn, p.s_min, p.s_max, p.s_noise, preset="paper")
    given = {"num_steps": steps, "s_churn": churn, "s_min": s_min, "s_max": s_max, "s_noise": s_noise}
    given = {key: value for key, value in given.items() if value is not None}
    if not given:
        return base
    return dataclasses.replace(base, **given, preset=f"{base.preset}+overrides" if base.preset else None)


def teacher_samples(
    teacher: str | Denoiser, n: int, seed: int = 0, heun_steps: int = 18, batch_size: int = 4096,
    device: str = "auto", class_label: int | None = None, sampler: HeunSettings | None = None,
    guide: tuple[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """n samples of the teacher's EDM Heun sampler (2*steps - 1 evaluations each), with their classes.

    The samples are the sampler's float64 output, as EDM's generate.py hands it to its uint8 conversion.
    sampler gives all the sampler settings (then heun_steps is ignored); without it, EDM's deterministic
    sampler with heun_steps steps. Per seed: latent, class label, churn noise (generate.py's draw order). guide:
    (network, weight) guiding a named EDM or EDM2 teacher (simcli.teachers.guidance).
    """
    settings = sampler if sampler is not None else HeunSettings(num_steps=heun_steps)
    if isinstance(teacher, str) and teacher_kind(teacher).pipeline is not None:
        raise UsageError(f"'{teacher}' is a text-to-image teacher: its samples need prompts",
                         hint="pass --prompt TEXT or --prompts FILE (its pipeline samples with DPM-Solver)")
    dev = resolve_device(device)
    loaded = load_teacher(teacher) if isinstance(teacher, str) else None
    if guide is not None and loaded is not None:
        loaded = guide_teacher(loaded, *guide)
    net = (loaded.denoiser if loaded is not None else teacher).to(dev).eval()
    _refuse_text_to_image(net)
    xs, labels = [], []
    for seeds in _chunks(seed, n, batch_size):
        rng = SeedRNG(seeds, device=dev)
        latents = rng.randn(tuple(net.sample_shape))
        onehot = _labels(rng, net.label_dim, class_label, dev)
        xs.append(edm_heun_sample(net, latents, class_labels=onehot, rng=rng, **settings.sampler_kwargs()).cpu())
        labels.append(None if onehot is None else onehot.argmax(1).cpu())
    name = teacher if isinstance(teacher, str) else type(teacher).__name__
    x = torch.cat(xs)
    check_finite(x, range(seed, seed + n), f"teacher {name}", "nothing was written", TEACHER_HINT)
    if guide is not None:
        name = loaded.display_name if loaded is not None else name
    info = {"source": "teacher", "teacher": name, "heun_steps": settings.num_steps, "nfe": settings.nfe,
            "sampler": settings.summary(), **(_latents_info(loaded.architecture, name) if loaded is not None else {})}
    return x, (torch.cat(labels) if labels[0] is not None else None), info


def _refuse_text_to_image(net: Denoiser) -> None:
    """Text-to-image networks sample from prompts (simcli.sampling.text_to_image), not from here."""
    if net.conditioning.takes_text:
        raise UsageError("this is a text-to-image model: its samples need prompts",
                         hint="pass --prompt TEXT (repeatable) or --prompts FILE")


def check_sample_out(out: Path, overwrite: bool, is_image: bool) -> None:
    if out.suffix != ".npz" and not (is_image and out.suffix == ""):
        raise UsageError(
            f"output must be an .npz file{' or a directory for PNGs' if is_image else ''}, got {out.name}"
        )
    if out.suffix == ".npz":
        if out.is_dir():
            raise UsageError(f"{out} is a directory", hint="--out names the .npz file to write")
        if out.exists() and not overwrite:
            raise UsageError(f"{out} exists", hint="pass --force to replace it")
        if not out.parent.is_dir():
            raise UsageError(f"directory {out.parent} does not exist")
    elif out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise UsageError(f"{out} exists and is not an empty directory", hint="pass --force to write into it")


PLOT_HEUN_STEPS = 18  # the teacher column of a generator's --plot: EDM's deterministic 18-step sampler
IMAGE_PLOT_ERROR = "--plot draws vector samples; these are images"
IMAGE_PLOT_HINT = "use --grid FILE.png for a grid of images"


def _plot_teacher(generator: Path | None, teacher: str | None) -> Teacher | None:
    """The teacher whose modes (and, for a generator, whose Heun samples) the --plot shows; refuses image
    sources that can be told without sampling (official EDM and digits teachers, image generators)."""
    if teacher is not None:
        if teacher_kind(teacher).name in ("edm", "digits"):  # no download or network load just to refuse
            raise UsageError(IMAGE_PLOT_ERROR, hint=IMAGE_PLOT_HINT)
        return load_teacher(teacher)
    net, meta, _ = load_generator(generator, "cpu")
    if len(net.sample_shape) != 1:
        raise UsageError(IMAGE_PLOT_ERROR, hint=IMAGE_PLOT_HINT)
    name = meta.get("spec", {}).get("teacher")
    return load_teacher(name) if isinstance(name, str) else None


def _write_plot(plot: Path, x: torch.Tensor, info: dict[str, Any], plot_teacher: Teacher | None, *, n: int,
                seed: int, batch_size: int, device: str) -> str:
    """Scatter the first MAX_POINTS samples; beside a generator's, its teacher's 18-step Heun samples (same seeds)."""
    m = min(n, MAX_POINTS)
    shown = f"{m:,} samples" + (f" (first of {n:,})" if m < n else "")
    if info["source"] == "generator":
        sources = [PlotSource(x[:m].numpy(), f"one-step generator (NFE 1)\n{shown}")]
        if plot_teacher is not None:
            t, _, tinfo = teacher_samples(plot_teacher.denoiser, m, seed, PLOT_HEUN_STEPS, batch_size, device)
            sources.append(PlotSource(t.numpy(), f"teacher: {tinfo['heun_steps']}-step Heun (NFE {tinfo['nfe']})\n{shown}",
                                      TEACHER_COLOUR))
    else:
        sources = [PlotSource(x[:m].numpy(), f"teacher: {info['heun_steps']}-step Heun (NFE {info['nfe']})\n{shown}",
                              TEACHER_COLOUR)]
    name = plot_teacher.display_name if plot_teacher is not None else info.get("teacher")
    title = f"{name or 'samples'}, seeds {seed}..{seed + m - 1}"
    mixture = plot_teacher.mixture if plot_teacher is not None else None
    return str(write_vector_plot(plot, sources, mixture, title))


def sample_to_file(
    out: Path, *, generator: Path | None, teacher: str | None, n: int, seed: int, batch_size: int, device: str,
    heun_steps: int = 18, sampler: HeunSettings | None = None, overwrite: bool = False,
    class_label: int | None = None, grid: Path | None = None, plot: Path | None = None,
    guide: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Write samples and return a summary (with the teacher sampler's settings and NFE).

    Teacher samples use sampler (or EDM's deterministic sampler with heun_steps steps); their images are
    converted to uint8 from the sampler's float64 output, as EDM's generate.py does.

    Vector data: npz with 'samples' [N, D] float32 and 'seeds' [N]. Images: a directory of {seed:06d}.png, or
    an npz with 'images' uint8 [N, H, W, C], 'labels' [N] (-1 when unconditional) and 'seeds' [N].
    """
    out = Path(out)
    check_sample_out(out, overwrite, is_image=True)  # what can be checked before sampling
    plot_teacher = None
    if plot is not None:
        check_png_path(Path(plot))
        plot_teacher = _plot_teacher(generator, teacher)
    if generator is not None:
        x, labels, info = generator_samples(generator, n, seed, batch_size, device, class_label)
    else:
        x, labels, info = teacher_samples(teacher, n, seed, heun_steps, batch_size, device, class_label, sampler, guide)
    is_image = x.ndim == 4
    if not is_image and out.suffix != ".npz":
        raise UsageError(f"vector samples are written to an .npz file, got {out.name}")
    if grid is not None and not is_image:
        raise UsageError("--grid needs image samples", hint="use --plot FILE.png for a scatter plot of vector samples")
    if plot is not None and is_image:
        raise UsageError(IMAGE_PLOT_ERROR, hint=IMAGE_PLOT_HINT)
    if plot is not None and x.shape[1] < 2:
        raise UsageError("--plot needs samples with at least 2 dimensions")
    seeds = np.arange(seed, seed + n, dtype=np.int64)
    latents = info.pop("latents", None)  # latent samples: decoded through their VAE, which the summary names
    summary = {"out": str(out), "n": n, "first_seed": seed, **info, **({"vae": latents["vae"]} if latents else {})}
    if is_image:
        images = latents_decoder(latents, resolve_device(device))(x)
        label_array = labels.numpy() if labels is not None else np.full(n, -1, np.int64)
        if out.suffix == ".npz":
            write_npz(out, images=images, labels=label_array, seeds=seeds)
        else:
            save_pngs(images, seeds.tolist(), out)
        if grid is not None:
            summary["grid"] = str(save_grid(images[:256], grid))
    else:
        write_npz(out, samples=x.numpy().astype(np.float32), seeds=seeds)
        if plot is not None:
            summary["plot"] = _write_plot(Path(plot), x, info, plot_teacher, n=n, seed=seed, batch_size=batch_size,
                                          device=device)
    return summary


def write_npz(out: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(out, buf.getvalue())
