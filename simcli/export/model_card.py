"""The exported folder's README.md: a Hugging Face model card (YAML front matter, then Markdown).

Front matter: library_name (simcli; diffusers for a diffusers pipeline export), license (the teacher's:
teacher_licence, HUB_LICENCES), base_model (a Hub teacher's repository), tags (one-step, diffusion-distillation,
simcli, the method's), pipeline_tag (unconditional networks, text-to-image pipelines). Sections: the teacher and its
licence, the method and its main settings (from the run spec recorded in the snapshot), the run's metrics with their
protocol (the last and the best evaluation record of metrics.jsonl, values exactly as logged), the command that made
it (simcli records the resolved spec, not the command line: an equivalent command reruns that spec), how to load the
file (a diffusers pipeline export: its LOADING.md), and the sample grid. Pure text: no torch, nothing written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simcli.export.edm_file import EdmExport
from simcli.rundir.layout import METRICS_FILE
from simcli.rundir.metrics import read_records
from simcli.teachers.edm2_catalog import is_edm2_name
from simcli.teachers.edm_catalog import EDM_TEACHERS
from simcli.teachers.hub_teachers import HUB_TEACHERS, HUB_URL

METHOD_TAGS = {"sim": "score-implicit-matching", "sid": "score-identity-distillation", "di": "diff-instruct",
               "dmd2": "dmd2"}
METHOD_NAMES = {"sim": "Score Implicit Matching (SIM, Luo et al. 2024)",
                "sid": "Score identity Distillation (SiD, Zhou et al. 2024)",
                "di": "Diff-Instruct (Luo et al. 2023)", "dmd2": "DMD2 (Yin et al. 2024)"}
EDM_LICENCE = "cc-by-nc-sa-4.0"
PROJECT_LICENCE = "mit"  # pyproject.toml: license = { text = "MIT" }
SPEC_FILE = "distill-config.json"
"""The run spec as the export folder holds it: `simcli distill --config` takes it as it is."""


HUB_LICENCES: dict[str, tuple[str, str]] = {
    # Each from the `license:` (and `license_name:`) field of the repository's model card on the Hugging Face Hub.
    # PixArt-alpha/PixArt-XL-2-512x512: license: openrail++
    "pixart-alpha-512": ("openrail++", "the CreativeML Open RAIL++-M License"),
    # black-forest-labs/FLUX.1-schnell: license: apache-2.0
    "flux1-schnell": ("apache-2.0", "the Apache License 2.0"),
    # black-forest-labs/FLUX.1-dev: license: other, license_name: flux-1-dev-non-commercial-license
    "flux1-dev": ("other", "the FLUX.1 [dev] Non-Commercial License"),
    # stabilityai/stable-diffusion-3.5-medium: license: other, license_name: stabilityai-ai-community
    "sd35-medium": ("other", "the Stability AI Community License"),
}
"""The Hugging Face licence id and name of Hub teachers whose licence simcli knows; any other Hub teacher (PixArt-Sigma,
SANA, SDXL, SD 1.5) is 'other', its repository named, and the reader sent to its page."""


@dataclass(frozen=True)
class TeacherLicence:
    """The licence a distilled network inherits from its teacher."""

    licence: str
    """The Hugging Face licence id ('cc-by-nc-sa-4.0', 'mit', 'other')."""
    text: str
    """A sentence for the card: whose weights, which licence, what it means for this one."""
    base_model: str | None = None
    """The teacher's Hub repository, when it is one."""


def _official_edm(name: str) -> str | None:
    """'EDM' or 'EDM2' when the name (or a local file's name) is one of NVIDIA's official checkpoints, else None."""
    file_name = Path(name).name
    if name in EDM_TEACHERS or any(t.file_name == file_name for t in EDM_TEACHERS.values()):
        return "EDM"
    if is_edm2_name(name) or (file_name.endswith(".pkl") and is_edm2_name(file_name.removesuffix(".pkl"))):
        return "EDM2"
    return None


def teacher_licence(teacher: str | None) -> TeacherLicence:
    """The licence of a teacher by its spec name; 'other' (and saying so) when simcli cannot tell."""
    if teacher is None:
        return TeacherLicence("other", "The snapshot records no teacher, so its licence is unknown: check it before "
                                       "sharing this network.")
    family = _official_edm(teacher)
    if family is not None:
        repo = "NVlabs/edm" if family == "EDM" else "NVlabs/edm2"
        return TeacherLicence(EDM_LICENCE, f"NVIDIA's {family} checkpoints ({repo}) are licensed under Creative "
                                           "Commons BY-NC-SA 4.0; a network distilled from one is a derivative work "
                                           "under the same licence: attribution, non-commercial use only, share-alike.")
    if teacher == "digits":
        return TeacherLicence(PROJECT_LICENCE, "The digits teacher ships with simcli (trained by "
                                               "examples/digits/train_teacher.py) under simcli's licence, MIT.")
    if teacher.startswith("gmm"):
        return TeacherLicence(PROJECT_LICENCE, "The teacher is an analytic Gaussian mixture defined by simcli (MIT).")
    hub = HUB_TEACHERS.get(teacher)
    if hub is not None:
        licence, name = HUB_LICENCES.get(teacher, ("other", None))
        which = f"licensed under {name} (`{licence}`)" if name else "under its own licence"
        return TeacherLicence(licence, f"The teacher is {hub.display_name} ({hub.repo_id} on the Hugging Face Hub), "
                                       f"{which}: this network inherits it; read it on the base model's page "
                                       f"({HUB_URL}/{hub.repo_id}) before sharing.", base_model=hub.repo_id)
    return TeacherLicence("other", f"The teacher ({Path(teacher).name}) is not one simcli knows the licence of: it is "
                                   "unknown here, and this network inherits it; check it before sharing.")


# ---------------------------------------------------------------------------------------------- metrics

METRIC_COLUMNS = (("fid", "FID"), ("is_mean", "IS"), ("is_std", "IS std"), ("kid_mean", "KID"),
                  ("precision", "precision"), ("recall", "recall"))


def eval_records(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's evaluation records ('kind': 'eval') in file order; none without a run directory."""
    return [r for r in read_records(run_dir) if r.get("kind") == "eval"] if run_dir is not None else []


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _score(record: dict[str, Any]) -> Any:
    return record.get("score", record.get("fid"))


def last_and_best(records: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """[('last', record), ('best', record)] of the evaluation records (best: the lowest score, FID for images, the
    earliest on ties); one row ('last, best') when they are the same record; [] without records."""
    if not records:
        return []
    last = records[-1]
    scored = [r for r in records if _finite(_score(r))]
    best = min(scored, key=_score) if scored else None  # min keeps the earliest on ties
    if best is None:
        return [("last", last)]
    return [("last, best", last)] if best is last else [("last", last), ("best", best)]


def _cell(value: Any) -> str:
    """A value as the card shows it: numbers exactly as logged (repr), '-' when absent."""
    if value is None:
        return "-"
    return repr(value) if isinstance(value, float) else str(value)


def metrics_section(records: list[dict[str, Any]], source: str = METRICS_FILE, text_to_image: bool = False) -> str:
    """The metrics section: a table of the last and best evaluations and the protocol they were computed with."""
    rows = last_and_best(records)
    if not rows:
        how = ("`simcli eval --generator RUN_DIR --prompts FILE --clip-score --aesthetic` for CLIP and aesthetic scores"
               if text_to_image else "`simcli eval --generator RUN_DIR --fid --ref REF` for FID/IS")
        why = ("in-training evaluation is for image teachers" if text_to_image
               else "it ran without `--eval-every`")
        return (f"## Metrics\n\nThe run logged no evaluation ({why}), so there are no metrics to report. Score the "
                f"generator with {how} under a stated protocol.\n")
    columns = [(k, label) for k, label in METRIC_COLUMNS if any(r.get(k) is not None for _, r in rows)]
    header = ["evaluation", "kimg", *[label for _, label in columns], "samples", "backend", "reference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, r in rows:
        cells = [label, _cell(r.get("kimg")), *[_cell(r.get(k)) for k, _ in columns], _cell(r.get("n")),
                 _cell(r.get("backend")), _cell(r.get("reference"))]
        lines.append("| " + " | ".join(cells) + " |")
    protocol = {(r.get("n"), r.get("backend"), r.get("reference")) for r in records}
    same = "every evaluation used the same protocol" if len(protocol) == 1 else "the protocol changed during the run"
    return (f"## Metrics\n\nEvaluated during distillation: {len(records)} evaluation record(s) in the run's "
            f"`{source}`, {same}. FID is the Frechet distance between the features of `samples` generated images (seeds from the "
            "run's evaluation seed, one network evaluation each) and the `reference` statistics, with the `backend`'s "
            "feature network; IS is the Inception Score of the same images (10 splits). Lower FID is better; 'best' is "
            "the lowest FID. Values are exactly as logged.\n\n" + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- the card


def front_matter(export: EdmExport, licence: TeacherLicence, diffusers: bool = False) -> dict[str, Any]:
    """The YAML front matter as a mapping (diffusers: of a diffusers pipeline export)."""
    method = export.metadata.get("method")
    tags = ["one-step" if export.metadata["steps"] == 1 else "few-step", "diffusion-distillation", "simcli"]
    tags += [METHOD_TAGS[method]] if method in METHOD_TAGS else []
    if diffusers:
        tags += ["diffusers", "text-to-image", *(["safetensors"] if "layout" in export.metadata else [])]
    else:
        class_name = export.metadata["architecture"]["class_name"]
        tags += ["edm2" if class_name == "Precond" else "edm", "safetensors"]
    meta: dict[str, Any] = {"library_name": "diffusers" if diffusers else "simcli", "license": licence.licence,
                            "tags": tags}
    if licence.base_model:
        meta["base_model"] = licence.base_model
    if diffusers:
        meta["pipeline_tag"] = "text-to-image"
    elif not export.metadata["architecture"].get("init_kwargs", {}).get("label_dim"):
        meta["pipeline_tag"] = "unconditional-image-generation"
    return meta


def _settings_table(export: EdmExport) -> str:
    spec, meta = export.spec or {}, export.metadata
    loss, gen, online, training = (spec.get(k) or {} for k in ("loss", "generator", "online", "training"))
    rows = [("method", METHOD_NAMES.get(meta.get("method"), meta.get("method"))),
            ("distance", loss.get("distance") if meta.get("method") == "sim" else None),
            ("sigma_init", meta["sigma_init"]), ("generator steps (network evaluations)", meta["steps"]),
            ("generator noise levels", ", ".join(f"{s:g}" for s in meta["generator_sigmas"])),
            ("batch size", training.get("batch_size")),
            ("generator learning rate", (gen.get("optimizer") or {}).get("lr")),
            ("online model learning rate", (online.get("optimizer") or {}).get("lr")),
            ("EMA half-life (kimg)", (spec.get("ema") or {}).get("halflife_kimg")),
            ("precision", training.get("precision")), ("seed", spec.get("seed")),
            ("images seen", meta.get("images_seen")), ("iterations", meta.get("step"))]
    if "lora" in meta:
        rows.append(("LoRA", f"rank {meta['lora']['rank']}, alpha {meta['lora']['alpha']:g}, merged into the weights"))
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None]
    return "\n".join(lines)


def _usage(export: EdmExport, file_name: str) -> str:
    meta = export.metadata
    kwargs = meta["architecture"].get("init_kwargs", {})
    class_name = meta["architecture"]["class_name"]
    code_file, _ = meta["nvidia_code"].split(" ")
    repo = "NVlabs/edm2" if class_name == "Precond" else "NVlabs/edm"
    labels = (f"labels = torch.nn.functional.one_hot(torch.randint({kwargs['label_dim']}, [16]), "
              f"{kwargs['label_dim']}).float()\n") if kwargs.get("label_dim") else "labels = None\n"
    few_step = "" if meta["steps"] == 1 else (
        "    for s in meta[\"generator_sigmas\"][1:]:  # a few-step generator: renoise, denoise\n"
        "        x = net(x + s * torch.randn_like(x), torch.full([16], s), labels)\n")
    to_images = ("    images = (x * 127.5 + 128).clip(0, 255).to(torch.uint8)  # NCHW\n"
                 if "latents" not in meta["architecture"] else "")
    latents = "" if "latents" not in meta["architecture"] else (
        "\nThe outputs are EDM2 latents: decode them with the VAE named in `architecture.latents.vae` after undoing "
        "the per-channel normalisation (`(x - bias) / scale`); the example script does it with diffusers.\n")
    return f"""## How to use

The file holds the generator's weights under the tensor names of {repo}'s `{class_name}` (`{code_file}`), float32, and
in its metadata (JSON values) the architecture record that rebuilds it, `sigma_init` and the noise levels.
With NVIDIA's code (a checkout of {repo} on `sys.path`), one-step generation is G(z) = D(sigma_init z; sigma_init):

```python
import json, torch
from safetensors import safe_open
from safetensors.torch import load_file
from {code_file.removesuffix('.py').replace('/', '.')} import {class_name}

with safe_open("{file_name}", framework="pt") as f:
    meta = {{k: json.loads(v) for k, v in f.metadata().items() if k != "format"}}
net = {class_name}(**meta["architecture"]["init_kwargs"]).eval()
net.load_state_dict(load_file("{file_name}"), strict=True)
sigma = meta["sigma_init"]
z = torch.randn(16, net.img_channels, net.img_resolution, net.img_resolution)
{labels}with torch.no_grad():
    x = net(sigma * z, torch.full([16], sigma), labels)
{few_step}{to_images}```
{latents}
`examples/edm_export/rebuild_with_nvidia_code.py` in simcli does this from the command line. simcli itself samples
the run's own snapshot (`{meta['source_file']}`):
`simcli sample --generator RUN_DIR/{meta['source_file']} --n 64 --out samples/`.
"""


def _command(export: EdmExport) -> str:
    run = export.run_dir.name if export.run_dir is not None else "RUN_DIR"
    if export.spec is None:
        return "## How it was made\n\nThe snapshot records no run spec, so the command that made it is unknown.\n"
    return f"""## How it was made

simcli records a run's resolved spec (`config.json` of the run directory, and in every snapshot), not its command line,
so the command was not recorded. This command reruns exactly that spec (this folder's `{SPEC_FILE}`; its sha256 over
canonical JSON is the file's `spec_sha256`, {export.metadata.get('spec_sha256')}):

```
simcli distill --config {SPEC_FILE} --out {run}
```

The spec names the teacher as `{export.spec.get('teacher')}`; give the same teacher there.
"""


def _grid(grid_name: str | None, grid_note: str) -> str:
    if grid_name is None:
        return ("## Samples\n\nThe run wrote no sample grid (`logging.grid_samples=0`); `simcli sample --generator ... "
                "--grid FILE.png` draws one.\n")
    return f"## Samples\n\n![samples of the generator]({grid_name})\n\n{grid_note}\n"


def _diffusers_usage(loading: str) -> str:
    """The usage section of a diffusers pipeline export: its LOADING.md under '## How to use', each heading one level
    down (lines in code blocks left alone)."""
    lines, in_code = [], False
    for line in loading.strip().splitlines()[1:]:  # the title line becomes the section's
        in_code ^= line.startswith("```")
        lines.append("#" + line if line.startswith("#") and not in_code else line)
    return "## How to use\n" + "\n".join(lines) + "\n"


def render_model_card(export: EdmExport, file_name: str, records: list[dict[str, Any]], grid_name: str | None = None,
                      grid_note: str = "", *, diffusers_usage: str | None = None) -> str:
    """The README.md of an exported folder (file_name: the exported weights; records: the run's evaluation records).
    diffusers_usage: for a text-to-image export, its usage text (a title line, then '##' sections), the card's usage
    section in place of the EDM one: a diffusers pipeline export's LOADING.md (`export` then holds no tensors,
    file_name is the folder's name), or a single-file export's (its metadata has a `layout`: simcli.export.single_file)."""
    meta = export.metadata
    diffusers = diffusers_usage is not None
    licence = teacher_licence((export.spec or {}).get("teacher"))
    teacher = meta.get("teacher") or "an unrecorded teacher"
    method = METHOD_NAMES.get(meta.get("method"), meta.get("method") or "an unrecorded method")
    kind = "one-step" if meta["steps"] == 1 else f"{meta['steps']}-step"
    front = yaml.safe_dump(front_matter(export, licence, diffusers), sort_keys=False).strip()
    exported = ("a diffusers pipeline (`model_index.json`, its pipeline class in `pipeline_simcli.py`)"
                if diffusers and "layout" not in meta else f"`{file_name}`")
    if "layout" in meta:
        exported += f", one safetensors file in the teacher's original key layout (`{meta['layout']}`)"
    usage = _diffusers_usage(diffusers_usage) if diffusers else _usage(export, file_name)
    seen = meta.get("images_seen")
    seen_text = f" after {seen:,} generated images ({seen / 1000:g} kimg)" if isinstance(seen, int) else ""
    return f"""---
{front}
---

# {kind} generator distilled from {teacher}

A {kind} image generator distilled with {method} by simcli{seen_text}, exported as {exported}.

## Teacher and licence

Teacher: `{teacher}`. Licence of this network: `{licence.licence}`. {licence.text}

## Method and settings

{_settings_table(export)}

{metrics_section(records, text_to_image=diffusers)}
{_command(export)}
{usage}
{_grid(grid_name, grid_note)}"""
