"""Text-to-image teachers from diffusers pipelines: their names, and the teacher's denoiser.

Names: the official ones (simcli.teachers.hub_teachers: `pixart-alpha-512`, `sd35-medium`, `flux1-dev`, ...), read
through the Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE), and `diffusers:PATH`, a local pipeline
folder written by `save_pretrained` whose model_index.json names a supported pipeline class
(simcli.teachers.pipeline_families). The teacher's denoiser is the pipeline's network alone (float32), wrapped as
an EDM denoiser (simcli.nets.diffusers_denoiser); the text encoders and the VAE stay on disk until the
`DiffusersPipelineSource` is asked for them.

This module imports neither torch nor diffusers at import time: the registry reads its names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.errors import UsageError
from simcli.teachers.hf_loading import require_t2i_packages
from simcli.teachers.hub_teachers import HUB_TEACHERS
from simcli.teachers.pipeline_families import pipeline_family
from simcli.teachers.pipeline_folder import LOCAL_HINT, check_pipeline_folder, read_json
from simcli.teachers.pipeline_source import DiffusersPipelineSource

if TYPE_CHECKING:
    from simcli.nets.diffusers_denoiser import DiffusersDenoiser

DIFFUSERS_PREFIX = "diffusers:"


def is_diffusers_name(name: str) -> bool:
    return name in HUB_TEACHERS or name.startswith(DIFFUSERS_PREFIX)


def absolute_diffusers_name(name: str) -> str:
    """`diffusers:PATH` with PATH made absolute (official names and an empty PATH unchanged)."""
    path = name.removeprefix(DIFFUSERS_PREFIX)
    if name in HUB_TEACHERS or not path:
        return name
    return DIFFUSERS_PREFIX + str(Path(path).expanduser().resolve())


def _local_folder(name: str) -> Path:
    path = name.removeprefix(DIFFUSERS_PREFIX)
    if not path:
        raise UsageError(f"'{name}' names no folder", hint=f"use diffusers:PATH; {LOCAL_HINT}")
    return Path(path).expanduser()


def check_diffusers_teacher(name: str) -> None:
    """Refuse missing packages and unusable local folders (reads small JSON files); no loading, no network."""
    require_t2i_packages()
    if name not in HUB_TEACHERS:
        check_pipeline_folder(_local_folder(name))


def pipeline_source(name: str) -> DiffusersPipelineSource:
    """The source a teacher name points at (a local folder is checked first)."""
    entry = HUB_TEACHERS.get(name)
    if entry is not None:
        return DiffusersPipelineSource(entry.pipeline_repo or entry.repo_id, entry.revision, local=False,
                                       max_tokens=entry.max_tokens, pipeline_class=entry.pipeline_class,
                                       network_location=entry.repo_id if entry.pipeline_repo else None,
                                       gated=entry.gated)
    folder = _local_folder(name).resolve()
    family = check_pipeline_folder(folder)
    return DiffusersPipelineSource(str(folder), None, local=True, pipeline_class=family.pipeline_class)


FAMILY_PRESETS = {"pixart-alpha": "pixart", "pixart-sigma": "pixart", "sd3": "sd3", "sana": "sana", "sdxl": "sdxl",
                  "sd15": "sd15"}  # FLUX: flux-dev or flux-schnell, by whether its transformer embeds guidance
HUB_FLUX_PRESETS = {"flux1-dev": "flux-dev", "flux1-schnell": "flux-schnell"}


def diffusers_preset(name: str) -> str:
    """The preset `auto` stands for with this teacher: its family's (simcli.config.t2i_presets), read from the name
    or the folder's small JSON files (a FLUX folder's transformer config says dev or schnell)."""
    if name in HUB_TEACHERS:
        return HUB_FLUX_PRESETS.get(name) or FAMILY_PRESETS[pipeline_family(HUB_TEACHERS[name].pipeline_class).key]
    folder = _local_folder(name)
    family = check_pipeline_folder(folder)
    if family.key != "flux":
        return FAMILY_PRESETS[family.key]
    config = read_json(folder / family.network / "config.json")
    return "flux-schnell" if family.takes_no_guidance(config) else "flux-dev"


def display_name(name: str) -> str:
    entry = HUB_TEACHERS.get(name)
    return entry.display_name if entry is not None else Path(name.removeprefix(DIFFUSERS_PREFIX)).name


def load_diffusers_denoiser(name: str) -> tuple[DiffusersDenoiser, dict[str, Any], DiffusersPipelineSource]:
    """(the frozen DiffusersDenoiser, its architecture record, the pipeline source) of a teacher name: the network
    with the scheduler's training schedule, the pipeline's pixels per latent and its default latent shape."""
    from simcli.nets.diffusers_denoiser import DiffusersDenoiser, diffusers_architecture
    from simcli.nets.train_schedule import training_schedule

    require_t2i_packages()
    source = pipeline_source(name)
    network = source.network()
    schedule = training_schedule(source.scheduler_config())
    scale = source.vae_scale_factor()
    shape = source.family.sample_shape(dict(network.config))
    architecture = diffusers_architecture(network, schedule, guidance_scale=1.0, vae_scale_factor=scale,
                                          sample_shape=shape)
    net = DiffusersDenoiser(network, architecture["schedule"], guidance_scale=1.0, vae_scale_factor=scale,
                            sample_shape=shape)
    return net.eval().requires_grad_(False), architecture, source


def latent_multiple(architecture: dict[str, Any]) -> int:
    """What a latent side must be a multiple of for the recorded network: its patch size (PixArt, SD3: 2; SANA: 1),
    FLUX's 2x2 packing, or a UNet's down-sampling (2 ** (levels - 1))."""
    config = architecture.get("config") or {}
    if architecture.get("class_name") == "UNet2DConditionModel":
        return 2 ** (len(config.get("block_out_channels") or [0]) - 1)
    if architecture.get("class_name") == "FluxTransformer2DModel":
        return 2
    return int(config.get("patch_size") or 1)


def architecture_at_resolution(architecture: dict[str, Any], pixels: int) -> dict[str, Any]:
    """The record with the latent shape of square `pixels` x `pixels` images; a one-line UsageError when the
    network cannot take that size (not a multiple of pixels per latent times the network's latent multiple)."""
    scale, multiple = int(architecture.get("vae_scale_factor", 8)), latent_multiple(architecture)
    if pixels % (scale * multiple):
        raise UsageError(f"text.resolution {pixels} is not a multiple of {scale * multiple} pixels, which this "
                         f"teacher needs ({scale} pixels per latent, latent sides a multiple of {multiple})",
                         hint=f"use a multiple of {scale * multiple}, e.g. {max(1, round(pixels / (scale * multiple))) * scale * multiple}")
    channels = int(architecture["sample_shape"][0])
    return {**architecture, "sample_shape": [channels, pixels // scale, pixels // scale]}


def local_architecture(name: str) -> dict[str, Any]:
    """The architecture record of a local `diffusers:PATH` teacher read from its JSON files alone (no weights loaded,
    no torch): what load_diffusers_denoiser records, for plans made before anything is loaded."""
    from simcli.nets.train_schedule import training_schedule

    source = pipeline_source(name)
    if not source.local:
        raise ValueError(f"{name} is not a local pipeline folder")
    family = source.family
    config = read_json(source.network_folder() / family.network / "config.json")
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    return {"kind": "diffusers", "class_name": family.network_class, "config": public,
            "schedule": training_schedule(source.scheduler_config()), "guidance_scale": 1.0,
            "vae_scale_factor": source.vae_scale_factor(), "sample_shape": list(family.sample_shape(config))}
