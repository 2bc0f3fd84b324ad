"""`simcli sample`: samples from a one-step (or few-step) generator, or the teacher's EDM Heun sampler for comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simcli.cli.errors import reported_errors
from simcli.cli.options import TEACHER_HELP, DeviceOpt, ForceOpt, JsonOpt, SeedOpt, ThreadsOpt
from simcli.cli.output import print_json, stderr_console
from simcli.errors import UsageError
from simcli.teachers.pipeline_families import FAMILIES

EPILOG = """Examples:

  simcli sample --generator runs/ring8-sim --n 10000 --out ring8-sim.npz

  simcli sample --teacher gmm-ring8 --steps 18 --n 10000 --out ring8-teacher.npz

  simcli sample --teacher edm-imagenet64 --paper --n 64 --out imagenet-teacher/

  simcli sample --generator runs/ring8-sim --n 4000 --out ring8-sim.npz --plot ring8-sim.png

Sample i uses seed + i with its own random generator, so it does not depend on the batch size. The teacher
sampler is EDM's edm_sampler (generate.py), bit for bit on the CPU: N steps cost 2N-1 evaluations (NFE);
--churn, --s-min, --s-max and --s-noise are its S_churn, S_min, S_max and S_noise. --paper takes an official
EDM teacher's published settings (18 steps at 32x32, 40 at 64x64, ImageNet 256 steps with S_churn 40,
S_min 0.05, S_max 50, S_noise 1.003); options given with it override them.
"""

GeneratorOpt = Annotated[
    Path | None,
    typer.Option("--generator", help="Run directory (newest snapshot) or generator-*.safetensors; or the SIM authors' released "
                 "generator: sim-dit-600m (from maple-research-lab/SIM on the Hugging Face Hub) or a copy of its "
                 "checkpoint-2024-07-02.pt (text-to-image: with --prompt). Required: this or --teacher."),
]
SampleTeacherOpt = Annotated[
    str | None, typer.Option("--teacher", help=f"Sample the teacher's EDM Heun sampler (a text-to-image teacher: its own pipeline and scheduler, with --prompt). Required: this or --generator. {TEACHER_HELP}")
]
StepsOpt = Annotated[
    int | None,
    typer.Option("--steps", min=1, show_default=False,
                 help="Heun steps N for --teacher (2N-1 evaluations; default: 18, or the published steps with --paper); "
                      "a text-to-image teacher's pipeline steps (default: its family's; PixArt-alpha: 14 DPM-Solver "
                      "steps, the SIM paper's comparison; FLUX-schnell: 4)."),
]
ChurnOpt = Annotated[
    float | None,
    typer.Option("--churn", min=0, show_default=False,
                 help="EDM's S_churn for --teacher: how much noise to re-add per step (default: 0, deterministic)."),
]
SMinOpt = Annotated[
    float | None,
    typer.Option("--s-min", min=0, show_default=False,
                 help="EDM's S_min for --teacher: churn only at noise levels >= this (default: 0)."),
]
SMaxOpt = Annotated[
    float | None,
    typer.Option("--s-max", min=0, show_default=False,
                 help="EDM's S_max for --teacher: churn only at noise levels <= this (default: inf)."),
]
SNoiseOpt = Annotated[
    float | None,
    typer.Option("--s-noise", show_default=False, help="EDM's S_noise for --teacher: scale of the churn noise (default: 1)."),
]
GuidanceOpt = Annotated[
    float | None,
    typer.Option("--guidance", min=1.0, show_default=False,
                 help="Text-to-image --teacher: the guidance scale of its pipeline (default: its family's: "
                      f"{', '.join(f'{f.key} {f.guidance_scale:g}' for f in FAMILIES.values())}; classifier-free "
                      "guidance above 1 evaluates the network twice per step, FLUX's embedded guidance once; "
                      "FLUX-schnell takes none). With --guide: the weight w of the guide network."),
]
ResolutionOpt = Annotated[
    int | None,
    typer.Option("--resolution", min=1, show_default=False, metavar="PIXELS",
                 help="Text-to-image --teacher: image side in pixels (default: its pipeline's; a generator makes the "
                      "size it was distilled at)."),
]
PaperOpt = Annotated[
    bool,
    typer.Option("--paper", help="Use the --teacher's published sampler settings (official edm-* teachers; edm2-*: EDM2's 32 Heun steps); "
                 "--steps, --churn, --s-min, --s-max, --s-noise override them."),
]


def sample(
    out: Annotated[Path, typer.Option("--out", help="Output: .npz, or a directory of {seed:06d}.png for images.")],
    generator: GeneratorOpt = None,
    teacher: SampleTeacherOpt = None,
    steps: StepsOpt = None,
    churn: ChurnOpt = None,
    s_min: SMinOpt = None,
    s_max: SMaxOpt = None,
    s_noise: SNoiseOpt = None,
    paper: PaperOpt = False,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples.")] = 10000,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per forward pass.")] = 4096,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    class_label: Annotated[int | None, typer.Option("--class", help="Class index for conditional models (default: random per seed).")] = None,
    grid: Annotated[Path | None, typer.Option("--grid", help="Also write a PNG grid of the first 256 images.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Vector samples: also write a PNG scatter plot (the mixture's modes marked; for a generator, "
        "its teacher's 18-step Heun samples beside it).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", metavar="TEXT", help="Text-to-image: a prompt (repeatable); sample i gets prompt i mod the number given.")] = None,
    prompts: Annotated[Path | None, typer.Option("--prompts", metavar="FILE", help="Text-to-image: prompts, one per line (.txt) or JSON lines with a 'prompt' field (.jsonl); with --prompt too, these come after.")] = None,
    guidance: GuidanceOpt = None,
    guide: Annotated[str | None, typer.Option("--guide", metavar="NAME", help="EDM/EDM2 --teacher: guide its sampler with a second network, D_guide + w (D - D_guide), w from --guidance (an unconditional EDM2 network for classifier-free guidance, a smaller conditional one for autoguidance).")] = None,
    resolution: ResolutionOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Write samples of a one-step or few-step generator (--generator) or of the teacher's EDM Heun sampler (--teacher) to an
    .npz file or a directory of PNGs; give exactly one of --generator and --teacher."""
    with reported_errors():
        if (generator is None) == (teacher is None):  # before torch is imported (seconds on a busy machine)
            raise UsageError("give exactly one of --generator and --teacher")
        from simcli.runtime import set_cpu_threads

        set_cpu_threads(threads)
        if resolution is not None and not (prompt or prompts is not None):
            raise UsageError("--resolution applies to text-to-image teachers (with --prompt or --prompts)")
        if guide is not None and (teacher is None or prompt or prompts is not None):
            raise UsageError("--guide applies to an EDM or EDM2 --teacher's sampler",
                             hint="a generator was distilled with its run's guide; text-to-image teachers take --guidance alone")
        if guide is not None and guidance is None:
            raise UsageError("--guide needs the guidance weight", hint="add --guidance W (EDM2's presets use 1.2 to 2.9)")
        if guidance is not None and guide is None and not (prompt or prompts is not None):
            raise UsageError("--guidance applies to text-to-image samples (with --prompt) or with --guide NAME")
        if prompt or prompts is not None:
            _text_to_image(out, generator, teacher, prompt, prompts, n, seed, batch_size, device, steps, guidance,
                           resolution, force, grid, json_out,
                           other=(churn, s_min, s_max, s_noise, class_label, plot, paper or None))
            return
        from simcli.sampling.sim_release import is_sim_release

        if generator is not None and is_sim_release(generator):  # before a 2.45 GB download
            raise UsageError(f"{generator} is a text-to-image generator: its samples need prompts",
                             hint="pass --prompt TEXT (repeatable) or --prompts FILE")
        from simcli.sampling.run import SAMPLER_FLAGS, resolve_heun_settings, sample_to_file

        sampler = None
        sampler_options = (steps, churn, s_min, s_max, s_noise)
        if generator is not None and (paper or any(v is not None for v in sampler_options)):
            raise UsageError(f"{', '.join(SAMPLER_FLAGS)} and --paper apply to --teacher only",
                             hint="a generator samples at the noise levels its run trained (one evaluation each)")
        if teacher is not None:
            sampler = resolve_heun_settings(teacher, paper=paper, steps=steps, churn=churn, s_min=s_min,
                                            s_max=s_max, s_noise=s_noise)
        summary = sample_to_file(
            out, generator=generator, teacher=teacher, sampler=sampler, n=n, seed=seed,
            batch_size=batch_size, device=device, overwrite=force, class_label=class_label, grid=grid, plot=plot,
            guide=(guide, guidance) if guide is not None else None,
        )
        if json_out:
            print_json(summary)
        else:
            stderr_console().print(f"wrote {summary['n']} samples ({summary['source']}) to {summary['out']}")
            _print_files(summary)


def _text_to_image(out, generator, teacher, prompt, prompts, n, seed, batch_size, device, steps, guidance, resolution,
                   force, grid, json_out, other) -> None:
    """sample --prompt/--prompts: a text-to-image generator, or a diffusers teacher's own pipeline."""
    if any(v is not None for v in other):
        raise UsageError("--churn, --s-min, --s-max, --s-noise, --class, --plot and --paper do not apply to text-to-image samples")
    from simcli.sampling.text_to_image import sample_prompts, text_samples_to_file

    summary = text_samples_to_file(
        out, generator=generator, teacher=teacher, prompts=sample_prompts(prompt, prompts, n), seed=seed,
        batch_size=min(batch_size, 64), device=device, steps=steps, guidance_scale=guidance, resolution=resolution,
        overwrite=force, grid=grid,
    )
    if json_out:
        print_json(summary)
    else:
        stderr_console().print(f"wrote {summary['n']} samples ({summary['source']}, {summary['prompts']} prompts) to {summary['out']}")
        _print_files(summary)


def _print_files(summary: dict) -> None:
    """The other files written (grid, plot), and which snapshot a run directory's samples came from (stderr)."""
    for key in ("grid", "plot"):
        if summary.get(key):
            stderr_console().print(f"wrote {summary[key]}", soft_wrap=True, markup=False)
    if summary.get("generator_chosen") == "the newest snapshot":
        stderr_console().print(f"sampled {summary['generator']}, the newest snapshot of its run", soft_wrap=True,
                               markup=False)
