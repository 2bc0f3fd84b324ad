"""Teacher names: what `--teacher` accepts, and the one `Teacher` record each name loads into.

Every kind of teacher is one `TeacherKind` in `TEACHER_KINDS`: which names it answers to, how a name is made
absolute (file-backed names, so a run resumes from any working directory), the preset `auto` stands for, a
check that needs no network or download, and the loader. A new kind of teacher is added there and nowhere else.

- analytic mixtures: `gmm-ring8`, `gmm-grid25`, `gmm:PATH.json` (exact denoiser, exact samples);
- official EDM checkpoints by name (`edm-cifar10`, ...; see edm_catalog.py) and EDM2 ones (`edm2-img512-xs`, any
  official file stem; see edm2_catalog.py), downloaded into the cache, and local EDM or EDM2 snapshots: any path
  ending in `.pkl`, loaded without running code from it;
- `digits`: the small class-conditional EDM teacher that ships inside simcli (8x8 handwritten digits), and any
  network in simcli's native format: a path ending in `.safetensors` (simcli/teachers/native.py);
- text-to-image diffusers pipelines: official names (`pixart-alpha-512`, `pixart-sigma-512`, `sd35-medium`,
  `flux1-schnell`, `flux1-dev`, `sana-600m-512`, `sdxl-base`, `sd15`; simcli/teachers/hub_teachers.py) read through
  the Hugging Face Hub cache, and `diffusers:PATH`, a local pipeline folder of a supported family
  (simcli/teachers/diffusers_teacher.py).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.errors import UsageError
from simcli.store.download import DownloadProgressFn
from simcli.teachers.diffusers_teacher import (
    DIFFUSERS_PREFIX,
    absolute_diffusers_name,
    architecture_at_resolution,
    check_diffusers_teacher,
    diffusers_preset,
    is_diffusers_name,
)
from simcli.teachers.edm2_catalog import EDM2_NETWORKS, NAME_PATTERNS, Edm2Network, get_edm2_network, is_edm2_name
from simcli.teachers.edm_catalog import EDM_TEACHERS, EdmTeacher
from simcli.teachers.hub_teachers import HUB_TEACHERS

if TYPE_CHECKING:  # the loaders import torch when they run; naming teachers needs no torch
    from simcli.nets.denoiser import Denoiser
    from simcli.teachers.gmm import GaussianMixture
    from simcli.teachers.pipeline_source import DiffusersPipelineSource


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher and what the rest of simcli needs to know about it.

    denoiser       the frozen teacher D_phi (eval mode, parameters without gradients)
    architecture   the rebuild record of its network (`simcli.nets.registry.build_network`), which the generator
                   and the online model copy; None when the teacher has no network (analytic mixtures: simcli
                   fits one first)
    mixture        the analytic distribution, for exact samples and metrics; None for network teachers
    fid_reference  the FID reference of its dataset (`eval --ref` name), None when there is none
    pipeline       text-to-image teachers: where the rest of their pipeline is (a DiffusersPipelineSource that
                   loads the text encoder, the VAE decoder or the whole diffusers pipeline on demand); else None

    What the teacher is conditioned on (class labels, prompts, guidance) is its denoiser's `conditioning`.
    """

    name: str
    kind: str
    display_name: str
    denoiser: Denoiser
    architecture: dict[str, Any] | None = None
    mixture: GaussianMixture | None = None
    fid_reference: str | None = None
    pipeline: DiffusersPipelineSource | None = None


@dataclass(frozen=True)
class TeacherKind:
    """One kind of teacher: the names it answers to and how they load."""

    name: str
    names: tuple[str, ...]
    """Names and name patterns for help texts and error hints."""
    matches: Callable[[str], bool]
    check: Callable[[str], None]
    """Refuses an unusable name (missing or malformed file) without loading a network or downloading."""
    load: Callable[[str, DownloadProgressFn | None], Teacher]
    preset: str | Callable[[str], str]
    """The preset `auto` stands for with this kind of teacher, or a function of the name where it depends on the
    name (EDM teachers: the preset of their dataset)."""
    normalise: Callable[[str], str] = str
    pipeline: Callable[[str], DiffusersPipelineSource] | None = None
    """Text-to-image kinds: the pipeline behind a name (text encoder, VAE, the teacher's own sampler), found
    without loading the teacher's network; None for every other kind."""


# ---------------------------------------------------------------------------------------------- mixtures

def _gmm():
    from simcli.teachers import gmm

    return gmm


NAMED_MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "gmm-ring8": lambda: _gmm().ring(num_modes=8, radius=1.0, std=0.1),
    "gmm-grid25": lambda: _gmm().grid(side=5, spacing=0.5, std=0.05),
}
MIXTURE_FILE_PREFIX = "gmm:"


def _mixture(name: str) -> GaussianMixture:
    if name in NAMED_MIXTURES:
        return NAMED_MIXTURES[name]()
    return _gmm().load_mixture_json(name.removeprefix(MIXTURE_FILE_PREFIX))


def _load_mixture(name: str, on_download: DownloadProgressFn | None) -> Teacher:
    mixture = _mixture(name)
    return Teacher(name, "mixture", name, mixture.eval().requires_grad_(False), mixture=mixture)


def _absolute_mixture_file(name: str) -> str:
    path = name.removeprefix(MIXTURE_FILE_PREFIX)
    if name in NAMED_MIXTURES or not path:
        return name
    return MIXTURE_FILE_PREFIX + str(Path(path).expanduser().resolve())


def _check_mixture(name: str) -> None:
    if name.startswith(MIXTURE_FILE_PREFIX):
        _mixture(name)


# ---------------------------------------------------------------------------------------------- EDM networks


def _catalog_entry(name: str) -> EdmTeacher | Edm2Network | None:
    """The official EDM or EDM2 network a name refers to: by catalog name, or a local pickle by its official file name
    (a copy of edm-ffhq-64x64-uncond-vp.pkl counts as edm-ffhq64); None for any other pickle."""
    if name in EDM_TEACHERS:
        return EDM_TEACHERS[name]
    if is_edm2_name(name):
        return get_edm2_network(name)
    file_name = Path(name).name
    found = next((t for t in EDM_TEACHERS.values() if t.file_name == file_name), None)
    if found is None and file_name.endswith(".pkl") and is_edm2_name(file_name.removesuffix(".pkl")):
        found = get_edm2_network(file_name.removesuffix(".pkl"))
    return found


def _official(name: str) -> bool:
    return name in EDM_TEACHERS or is_edm2_name(name)


def _is_edm(name: str) -> bool:
    return _official(name) or name.endswith(".pkl")


def _check_edm(name: str) -> None:
    if not _official(name) and not Path(name).is_file():
        raise UsageError(f"EDM pickle not found: {name}", hint="pass the path of an edm-*.pkl or edm2-*.pkl file")


def _absolute_pickle(name: str) -> str:
    return name if _official(name) else str(Path(name).expanduser().resolve())


# The preset `auto` stands for with an official EDM teacher, by its catalog dataset (simcli/config/presets.py).
EDM_DATASET_PRESETS = {"cifar10": "cifar10", "ffhq": "ffhq64", "afhqv2": "afhq64", "imagenet": "imagenet64"}


def edm_preset(name: str) -> str:
    """The preset of an EDM or EDM2 teacher's dataset (a local pickle by its official file name); cifar10 for any
    other pickle."""
    entry = _catalog_entry(name)
    if isinstance(entry, Edm2Network):
        return entry.preset
    return EDM_DATASET_PRESETS.get(entry.dataset, "cifar10") if entry is not None else "cifar10"


def load_edm_network(name: str, on_download: DownloadProgressFn | None = None) -> Teacher:
    """An official EDM or EDM2 network by name (downloaded into the cache if needed) or a local pickle, as a Teacher
    (teachers, and EDM2's guide networks: simcli.distill.guidance)."""
    from simcli.teachers.edm_files import ensure_teacher_file
    from simcli.teachers.edm_pickle import load_edm_pickle

    path = ensure_teacher_file(name, on_progress=on_download) if _official(name) else Path(name)
    net, meta = load_edm_pickle(path)
    entry = _catalog_entry(name)
    display = name if _official(name) else Path(name).name
    return Teacher(name, "edm", display, net, meta["architecture"],
                   fid_reference=entry.fid_reference if entry is not None else None)


# ---------------------------------------------------------------------------------------------- native files

DIGITS_TEACHER = "digits"
DIGITS_FILE = "digits/teacher.safetensors"  # in simcli/assets; made by examples/digits/train_teacher.py
DIGITS_REFERENCE = "digits-train"


def _load_native(name: str, on_download: DownloadProgressFn | None) -> Teacher:
    from simcli.assets import asset_path
    from simcli.teachers.native import load_native_teacher

    shipped = name == DIGITS_TEACHER
    net, meta = load_native_teacher(asset_path(DIGITS_FILE) if shipped else name)
    display = "digits (8x8, 10 classes)" if shipped else Path(name).name
    kind = DIGITS_TEACHER if shipped else "native"
    return Teacher(name, kind, display, net, meta["architecture"], fid_reference=DIGITS_REFERENCE if shipped else None)


def _check_native_file(name: str) -> None:
    if not Path(name).is_file():
        raise UsageError(f"teacher file not found: {name}", hint="pass a simcli-teacher .safetensors file")


# ---------------------------------------------------------------------------------------------- diffusers pipelines


def _diffusers_pipeline(name: str) -> DiffusersPipelineSource:
    from simcli.teachers.diffusers_teacher import pipeline_source

    return pipeline_source(name)


def _load_diffusers(name: str, on_download: DownloadProgressFn | None) -> Teacher:
    from simcli.teachers.diffusers_teacher import display_name, load_diffusers_denoiser

    net, architecture, source = load_diffusers_denoiser(name)  # Hub downloads report through huggingface_hub
    return Teacher(name, "diffusers", display_name(name), net, architecture, fid_reference=None, pipeline=source)


TEACHER_KINDS: tuple[TeacherKind, ...] = (
    TeacherKind("digits", (DIGITS_TEACHER,), lambda n: n == DIGITS_TEACHER, lambda n: None, _load_native, preset="digits"),
    TeacherKind(  # before the kinds that match a file suffix: diffusers:PATH may end in anything
        "diffusers", (*HUB_TEACHERS, f"{DIFFUSERS_PREFIX}PATH"), is_diffusers_name, check_diffusers_teacher,
        _load_diffusers, preset=diffusers_preset,
        normalise=absolute_diffusers_name, pipeline=_diffusers_pipeline,
    ),
    TeacherKind(
        "native", ("PATH.safetensors",), lambda n: n.endswith(".safetensors"), _check_native_file, _load_native,
        preset="cifar10", normalise=lambda n: str(Path(n).expanduser().resolve()),
    ),
    TeacherKind(
        "mixture", (*NAMED_MIXTURES, "gmm:PATH.json"), lambda n: n in NAMED_MIXTURES or n.startswith(MIXTURE_FILE_PREFIX),
        _check_mixture, _load_mixture, preset="gmm", normalise=_absolute_mixture_file,
    ),
    TeacherKind("edm", (*EDM_TEACHERS, *NAME_PATTERNS, "PATH.pkl"), _is_edm, _check_edm, load_edm_network,
                preset=edm_preset, normalise=_absolute_pickle),
)


def known_teachers() -> list[str]:
    """Every name and name pattern `--teacher` accepts."""
    return [name for kind in TEACHER_KINDS for name in kind.names]


def teacher_kind(name: str) -> TeacherKind:
    """The kind a teacher name belongs to; UsageError otherwise, suggesting the nearest known names (difflib) and
    listing them all."""
    for kind in TEACHER_KINDS:
        if kind.matches(name):
            return kind
    shown = name if len(name) <= 80 else name[:77] + "..."
    close = similar_teachers(name)
    guess = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(f"unknown teacher {shown!r}{guess}", hint=f"known teachers: {', '.join(known_teachers())}")


def similar_teachers(name: str, limit: int = 3) -> list[str]:
    """Known teacher names (not patterns) that a mistyped name may have meant: those it begins, then difflib's closest."""
    names = [n for n in known_teachers() if "PATH" not in n and "{" not in n] + list(EDM2_NETWORKS)
    typed = name.strip().lower()[:200]
    starts = [n for n in names if typed and n.startswith(typed)]
    close = difflib.get_close_matches(typed, names, n=limit, cutoff=0.6)
    return list(dict.fromkeys(starts + close))[:limit]


def describe_teacher_name(name: str) -> tuple[str, str]:
    """(the name as stored in a spec, the preset `auto` stands for); what the config layer needs to know."""
    kind = teacher_kind(name)
    return kind.normalise(name), kind.preset(name) if callable(kind.preset) else kind.preset


def teacher_pipeline(name: str) -> DiffusersPipelineSource | None:
    """The text-to-image pipeline behind a teacher name (its folder checked, nothing loaded); None for teachers that
    are not text-to-image. Unknown names are a UsageError, as everywhere."""
    kind = teacher_kind(name)
    return kind.pipeline(name) if kind.pipeline is not None else None


def check_teacher(name: str) -> None:
    """Refuse unknown teacher names and unusable files without loading a network or downloading."""
    teacher_kind(name).check(name)


def at_resolution(teacher: Teacher, pixels: int | None) -> Teacher:
    """A text-to-image teacher whose samples (and so the generator's) are `pixels` wide: its denoiser's latent shape
    and its architecture record (which the generator and the online model copy) changed; unchanged for None.
    A teacher that is not text-to-image is refused with one line."""
    if pixels is None:
        return teacher
    if teacher.pipeline is None or teacher.architecture is None:
        raise UsageError(f"text.resolution applies to text-to-image teachers, not '{teacher.display_name}'",
                         hint="drop --set text.resolution")
    architecture = architecture_at_resolution(teacher.architecture, pixels)
    teacher.denoiser.sample_shape = tuple(architecture["sample_shape"])
    return dataclasses.replace(teacher, architecture=architecture)


def load_teacher(name: str, on_download: DownloadProgressFn | None = None) -> Teacher:
    """The Teacher a name refers to (downloading an official checkpoint into the cache if needed)."""
    return teacher_kind(name).load(name, on_download)
