"""Export a generator distilled from a diffusers teacher as a diffusers pipeline folder.

The folder loads with diffusers alone (`DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)`) and makes
the images `simcli sample --generator` makes for the same prompts and seeds:

    DIR/model_index.json      _class_name ["pipeline_simcli", "SimcliGeneratorPipeline"]; the components the folder
                              holds; `simcli`: the family, the noise levels with their network times and EDM
                              coefficients, the latent shape, the prompt token limit, where referenced parts live
    DIR/pipeline_simcli.py    the pipeline class (simcli/export/diffusers_template.py; torch and diffusers only)
    DIR/transformer/ or unet/ the generator's network (unet: SD1.5, SDXL), saved by its diffusers class's
                              save_pretrained
    DIR/vae, text_encoder*, tokenizer*   copied from the teacher pipeline (components="copy"), or absent
                              (components="reference": the pipeline loads them from the teacher's Hub repo or folder)
    DIR/LOADING.md            how to load it and reproduce simcli's seeds

Why a custom pipeline and not the family's pipeline with a one-step scheduler: simcli draws every image's latent
from its own CPU generator (seed + i), runs the network unguided at its own noise level sigma_init (not a scheduler
timestep: VP networks take the nearest training bin, c_in and c_out use sigma_init itself) and re-noises few-step
generators from the same generators; a scheduler sees none of that, the pipeline class does all of it in a few
lines. Prompts are still embedded by the family's own pipeline class (its encode_prompt), and decoded by its VAE.

Nothing partial is left: the folder is built beside the target and renamed into place at the end
(simcli.export.folder.build_into_place). `simcli export --format diffusers` writes the same folder with the files every
export folder holds (write_diffusers_folder: the model card README.md, the grid, the run spec, simcli-export.json).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from simcli.errors import UsageError
from simcli.export.edm_file import EdmExport, run_dir_of, snapshot_record
from simcli.export.folder import (
    SUMMARY_FILE,
    build_into_place,
    check_out_apart,
    check_out_folder,
    chosen_grid,
    write_run_files,
)
from simcli.export.model_card import eval_records, render_model_card
from simcli.export.single_file import network_state
from simcli.nets.lora import lora_settings
from simcli.nets.prediction import preconditioning
from simcli.rundir.atomic import write_json_atomic
from simcli.sampling.generator import load_generator, snapshot_sigmas
from simcli.teachers.diffusers_teacher import is_diffusers_name

Components = Literal["reference", "copy"]
COMPONENT_MODES: tuple[str, ...] = ("reference", "copy")
FORMAT = "simcli-diffusers-export/1"
PIPELINE_FILE = "pipeline_simcli.py"
PIPELINE_CLASS = "SimcliGeneratorPipeline"
TEMPLATE = Path(__file__).with_name("diffusers_template.py")
EXPORTED_FAMILIES = ("pixart-alpha", "pixart-sigma", "sd3", "flux", "sana", "sd15", "sdxl")
LOADING_FILE = "LOADING.md"


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} exists and is not an empty directory", hint="give --out a new or empty folder")
    if not out.parent.is_dir():
        raise UsageError(f"directory {out.parent} does not exist", hint="create it first")


def _teacher_of(meta: dict[str, Any], file: Path) -> str:
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    teacher = spec.get("teacher")
    if not isinstance(teacher, str) or not is_diffusers_name(teacher):
        raise UsageError(f"{file} was not distilled from a diffusers pipeline (teacher {teacher!r}): only those export "
                         "as a diffusers pipeline", hint="export it with --format safetensors instead")
    return teacher


def _steps(net: Any, sigmas: tuple[float, ...]) -> list[dict[str, Any]]:
    """Each noise level with the network time and EDM coefficients simcli's wrapper computes there (float32, as it
    does: the JSON floats hold the float32 values exactly)."""
    steps = []
    for sigma in sigmas:
        level = torch.full((1,), sigma, dtype=torch.float32)
        c_in, c_skip, c_out = (float(c[0]) for c in preconditioning(net.prediction, level))
        time = net.network_time(level)[0]
        steps.append({"sigma": sigma, "network_time": int(time) if not time.is_floating_point() else float(time),
                      "c_in": c_in, "c_skip": c_skip, "c_out": c_out})
    return steps


def _component_classes(source: Any) -> dict[str, list[str]]:
    """[library, class] of the VAE, tokenizers and text encoders, as the teacher's model_index.json names them."""
    index = source.model_index()
    names = ["vae", *(name for part in source.family.text for name in (part.tokenizer, part.encoder))]
    found = {}
    for name in names:
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise UsageError(f"the teacher's model_index.json has no {name} entry", hint="is it a complete pipeline?")
        found[name] = list(entry)
    return found


def _record(net: Any, meta: dict[str, Any], file: Path, source: Any, components: str) -> dict[str, Any]:
    family = source.family
    sigmas = snapshot_sigmas(meta, file)
    steps = _steps(net, sigmas)
    guidance = net.conditioning.guidance
    return {
        "format": FORMAT,
        "family": family.key,
        "pipeline_class": family.pipeline_class,
        "teacher": meta["spec"]["teacher"],
        "sigma_init": float(meta["sigma_init"]),
        "steps": steps,
        "time_dtype": "int64" if isinstance(steps[0]["network_time"], int) else "float32",
        "latent_shape": [int(s) for s in net.sample_shape],
        "vae_scale_factor": int(net.vae_scale_factor),
        "max_sequence_length": int(source.max_tokens),
        "embedded_guidance": float(net.guidance_scale) if guidance == "embedded" else None,
        "components": _component_classes(source),
        "components_from": None if components == "copy" else {"location": source.location,
                                                               "revision": source.revision, "local": source.local},
        "images_seen": meta.get("images_seen"),
    }


def loading_text(record: dict[str, Any]) -> str:
    """LOADING.md: how to load the folder with diffusers and reproduce `simcli sample --generator`'s seeds."""
    where = record["components_from"]
    parts = ("The VAE, tokenizer(s) and text encoder(s) are copies of the teacher pipeline's." if where is None else
             f"The VAE, tokenizer(s) and text encoder(s) are not in this folder: the pipeline loads them from the "
             f"teacher pipeline `{where['location']}`" + (f" (revision {where['revision']})" if where["revision"]
                                                           else "") + " with `from_pretrained(..., subfolder=NAME)`"
             + (" (a local folder: keep it where it is, or pass the components to from_pretrained)." if where["local"]
                else "."))
    steps = len(record["steps"])
    return f"""# Loading this generator with diffusers

A {'one-step' if steps == 1 else f'{steps}-step'} generator distilled by simcli from `{record['teacher']}`
({record['pipeline_class']} family). Its pipeline class is in `{PIPELINE_FILE}` (torch and diffusers only), so
diffusers needs `trust_remote_code=True`:

```python
import torch
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("PATH/TO/THIS/FOLDER", trust_remote_code=True)
images = pipe(["a photo of a cat", "a red car on the road"], seed=0).images   # PIL images
```

{parts}

## The same images as `simcli sample`

`simcli sample --generator RUN --prompt P1 --prompt P2 --seed S` gives image i the seed S + i and draws its latent
from its own CPU `torch.Generator` seeded with S + i. The pipeline does the same with `seed=S` (the default is 0),
or takes the generators themselves, one per image:

```python
generators = [torch.Generator("cpu").manual_seed(S + i) for i in range(2)]
images = pipe(["P1", "P2"], generator=generators, output_type="np").images   # [2, H, W, 3] in [0, 1]
```

`np.round(images * 255)` are simcli's uint8 images. simcli on the CPU runs everything in float32, as the pipeline
does by default; on a GPU it embeds prompts with bfloat16 text encoders (`pipe.to("cuda")`, then
`pipe.text_encoder.to(torch.bfloat16)` and likewise any text_encoder_2/_3, does the same) and keeps the VAE in
float32.

What the pipeline computes is in the `simcli` record of model_index.json: the generator runs unguided, one network
evaluation at each noise level ({', '.join(f"{s['sigma']:g}" for s in record['steps'])}), on latents of
{' x '.join(str(n) for n in record['latent_shape'])} ({record['latent_shape'][1] * record['vae_scale_factor']} x \
{record['latent_shape'][2] * record['vae_scale_factor']} pixels, the size it was trained at); prompts are embedded by
diffusers' own `{record['pipeline_class']}.encode_prompt` with max_sequence_length={record['max_sequence_length']}.
"""


def _copy_components(source: Any, record: dict[str, Any], folder: Path) -> None:
    names = tuple(record["components"])
    patterns = tuple(dict.fromkeys(source.encoder_files() + source.decoder_files()))
    teacher_folder = source.folder(patterns)
    for name in names:
        if not (teacher_folder / name).is_dir():
            raise UsageError(f"the teacher pipeline {teacher_folder} has no {name} folder", hint="is it complete?")
        shutil.copytree(teacher_folder / name, folder / name)


def _save_network(net: Any, meta: dict[str, Any], folder: Path) -> list[str]:
    from simcli.nets.t2i_extra import require_diffusers
    from simcli.teachers.hf_loading import quiet_libraries

    quiet_libraries()  # diffusers' own progress bars stay off simcli's output
    network = net.network
    fresh = getattr(require_diffusers(), type(network).__name__).from_config(dict(network.config))
    state = network_state(net, meta)
    fresh.load_state_dict(state, strict=True)
    dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if dtype != torch.float32:  # the snapshot's precision (from_config builds float32)
        fresh = fresh.to(dtype)
    component = net.backbone.component
    fresh.save_pretrained(folder / component)
    return [type(network).__module__.split(".")[0], type(network).__name__]


@dataclass(frozen=True)
class DiffusersExport:
    """A generator snapshot of a diffusers teacher, loaded and checked, ready to be written as a pipeline folder."""

    net: Any
    """The generator network (simcli's wrapper of the diffusers network), on the CPU."""
    meta: dict[str, Any]
    """The snapshot's metadata."""
    file: Path
    """The generator snapshot exported."""
    teacher: str
    """The teacher as the run spec names it."""
    source: Any
    """The teacher pipeline (simcli.teachers.registry.teacher_pipeline)."""
    components: str
    """'reference' or 'copy'."""
    record: dict[str, Any]
    """The `simcli` record of model_index.json."""


def check_components(components: str) -> None:
    """Refuse, in one line, a components mode other than reference and copy."""
    if components not in COMPONENT_MODES:
        raise UsageError(f"components must be one of {', '.join(COMPONENT_MODES)}, got {components!r}",
                         hint="reference keeps the folder small; copy makes it self-contained")


def prepare_diffusers(generator: str | Path, components: Components = "reference") -> DiffusersExport:
    """Load and check a generator snapshot (or a run's newest) for export as a diffusers pipeline; writes nothing.
    Refused in one line: an unknown components mode, another teacher (before its weights load), a family this export
    does not cover."""
    from simcli.rundir.snapshots import read_generator
    from simcli.teachers.registry import teacher_pipeline

    check_components(components)
    _, meta, file = read_generator(generator)
    teacher = _teacher_of(meta, file)
    source = teacher_pipeline(teacher)
    if source.family.key not in EXPORTED_FAMILIES:
        raise UsageError(f"generators of {source.family.pipeline_class} teachers do not export as diffusers pipelines "
                         "yet", hint=f"exported families: {', '.join(EXPORTED_FAMILIES)}")
    net, meta, file = load_generator(file, "cpu")
    record = _record(net, meta, file, source, components)
    return DiffusersExport(net, meta, file, teacher, source, components, record)


def write_diffusers_files(export: DiffusersExport, folder: Path) -> list[str]:
    """Write the pipeline's files into the existing folder `folder` (a fresh one: simcli.export.folder moves it into
    place); returns the names written at its top level."""
    net, record = export.net, export.record
    network_entry = _save_network(net, export.meta, folder)
    if export.components == "copy":
        _copy_components(export.source, record, folder)
    shutil.copyfile(TEMPLATE, folder / PIPELINE_FILE)
    from diffusers import __version__ as diffusers_version

    index: dict[str, Any] = {"_class_name": [Path(PIPELINE_FILE).stem, PIPELINE_CLASS],
                             "_diffusers_version": diffusers_version, net.backbone.component: network_entry}
    if export.components == "copy":
        index.update(record["components"])
    index["simcli"] = record
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / LOADING_FILE).write_text(loading_text(record))
    return sorted(p.name for p in folder.iterdir())


def diffusers_summary(export: DiffusersExport, out: Path, files: list[str]) -> dict[str, Any]:
    """What export_diffusers returns (the module docstring)."""
    record = export.record
    return {"out": str(out), "format": "diffusers", "generator": str(export.file), "teacher": export.teacher,
            "family": record["family"], "components": export.components, "steps": len(record["steps"]),
            "sigmas": [s["sigma"] for s in record["steps"]], "files": files, "loading": loading_text(record)}


def export_diffusers(generator: str | Path, out: Path, *, components: Components = "reference") -> dict[str, Any]:
    """Write the diffusers pipeline folder `out` of a generator snapshot (or a run's newest) distilled from a
    diffusers teacher; returns a summary (module docstring). Refused in one line: another teacher, an existing
    non-empty `out`, an unknown components mode, a family this export does not cover. (`simcli export --format
    diffusers` writes the same folder with a model card: write_diffusers_folder.)"""
    out = Path(out)
    check_components(components)
    _check_out(out)
    export = prepare_diffusers(generator, components)
    files = build_into_place(out, lambda folder: write_diffusers_files(export, folder))
    return diffusers_summary(export, out, files)


def card_facts(export: DiffusersExport) -> EdmExport:
    """The model card's facts of a diffusers pipeline export, as an EdmExport without tensors: the snapshot record
    an EDM export's metadata holds (edm_file.snapshot_record), with the network's architecture record."""
    meta = export.meta
    lora = lora_settings(meta) if "lora" in meta else None
    sigmas = tuple(step["sigma"] for step in export.record["steps"])
    metadata = {"architecture": meta["architecture"], **snapshot_record(meta, export.file, sigmas, lora)}
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None
    return EdmExport({}, metadata, export.file, run_dir_of(export.file), spec)


def write_diffusers_folder(export: DiffusersExport, out: Path, force: bool = False) -> dict[str, Any]:
    """Write the diffusers pipeline folder at `out` (the module docstring) with the files every export
    folder holds: README.md (the model card, its usage section the pipeline's LOADING.md), the run's grid, the run
    spec and simcli-export.json. Checked, built and moved into place as write_export_folder does; returns the summary."""
    out = Path(out).absolute()
    check_out_folder(out, force)
    check_out_apart(out, export.file)
    facts = card_facts(export)
    grid, caption = chosen_grid(facts)
    card = render_model_card(facts, out.name, eval_records(facts.run_dir), grid.name if grid else None, caption,
                             diffusers_usage=loading_text(export.record))
    meta = facts.metadata
    summary: dict[str, Any] = {
        "format": FORMAT, "out": str(out), "files": [], "source": str(export.file),
        "run_dir": str(facts.run_dir) if facts.run_dir is not None else None,
        **{k: meta.get(k) for k in ("teacher", "method", "images_seen", "sigma_init", "generator_sigmas", "steps",
                                    "spec_sha256")},
        "family": export.record["family"], "pipeline_class": export.record["pipeline_class"],
        "components": export.components,
        "class_name": type(export.net.network).__name__,
    }

    def write(tmp: Path) -> None:
        write_diffusers_files(export, tmp)
        write_run_files(facts, tmp, grid, card)
        summary["files"] = sorted([*(p.name for p in tmp.iterdir()), SUMMARY_FILE])
        write_json_atomic(tmp / SUMMARY_FILE, summary)

    build_into_place(out, write)
    return summary
