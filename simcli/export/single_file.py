"""A generator of a diffusers teacher as one safetensors file in its family's original key layout: the names of the
teacher's own single-file checkpoint, so tools that load that file (diffusers' `from_single_file`, ComfyUI) load this
one. Families and their layouts (each module's docstring has the mapping; tests/unit/test_single_file_export.py
round-trips each through diffusers' own conversion):

    pixart  pixart-original   PixArt-alpha / PixArt-Sigma    single_file_pixart
    sd3     sd3-original      SD3 / SD3.5 MMDiT              single_file_sd3
    flux    flux-original     FLUX.1 dev / schnell           single_file_flux
    unet    ldm-original      SD 1.x / 2.x, SDXL UNets       single_file_unet

Other families (SANA) are refused in one line. The tensors keep the snapshot's precision
(a LoRA snapshot: adapters merged into the teacher's weights). The metadata holds what an EDM export's does from
sigma_init on (edm_file.snapshot_record: noise levels, steps, teacher, method, images seen, spec_sha256, ...) and:

    family, layout      the family and the original layout's name ('flux-original')
    network_class       the diffusers class the layout converts to ('FluxTransformer2DModel'), and `component`
                        its pipeline folder ('transformer', 'unet')
    architecture        simcli's record of the network (kind 'diffusers': class_name, diffusers config, schedule)
    t_init, generator_times   flow families: the rectified-flow times t = sigma / (1 + sigma) of the noise levels
    embedded_guidance   FLUX-dev: the guidance scale the generator's guidance embedding was trained at
    left_out            original tensors the file does not hold (PixArt's pos_embed table and null caption)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError
from simcli.export.edm_file import EdmExport, run_dir_of, snapshot_record
from simcli.export.single_file_flux import flux_original
from simcli.export.single_file_pixart import LEFT_OUT as PIXART_LEFT_OUT
from simcli.export.single_file_pixart import pixart_original
from simcli.export.single_file_sd3 import sd3_original
from simcli.export.single_file_unet import ldm_unet_original
from simcli.export.single_file_usage import single_file_usage
from simcli.nets.lora import lora_settings
from simcli.nets.registry import DIFFUSERS_KINDS
from simcli.rundir.snapshots import resolve_generator_path
from simcli.sampling.generator import load_generator, snapshot_sigmas


@dataclass(frozen=True)
class SingleFileFamily:
    """One family's original layout."""

    layout: str
    convert: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
    pipeline_class: str | None
    """The diffusers pipeline the file's transformer goes into, when diffusers' network class loads the layout with
    from_single_file (None: it does not)."""
    left_out: tuple[str, ...] = ()


FAMILIES: dict[str, SingleFileFamily] = {
    "pixart": SingleFileFamily("pixart-original", pixart_original, None, PIXART_LEFT_OUT),
    "sd3": SingleFileFamily("sd3-original", sd3_original, "StableDiffusion3Pipeline"),
    "flux": SingleFileFamily("flux-original", flux_original, "FluxPipeline"),
    "unet": SingleFileFamily("ldm-original", ldm_unet_original, "StableDiffusionPipeline"),
}
"""The families `--format safetensors` exports, by simcli's backbone family (simcli.nets.backbones)."""


def check_family(family: str, file: Path) -> SingleFileFamily:
    """The family's layout; a one-line UsageError naming the exported families for any other."""
    if family not in FAMILIES:
        raise UsageError(f"{file} is a {family} generator: --format safetensors exports the text-to-image families "
                         f"{', '.join(FAMILIES)} (and EDM-type generators)",
                         hint="export it with --format diffusers, or sample it with `simcli sample --generator`")
    return FAMILIES[family]


def network_state(net: Any, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The diffusers network's own state dict (its component prefix removed; LoRA adapters merged into the
    weights), detached, contiguous, on the CPU."""
    from simcli.nets.lora import merged_state_dict

    prefix = net.backbone.component + "."
    state = merged_state_dict(net) if "lora" in meta else net.state_dict()
    return {key[len(prefix):]: value.detach().cpu().contiguous() for key, value in state.items()
            if key.startswith(prefix)}


def family_record(net: Any, family: str, sigmas: tuple[float, ...]) -> dict[str, Any]:
    """The metadata of a single-file export besides the snapshot record (module docstring)."""
    spec = FAMILIES[family]
    record: dict[str, Any] = {"family": family, "layout": spec.layout, "network_class": type(net.network).__name__,
                              "component": net.backbone.component}
    if net.prediction == "flow":
        record["t_init"] = sigmas[0] / (1 + sigmas[0])
        record["generator_times"] = [s / (1 + s) for s in sigmas]
    if net.conditioning.guidance == "embedded":
        record["embedded_guidance"] = float(net.guidance_scale)
    if spec.left_out:
        record["left_out"] = list(spec.left_out)
    return record


def single_file_export(generator: str | Path) -> EdmExport:
    """The export of a diffusers-teacher generator snapshot (a run directory: its newest) in its family's original
    layout. One-line UsageError for a family without one, or weights the layout has no name for."""
    net, meta, file = load_generator(generator, "cpu")
    family = getattr(getattr(net, "backbone", None), "family", None)
    spec = check_family(str(family), file)
    sigmas = snapshot_sigmas(meta, file)
    try:
        tensors = spec.convert(network_state(net, meta))
    except ValueError as exc:
        raise UsageError(f"{file}: {exc}", hint="this network's variant is not one the export maps; "
                                                "export it with --format diffusers") from None
    lora = lora_settings(meta) if "lora" in meta else None
    metadata = {**family_record(net, family, sigmas), "architecture": meta["architecture"],
                **snapshot_record(meta, file, sigmas, lora)}
    run_spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None
    return EdmExport(tensors, metadata, file, run_dir_of(file), run_spec)


def holds_diffusers_network(generator: str | Path) -> bool:
    """Whether a generator snapshot (a run directory: its newest) records a diffusers network, read from the file's
    header alone. False for anything unreadable: the EDM export's reading then says what is wrong in one line."""
    from safetensors import safe_open

    try:
        with safe_open(str(resolve_generator_path(generator)), framework="pt") as f:
            architecture = json.loads((f.metadata() or {}).get("architecture", "null"))
    except Exception:  # noqa: BLE001 - reported by edm_export, which reads the file properly
        return False
    return isinstance(architecture, dict) and architecture.get("kind") in DIFFUSERS_KINDS


def usage_text(export: EdmExport) -> Callable[[str], str]:
    """The model card's usage text of a single-file export, given the weights file's name."""
    pipeline = FAMILIES[export.metadata["family"]].pipeline_class
    if (export.metadata["architecture"].get("config") or {}).get("addition_embed_type") == "text_time":
        pipeline = "StableDiffusionXLPipeline"  # the UNet family's SDXL networks
    return lambda file_name: single_file_usage(export.metadata, file_name, pipeline)
