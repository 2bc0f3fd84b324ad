"""`simcli export`: a generator as files other tools load (one safetensors file in the teacher family's key layout, or a
diffusers pipeline folder), with a Hugging Face model card, optionally pushed to the Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simcli.cli.errors import reported_errors
from simcli.cli.options import JsonOpt
from simcli.cli.output import print_json, stderr_console

EPILOG = """Examples:

  simcli export runs/cifar10-sim --format safetensors --out exports/cifar10-sim

  simcli export runs/cifar10-sim/generator-best.safetensors --format safetensors --out exports/cifar10-sim-best

  simcli export runs/cifar10-sim --format safetensors --out exports/cifar10-sim --push-to-hub your-name/cifar10-sim

  simcli export runs/pixart-sim --format diffusers --components copy --out exports/pixart-sim

--format safetensors: the folder holds <name>.safetensors (the generator's weights under the original checkpoint's
tensor names; its metadata records the architecture, sigma_init, the noise levels, the teacher, the method and the
run spec's sha256). It takes EDM-type generators (EDM, EDM2 and the digits teacher's: NVIDIA's layout, float32) and
generators of PixArt, SD3, FLUX and SD 1.x/2.x/SDXL teachers (the original single-file checkpoint's layout, which
diffusers' from_single_file reads for all but PixArt, in the snapshot's precision; flow models also record t_init);
a LoRA snapshot is merged into its teacher's weights. examples/edm_export/ shows NVIDIA's own EDM and EDM2 code loading the file.

--format diffusers: the folder is a diffusers pipeline (model_index.json, pipeline_simcli.py, the network's folder
such as transformer/, LOADING.md) that `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)` loads without
simcli and that makes `simcli sample`'s images for the same prompts and seeds. It takes generators of diffusers
teachers (PixArt, SD3, FLUX, SANA); LoRA adapters are merged. --components reference (the default) leaves the VAE,
tokenizers and text encoders in the teacher's Hub repository or folder, where the pipeline loads them from; copy puts
copies in the folder.

Either folder also holds README.md (a Hugging Face model card: the teacher's licence, the settings, the run's metrics
as logged, the command, how to load it, the sample grid), the run's sample grid, distill-config.json (the run spec:
`simcli distill --config` reruns it) and simcli-export.json. It is written into a temporary folder beside --out and
renamed into place at the end. --push-to-hub uploads the finished folder as one commit, with the token of HF_TOKEN or
`hf auth login`; offline (HF_HUB_OFFLINE, SIMCLI_OFFLINE) it is refused before anything is written.
"""


def export_command(
    source: Annotated[Path, typer.Argument(metavar="RUN_DIR|GENERATOR",
                                           help="Run directory (its newest snapshot) or generator-*.safetensors.")],
    fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="safetensors: one file in the teacher "
                                     "family's key layout (EDM-type generators; PixArt, SD3, FLUX, SD/SDXL); diffusers: a diffusers pipeline "
                                     "folder (generators of diffusers teachers: PixArt, SD3, FLUX, SANA).")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR",
                                      help="The folder to write (new, or empty; --force replaces it).")],
    push_to_hub: Annotated[str | None, typer.Option("--push-to-hub", metavar="REPO",
                                                    help="Also upload the folder to this Hugging Face model repository "
                                                         "(OWNER/NAME; created if missing) as one commit.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty --out folder.")] = False,
    components: Annotated[str | None, typer.Option("--components", metavar="reference|copy",
                                                   help="--format diffusers only: reference (default) loads the VAE, "
                                                        "tokenizers and text encoders from the teacher's repository "
                                                        "or folder; copy puts them in the exported folder.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a distilled generator as files other tools load, with a Hugging Face model card (README.md)."""
    with reported_errors():
        from simcli.export.run import export_generator

        summary = export_generator(source, fmt, out, force=force, push_to_hub=push_to_hub, components=components)
        if json_out:
            print_json(summary)
            return
        console = stderr_console()
        what = (f"{summary['pipeline_class']} family, components {summary['components']}" if fmt == "diffusers" else
                f"{summary['class_name']}, {summary['tensors']} tensors")
        console.print(f"exported {summary['source']} ({what}) to {summary['out']}: {', '.join(summary['files'])}",
                      soft_wrap=True, markup=False)
        if summary["hub"] is not None:
            console.print(f"pushed to {summary['hub']['repo']}: {summary['hub']['commit_url']}", soft_wrap=True,
                          markup=False)
