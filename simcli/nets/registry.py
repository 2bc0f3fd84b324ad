"""Rebuild a network from the architecture record stored beside its weights."""

from __future__ import annotations

from typing import Any

from simcli.config.spec import NetworkSpec
from simcli.errors import UsageError
from simcli.nets.mlp import MLPDenoiser
from simcli.teachers.base import Denoiser


def mlp_architecture(dim: int, network: NetworkSpec) -> dict[str, Any]:
    """The architecture record of an MLP denoiser."""
    return {"kind": "mlp", "dim": dim, **network.model_dump()}


def build_network(architecture: dict[str, Any]) -> Denoiser:
    """A freshly initialised network of the recorded architecture."""
    arch = dict(architecture)
    kind = arch.pop("kind", None)
    if kind == "mlp":
        return MLPDenoiser(**arch)
    raise UsageError(f"unknown network kind {kind!r} in checkpoint", hint="was it written by a newer simcli?")
