"""An EDM-type generator as one safetensors file that NVIDIA's own EDM and EDM2 code loads strictly.

simcli's EDM networks (simcli.nets.edm_precond: EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond) and EDM2 network
(simcli.nets.edm2_precond.EDM2Precond, upstream `Precond`) have NVlabs' module names, so their state dict has the
official checkpoints' tensor names (tests/unit/test_edm_nets.py and test_edm2_nets.py check them against the official
ones): the exported tensors are the generator's state dict as it is, in float32. A LoRA snapshot (adapters only) is
merged into its teacher's weights first, so the file holds a plain network.

The metadata (safetensors' string map) holds `format` = EXPORT_FORMAT and, JSON-encoded like every simcli network file:

    architecture     {"kind": "edm", "class_name", "init_kwargs"[, "latents"]}: the class and the keyword arguments
                     that rebuild the network (`latents`: an EDM2 latent network's VAE and per-channel scale and bias)
    nvidia_code      the NVlabs file and class the record is for, e.g. "training/networks.py EDMPrecond"
    sigma_init       the generator's first noise level: G(z) = D(sigma_init * z; sigma_init)
    generator_sigmas the noise levels it samples at (one for a one-step generator), `steps` their number
    teacher, method, images_seen, step, spec_sha256 (sha256 of the run spec's canonical JSON), source_file,
    simcli_version, and `lora` ({"rank", "alpha", "merged": true}) for a merged LoRA snapshot
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simcli import __version__
from simcli.errors import UsageError
from simcli.nets.lora import is_lora, lora_settings, merged_state_dict
from simcli.nets.registry import DIFFUSERS_KINDS, EDM_CLASSES
from simcli.rundir.layout import CONFIG_FILE
from simcli.rundir.network_file import load_network_file, network_file_bytes, short_repr
from simcli.rundir.snapshots import read_generator
from simcli.sampling.generator import load_generator, snapshot_sigmas

EXPORT_FORMAT = "simcli-generator-export/1"
EDM2_CLASS = "Precond"
NVIDIA_FILES = {EDM2_CLASS: "training/networks_edm2.py"}  # NVlabs/edm2; every other class: NVlabs/edm's
EDM_FILE = "training/networks.py"


@dataclass(frozen=True)
class EdmExport:
    """What an export file holds, and where it came from."""

    tensors: dict[str, torch.Tensor]
    """The generator's state dict in NVIDIA's key layout, float32, on the CPU."""
    metadata: dict[str, Any]
    """The JSON values of the file's metadata (see the module docstring)."""
    source: Path
    """The generator snapshot exported."""
    run_dir: Path | None
    """The run directory the snapshot belongs to (its config.json beside it), or None for a lone file."""
    spec: dict[str, Any] | None
    """The run spec recorded in the snapshot, or None."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces and ASCII only: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def spec_sha256(spec: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a run spec."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def run_dir_of(file: Path) -> Path | None:
    """The run directory of a generator snapshot: its folder when that holds the run's config.json."""
    return file.parent if (file.parent / CONFIG_FILE).is_file() else None


def nvidia_code(class_name: str) -> str:
    """The NVlabs file and class an architecture record rebuilds: 'training/networks.py EDMPrecond'."""
    return f"{NVIDIA_FILES.get(class_name, EDM_FILE)} {class_name}"


def check_exportable(meta: dict[str, Any], file: Path) -> None:
    """Refuse, in one line, a snapshot that is not an EDM-type network, before anything is built."""
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict) or "sigma_init" not in meta:
        raise UsageError(f"{file} lacks the architecture or sigma_init record",
                         hint="is it a simcli generator snapshot?")
    kind = architecture.get("kind")
    if kind in DIFFUSERS_KINDS:
        raise UsageError(f"{file} is a text-to-image generator: this writer exports EDM-type generators only",
                         hint="simcli.export.single_file exports it in its family's original layout "
                              "(`simcli export --format safetensors` picks the writer)")
    if kind != "edm" or architecture.get("class_name") not in EDM_CLASSES:
        raise UsageError(f"{file} holds a {short_repr(kind)} network: --format safetensors exports EDM-type generators "
                         f"({', '.join(EDM_CLASSES)})", hint="a mixture's MLP generator has no upstream layout; "
                         "`simcli sample --generator` reads the snapshot as it is")


def _float32(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in state_dict.items()}


def edm_export(generator: str | Path) -> EdmExport:
    """The export of a generator snapshot (a run directory: its newest snapshot). One-line UsageError for a path that
    holds no generator, a snapshot that is not an EDM-type network, or one whose weights do not load."""
    _, meta, file = read_generator(generator)
    check_exportable(meta, file)
    sigmas = snapshot_sigmas(meta, file)
    lora = lora_settings(meta) if "lora" in meta else None
    net, meta, file = load_generator(file)  # validates the record and weights; a LoRA snapshot: teacher + adapters
    tensors = _float32(merged_state_dict(net) if is_lora(net) else net.state_dict())
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None
    architecture = meta["architecture"]
    metadata = {"architecture": architecture, "nvidia_code": nvidia_code(architecture["class_name"]),
                **snapshot_record(meta, file, sigmas, lora)}
    return EdmExport(tensors, metadata, file, run_dir_of(file), spec)


def snapshot_record(meta: dict[str, Any], file: Path, sigmas: tuple[float, ...],
                    lora: tuple[int, float] | None = None) -> dict[str, Any]:
    """What an export records of a generator snapshot besides its architecture (the module docstring's keys from
    sigma_init on; what the snapshot does not record is left out). Also the common part of a single-file export's
    metadata (simcli.export.single_file) and the model card's facts of a diffusers pipeline export."""
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else None
    metadata: dict[str, Any] = {
        "sigma_init": float(meta["sigma_init"]),
        "generator_sigmas": list(sigmas),
        "steps": len(sigmas),
        "teacher": teacher_display_name(spec["teacher"]) if spec and isinstance(spec.get("teacher"), str) else None,
        "method": ((spec or {}).get("loss") or {}).get("method"),
        "images_seen": meta.get("images_seen"),
        "step": meta.get("step"),
        "spec_sha256": spec_sha256(spec) if spec is not None else None,
        "source_file": file.name,
        "simcli_version": __version__,
    }
    if lora is not None:
        metadata["lora"] = {"rank": lora[0], "alpha": lora[1], "merged": True}
    return {k: v for k, v in metadata.items() if v is not None}  # what a snapshot does not record is left out


def teacher_display_name(name: str) -> str:
    """A teacher as an export names it: a catalog name as it is, a local file by its file name (its path on the machine
    that ran is nobody else's business)."""
    path = Path(name)
    return path.name if path.is_absolute() or len(path.parts) > 1 else name


def export_file_bytes(export: EdmExport) -> bytes:
    """The bytes of the export file (canonical header: equal exports give equal bytes)."""
    return network_file_bytes(export.tensors, export.metadata, EXPORT_FORMAT)


def read_export_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, decoded metadata) of an export file; one-line UsageError for anything else."""
    return load_network_file(Path(path), EXPORT_FORMAT)
