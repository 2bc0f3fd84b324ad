"""`simcli eval`: FID, FD-DINOv2, IS, KID and precision/recall of images, CLIP and aesthetic scores of text-to-image
samples, or exact metrics against a mixture teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from simcli.cli.errors import reported_errors
from simcli.cli.options import DeviceOpt, EvalTeacherOpt, JsonOpt, SeedOpt, ThreadsOpt
from simcli.cli.output import print_json, stderr_console, stdout_console
from simcli.errors import UsageError

EPILOG = """Examples:

  simcli eval --generator runs/cifar10-sim --fid --is --ref cifar10-train --n 50000

  simcli eval --samples samples/ --fid --ref ref-images/ --backend clean-fid

  simcli eval --samples imagenet512-samples/ --fid --fd-dinov2 --ref img512 --backend clean-fid

  simcli eval --samples ref-images/ --save-stats cifar10-ref.npz

  simcli eval --teacher gmm-ring8 --generator runs/ring8-sim --json

  simcli eval --samples pixart-coco.npz --clip-score --aesthetic --prompts coco-val.txt

Images: a folder (searched recursively), an npz from 'simcli sample', or a generator sampled in memory
(seeds 0..N-1). References: a name (cifar10-train, ffhq64, afhqv2-64, imagenet64; digits-train, digits-test
with --backend digits), a statistics npz or a folder of images (its statistics are computed once and cached).
Offline, give --feature-weights PATH for Inception.

FD-DINOv2 (--fd-dinov2) is EDM2's: DINOv2 ViT-L/14 (dinov2_vitl14_pretrain.pth: --dinov2-weights FILE, or
--feature-weights FILE when no Inception metric runs, else torch hub's cache $TORCH_HOME/hub/checkpoints, else
simcli's cache, downloaded once) on images resized to 224 (--dinov2-resize torch|pil). Its references: EDM2's img512
or img64 (their 'fd_dinov2' statistics; with --fid, their 'fid' ones), a folder or .npz of images, or statistics saved
by --fd-dinov2 --save-stats FILE (FILE itself, or FILE-dinov2.npz beside it when Inception statistics are saved too;
no --ref is needed then).

Text-to-image: --clip-score (openai/clip-vit-large-patch14 from the Hugging Face cache, or --clip-model DIR) needs
one prompt per image in sample order (--prompts FILE, else the npz's 'prompts' array); --aesthetic is the LAION
aesthetic predictor on open_clip ViT-L-14/openai (head from simcli's cache or --aesthetic-weights FILE).
"""

GENERATOR_DEFAULT_N = 50000  # the EDM/SiD protocol
MIXTURE_DEFAULT_N = 10000
TEXT_KEYS = ("clip_score", "aesthetic")  # text-to-image metrics (simcli.eval.text_image)


def eval_command(
    samples: Annotated[Path | None, typer.Option("--samples", help="Images: a folder or an .npz from 'simcli sample'. Required: this or --generator.")] = None,
    generator: Annotated[Path | None, typer.Option("--generator", help="Run directory or generator snapshot (sampled in memory). Required: this or --samples.")] = None,
    fid: Annotated[bool, typer.Option("--fid", help="Frechet Inception Distance against --ref.")] = False,
    fd_dinov2: Annotated[bool, typer.Option("--fd-dinov2", help="Frechet distance of DINOv2 ViT-L/14 features against --ref, as EDM2 computes it.")] = False,
    inception_score: Annotated[bool, typer.Option("--is", help="Inception Score (10 splits; torch-fidelity or digits).")] = False,
    kid: Annotated[bool, typer.Option("--kid", help="Kernel Inception Distance against --ref images.")] = False,
    prc: Annotated[bool, typer.Option("--prc", help="Precision and recall against --ref images.")] = False,
    nearest: Annotated[bool, typer.Option("--nearest", help="Memorisation check: the median (and 1st percentile) pixel distance of each image to its nearest --ref image, in [-1, 1] units (--ref: a folder or .npz of images, e.g. the training set).")] = False,
    ref: Annotated[str | None, typer.Option("--ref", help="Reference: a name, a statistics .npz or a folder of images.")] = None,
    backend: Annotated[str, typer.Option("--backend", help="Feature backend: torch-fidelity, clean-fid, or digits (8x8 digits).")] = "torch-fidelity",
    mode: Annotated[str, typer.Option("--mode", help="clean-fid resize mode: legacy_tensorflow, clean, legacy_pytorch.")] = "legacy_tensorflow",
    feature_weights: Annotated[Path | None, typer.Option("--feature-weights", help="Local feature-network weights (Inception offline; another digits classifier; DINOv2's when --fd-dinov2 is the only feature metric).")] = None,
    dinov2_weights: Annotated[Path | None, typer.Option("--dinov2-weights", metavar="FILE", help="Local dinov2_vitl14_pretrain.pth for --fd-dinov2 (default: torch hub's cache, else simcli's, downloaded once).")] = None,
    dinov2_resize: Annotated[str, typer.Option("--dinov2-resize", metavar="MODE", help="FD-DINOv2 resize to 224: torch (bicubic, antialias; EDM2's default) or pil (PIL bicubic).")] = "torch",
    save_stats: Annotated[Path | None, typer.Option("--save-stats", help="Also write the images' feature statistics to this .npz.")] = None,
    clip_score: Annotated[bool, typer.Option("--clip-score", help="CLIP score of each image against its prompt: 100 * max(cos, 0), averaged (torchmetrics' definition). Needs the prompts.")] = False,
    aesthetic: Annotated[bool, typer.Option("--aesthetic", help="LAION aesthetic score (improved-aesthetic-predictor head on CLIP ViT-L/14).")] = False,
    prompts: Annotated[Path | None, typer.Option("--prompts", metavar="FILE", help="The samples' prompts, one per line in sample order (.txt), or JSON lines with a 'prompt' field (.jsonl). Default: the npz's 'prompts' array. With a text-to-image --generator (or sim-dit-600m): the prompts it is sampled on, image i from seed --seed + i with prompt i (cycled; --n defaults to one image per prompt).")] = None,
    clip_model: Annotated[Path | None, typer.Option("--clip-model", metavar="DIR", help="Local CLIP model folder for --clip-score (default: openai/clip-vit-large-patch14 from the Hugging Face cache).")] = None,
    aesthetic_weights: Annotated[Path | None, typer.Option("--aesthetic-weights", metavar="FILE", help="Local sac+logos+ava1-l14-linearMSE.pth for --aesthetic (default: simcli's cache, downloaded once).")] = None,
    teacher: EvalTeacherOpt = None,
    n: Annotated[int | None, typer.Option("--n", min=2, help="Images to use (default: all of --samples; 50000 from a generator).")] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 250,
    mmd_bandwidth: Annotated[float | None, typer.Option("--mmd-bandwidth", help="Mixtures: RBF bandwidth of MMD^2.")] = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score images (FID, FD-DINOv2, IS, KID, precision/recall; CLIP and aesthetic scores) or, with --teacher gmm-...,
    samples against the exact mixture."""
    with reported_errors():
        from simcli.runtime import set_cpu_threads

        set_cpu_threads(threads)
        if (samples is None) == (generator is None):
            raise UsageError("give exactly one of --samples and --generator")
        text_metrics = _text_metrics(clip_score, aesthetic, prompts, clip_model, aesthetic_weights, teacher)
        if teacher is not None:
            _exact(teacher, samples, generator, n or MIXTURE_DEFAULT_N, seed, mmd_bandwidth, device, json_out)
            return
        from simcli.eval.image_eval import evaluate_images
        from simcli.runtime import resolve_device

        metrics = {name for name, on in (("fid", fid), ("is", inception_score), ("kid", kid), ("prc", prc),
                                         ("nearest", nearest), ("fd_dinov2", fd_dinov2)) if on}
        if not fd_dinov2 and (dinov2_weights is not None or dinov2_resize != "torch"):
            raise UsageError("--dinov2-weights and --dinov2-resize are options of --fd-dinov2", hint="add --fd-dinov2")
        if not metrics and save_stats is None and not text_metrics:
            metrics = {"fid", "is"} if backend == "torch-fidelity" else {"fid"}
        if ref is not None and not metrics:
            raise UsageError("--ref given, but no metric uses it", hint="add --fid, --fd-dinov2, --kid, --prc or --nearest")
        if save_stats is not None and save_stats.suffix != ".npz":
            raise UsageError(f"--save-stats must name an .npz file, got {save_stats.name}")
        source = generator if generator is not None else samples
        count = n if n is not None or generator is None else GENERATOR_DEFAULT_N
        text_report = None
        if text_metrics:  # first: its likeliest mistakes (prompts) are found before any model loads
            from simcli.eval.text_image import evaluate_text_image

            text_report = evaluate_text_image(
                source, metrics=text_metrics, prompts_file=prompts, clip_model=clip_model,
                aesthetic_weights=aesthetic_weights, n=n if prompts is not None else count, seed=seed,
                batch_size=batch_size,
                device=resolve_device(device),
            )
            if not metrics and save_stats is None:
                _print_text_report(text_report, json_out)
                return
        report = evaluate_images(
            source,
            ref=ref, metrics=metrics, backend=backend, mode=mode, feature_weights=feature_weights,
            n=count, seed=seed, batch_size=batch_size, device=resolve_device(device), save_stats=save_stats,
            dinov2_weights=dinov2_weights, dinov2_resize=dinov2_resize,
        )
        if text_report is not None:
            report.update({key: text_report[key] for key in ("prompts", *TEXT_KEYS) if key in text_report})
        if json_out:
            print_json(report)
        else:
            _print_image_report(report)
            _print_text_lines(report)
            _print_generator_choice(report)


def _text_metrics(clip_score: bool, aesthetic: bool, prompts, clip_model, aesthetic_weights, teacher) -> set[str]:
    """The text-image metrics asked for; refuses their options without them (and with --teacher)."""
    chosen = {name for name, on in zip(TEXT_KEYS, (clip_score, aesthetic), strict=True) if on}
    if teacher is not None and (chosen or prompts is not None):
        raise UsageError("--clip-score, --aesthetic and --prompts score images, not mixture samples",
                         hint="drop --teacher")
    if prompts is not None and not chosen:
        raise UsageError("--prompts given, but no metric uses it", hint="add --clip-score or --aesthetic")
    if clip_model is not None and not clip_score:
        raise UsageError("--clip-model given, but --clip-score is not", hint="add --clip-score")
    if aesthetic_weights is not None and not aesthetic:
        raise UsageError("--aesthetic-weights given, but --aesthetic is not", hint="add --aesthetic")
    return chosen


def _print_text_report(report: dict, json_out: bool) -> None:
    if json_out:
        print_json(report)
        return
    stdout_console().print(report["source"], markup=False)
    _print_text_lines(report)


def _print_text_lines(report: dict) -> None:
    """One line per text-image metric on stdout; the prompt set on stderr."""
    if report.get("prompts"):
        p = report["prompts"]
        stderr_console().print(f"prompts: {p['source']} ({p['n']}, sha256 {p['sha256'][:12]})", markup=False)
    labels = {"clip_score": ("CLIP score", "model"), "aesthetic": ("aesthetic", "backbone")}
    for key in TEXT_KEYS:
        if key in report:
            label, what = labels[key]
            entry = report[key]
            stdout_console().print(f"{label}: {entry['mean']:.4f} +- {entry['std']:.4f} "
                                   f"(n={entry['n']}, {entry[what]})", markup=False)


def _print_image_report(report: dict) -> None:
    extractor = f", {report['extractor']}" if "extractor" in report else ""
    table = Table(title=f"{report['source']}: {report['n']} images{extractor}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("FID", "fid", "{:.4f}"), ("FD-DINOv2", "fd_dinov2", "{:.4f}"), ("IS", "is_mean", "{:.4f}"),
            ("KID", "kid_mean", "{:.6f}"),
            ("precision", "precision", "{:.4f}"), ("recall", "recall", "{:.4f}"),
            ("nearest --ref image, median distance", "nearest_median", "{:.4f}"),
            ("nearest --ref image, 1st percentile", "nearest_p01", "{:.4f}")]
    spreads = {"is_mean": "is_std", "kid_mean": "kid_std"}
    for label, key, fmt in rows:
        if key in report:
            value = fmt.format(report[key])
            if key in spreads:
                value += " +- " + fmt.format(report[spreads[key]])
            table.add_row(label, value)
    stdout_console().print(table)
    if report.get("reference"):
        stderr_console().print(f"reference: {report['reference']}")
    if report.get("note"):
        stderr_console().print(f"note: {report['note']}")
    if report.get("saved_stats"):
        stderr_console().print(f"statistics written to {report['saved_stats']}")
    if report.get("saved_stats_fd_dinov2") not in (None, report.get("saved_stats")):
        stderr_console().print(f"FD-DINOv2 statistics written to {report['saved_stats_fd_dinov2']}")


def _exact(teacher, samples, generator, n, seed, mmd_bandwidth, device, json_out) -> None:
    from simcli.eval.gmm_eval import evaluate_against_teacher

    report = evaluate_against_teacher(
        teacher, samples=samples, generator=generator, n=n, seed=seed, mmd_bandwidth=mmd_bandwidth, device=device
    )
    if json_out:
        print_json(report)
        return
    table = Table(title=f"exact metrics against {teacher} ({report['n']} samples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mode-weight L1 error", f"{report['mode_weight_l1']:.4f}")
    table.add_row(f"precision (within {report['precision_num_std']:g} std)", f"{report['precision']:.4f}")
    table.add_row(f"MMD^2 (RBF bandwidth {report['mmd_bandwidth']:.4g})", f"{report['mmd']:.3e}")
    table.add_row(f"sliced W2 ({report['sw2_num_projections']} directions)", f"{report['sw2']:.4f}")
    table.add_row("mode weights", " ".join(f"{w:.3f}" for w in report["mode_weights"]))
    stdout_console().print(table)
    _print_generator_choice(report)


def _print_generator_choice(report: dict) -> None:
    """For a run directory: which snapshot was scored (its newest), and generator-best beside it when there is one."""
    if report.get("generator_chosen") != "the newest snapshot":
        return
    line = f"scored {report['generator']}, the newest snapshot of its run"
    if report.get("best_generator"):
        line += (f"; {report['best_generator']} (the best in-training evaluation) is beside it: pass it as --generator "
                 "to score that one")
    stderr_console().print(line, soft_wrap=True, markup=False)
