"""Rebuild a network from the architecture record stored beside its weights."""

from __future__ import annotations

from typing import Any

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.edm_precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from simcli.nets.mlp import MLPDenoiser

# Preconditioner class names as recorded in the official EDM pickles (`class_name` of the `ema` object).
EDM_CLASSES: dict[str, type[Denoiser]] = {
    "EDMPrecond": EDMPrecond,
    "VPPrecond": VPPrecond,
    "VEPrecond": VEPrecond,
    "iDDPMPrecond": iDDPMPrecond,
}


def build_edm_network(class_name: str, init_kwargs: dict[str, Any]) -> Denoiser:
    """A freshly initialised EDM preconditioner + UNet from its class name and recorded `_init_kwargs`."""
    cls = EDM_CLASSES.get(class_name)
    if cls is None:
        raise UsageError(f"unknown EDM network class {class_name!r}", hint=f"expected one of {', '.join(EDM_CLASSES)}")
    try:
        return cls(**init_kwargs)
    except TypeError as exc:
        raise UsageError(f"bad init_kwargs for EDM network class {class_name!r}: {exc}") from exc


def build_network(architecture: dict[str, Any]) -> Denoiser:
    """A freshly initialised network of the recorded architecture."""
    arch = dict(architecture)
    kind = arch.pop("kind", None)
    if kind == "mlp":
        return MLPDenoiser(**arch)
    if kind == "edm":
        return build_edm_network(str(arch.get("class_name")), dict(arch.get("init_kwargs", {})))
    raise UsageError(f"unknown network kind {kind!r} in checkpoint", hint="was it written by a newer simcli?")


def network_with_weights(architecture: dict[str, Any], state_dict: dict[str, Any], source: str) -> Denoiser:
    """Rebuild the recorded architecture and load its weights (strictly); one-line UsageError on a mismatch."""
    net = build_network(architecture)
    try:
        net.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UsageError(f"{source}: weights do not match the recorded architecture ({str(exc).splitlines()[0]})") from None
    return net
