"""Load the official NVIDIA EDM and EDM2 network pickles (`edm-*.pkl`, `edm2-*.pkl`) without running any code from them.

simcli.teachers.edm_unpickler reads the file into inert records (no code from it runs). Here the network's
record becomes simcli's architecture record: the preconditioner chosen by `class_name`, built from the recorded
`_init_kwargs` (edm-spec 1.7, 3.8). Its weights, flattened from the record's module tree, load through the
registry's one checked load (simcli.nets.registry.network_with_weights): checked on the meta device first,
then built and loaded strictly.

EDM2 snapshots (NVlabs/edm2; Karras et al. 2024) pickle a dnnlib EasyDict whose `ema` is a `Precond` stored in
float16 (reconstruct_phema.py), beside the `encoder` that maps its latents to pixels (simcli.teachers.edm2_latents)
and its `loss_fn`. Their weights are cast to float32 exactly (every float16 value is a float32 value; EDM2's own
layers cast them to float32 before use), and the encoder's latent space goes into the architecture record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.edm2_precond import UPSTREAM_CLASS_NAMES
from simcli.nets.registry import listing, network_with_weights
from simcli.teachers.edm2_latents import latents_from_encoder
from simcli.teachers.edm_unpickler import (
    PERSISTENCE_VERSION,
    ModuleDictRecord,
    PersistentRecord,
    bad_file,
    unpickle_edm,
)

EDM2_CLASS = "Precond"  # the class name of EDM2's preconditioner in its snapshots (training/networks_edm2.py)
EDM2_WEIGHT_DTYPES = (torch.float16, torch.float32)  # post-hoc EMA snapshots are float16, training ones float32

# Root attributes cross-checked between the pickle's state and the rebuilt network (edm-spec 1.4, 1.7 step 8).
CROSS_CHECKED = ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data", "sigma_min", "sigma_max",
                 "beta_d", "beta_min", "M", "epsilon_t", "C_1", "C_2")

# ---- from records to a simcli network ----------------------------------------------------------------------

Record = PersistentRecord | ModuleDictRecord


def _children(record: Record) -> dict[str, Record]:
    modules = record.state.get("_modules", {})
    if not isinstance(modules, dict):
        raise bad_file(f"malformed {record.class_name} state: _modules is not a dict")
    out = {}
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, (PersistentRecord, ModuleDictRecord)):
            raise bad_file(f"malformed {record.class_name} state: child {name!r} is not a module")
        out[name] = child
    return out


def flat_state_dict(record: Record, prefix: str = "", out: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, torch.Tensor]:
    """The state_dict a torch module tree would produce (edm-spec 1.7 step 7, 3.8): per module its parameters,
    then its persistent non-None buffers, then its children recursively."""
    out = {} if out is None else out
    if prefix.count(".") > 32:
        raise bad_file(f"malformed module tree: nested deeper than any EDM network ({prefix[:80]}...)")
    state = record.state
    skip = state.get("_non_persistent_buffers_set", set())
    if not isinstance(skip, (set, frozenset, list, tuple)):
        raise bad_file(f"malformed {record.class_name} state: _non_persistent_buffers_set is not a set")
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group, {})
        if not isinstance(tensors, dict):
            raise bad_file(f"malformed {record.class_name} state: {group} is not a dict")
        for name, tensor in tensors.items():
            if tensor is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise bad_file(f"malformed {record.class_name} state: {prefix}{name} is not a tensor")
            out[prefix + name] = tensor
    for name, child in _children(record).items():
        flat_state_dict(child, f"{prefix}{name}.", out)
    return out


def _class_mismatches(record: Record, module: nn.Module, path: str = "") -> list[str]:
    """Where the recorded module tree and simcli's differ in class names or children."""
    label = path or "<root>"
    ours_name = UPSTREAM_CLASS_NAMES.get(type(module), type(module).__name__)  # EDM2's classes go by other names here
    if record.class_name != ours_name:
        return [f"{label} is {record.class_name} in the file but {ours_name} here"]
    found, ours = _children(record), dict(module.named_children())
    problems = [f"{path}{n} only in the file" for n in found if n not in ours]
    problems += [f"{path}{n} only here" for n in ours if n not in found]
    for name in found:
        if name in ours:
            problems += _class_mismatches(found[name], ours[name], f"{path}{name}.")
    return problems


def _cross_check(net: nn.Module, state: dict[str, Any], source: str) -> None:
    """Root attributes recorded in the file must equal the rebuilt network's (edm-spec 1.7 step 8)."""
    for name in CROSS_CHECKED:
        if name not in state or not hasattr(net, name):
            continue
        ours, theirs = getattr(net, name), state[name]
        numbers = all(isinstance(v, (int, float)) for v in (ours, theirs))  # bools are ints here
        if not (numbers and (ours == theirs or math.isclose(ours, theirs, rel_tol=1e-6))):
            raise UsageError(f"{source}: recorded {name}={theirs!r} but the rebuilt network has {name}={ours!r}",
                             hint="simcli's defaults may differ from the ones the file was written with")


def load_edm_pickle(path: str | Path, key: str = "ema") -> tuple[Denoiser, dict[str, Any]]:
    """The network stored under `key` of an official EDM or EDM2 pickle, as a simcli Denoiser (eval mode, frozen).

    Returns (network, metadata); metadata holds class_name, init_kwargs, the architecture record (with an EDM2
    latent network's `latents`), the pickle's keys, the file size, the sha256 of the embedded module source and
    tensor counts. No code from the file is run.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"EDM pickle not found: {path}", hint="pass the path of an edm-*.pkl or edm2-*.pkl file")
    source = str(path)
    with path.open("rb") as f:
        data = unpickle_edm(f, source)
    if not isinstance(data, dict):
        raise bad_file(f"{source} holds a {type(data).__name__}, not the dict of an EDM snapshot")
    keys = [str(k) for k in data]
    if key not in data:
        raise UsageError(f"{source} has no {key!r} entry; keys present: {', '.join(keys) or '(none)'}",
                         hint="EDM snapshots store the network under 'ema'")
    record = data[key]
    if not isinstance(record, PersistentRecord):
        raise bad_file(f"{source}: {key!r} is a {type(record).__name__}, not a persistent network object")
    init_args, init_kwargs = record.state.get("_init_args", ()), record.state.get("_init_kwargs")
    if init_args not in ((), []) or not isinstance(init_kwargs, dict) or any(type(k) is not str for k in init_kwargs):
        raise bad_file(f"{source}: {record.class_name} has no usable recorded constructor arguments "
                       f"(_init_args={init_args!r})")
    # The recorded kwargs are untrusted input: the registry checks them on the meta device (no memory) against
    # sanity bounds and the file's own tensors (names, shapes, dtypes, module tree, root attributes) before it
    # builds anything for real (edm-spec 1.7).
    tensors = flat_state_dict(record)
    architecture: dict[str, Any] = {"kind": "edm", "class_name": record.class_name, "init_kwargs": dict(init_kwargs)}
    if record.class_name == EDM2_CLASS:
        tensors = {name: t.float() if t.dtype in EDM2_WEIGHT_DTYPES else t for name, t in tensors.items()}
        latents = _edm2_latents(data.get("encoder"), source)
        if latents is not None:
            architecture["latents"] = latents.record()

    def check(skeleton: nn.Module) -> list[str]:
        classes = _class_mismatches(record, skeleton)
        if classes:
            return [f"module tree differs ({listing(classes, 3)})"]
        _cross_check(skeleton, record.state, source)
        return []

    net = network_with_weights(architecture, tensors, source, what=f"{record.class_name} architecture", dtypes=True,
                               hint="the file's _init_kwargs and tensors disagree, or simcli's defaults differ from "
                                    "upstream's", check=check)
    net.eval().requires_grad_(False)

    model = _children(record).get("model") or _children(record).get("unet")
    extra = {k: v for k, v in data.items() if k != key}
    dataset_kwargs = extra.get("dataset_kwargs")
    metadata = {
        "path": source, "file_size": path.stat().st_size, "key": key, "keys": keys,
        "class_name": record.class_name, "model_class_name": model.class_name if model is not None else None,
        "init_kwargs": dict(init_kwargs), "architecture": architecture, "persistence_version": PERSISTENCE_VERSION,
        "module_src_sha256": record.module_src_sha256, "num_tensors": len(tensors),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "dataset_kwargs": dataset_kwargs if isinstance(dataset_kwargs, dict) else None,
        "other_objects": {str(k): getattr(v, "class_name", type(v).__name__) for k, v in extra.items()},
    }
    return net, metadata


def _edm2_latents(encoder: Any, source: str):
    """The latent space of an EDM2 snapshot's `encoder` record (None: a pixel network, or a file without one)."""
    if encoder is None:
        return None
    if not isinstance(encoder, PersistentRecord):
        raise bad_file(f"{source}: 'encoder' is a {type(encoder).__name__}, not a persistent encoder object")
    return latents_from_encoder(encoder.class_name, encoder.state, source)
