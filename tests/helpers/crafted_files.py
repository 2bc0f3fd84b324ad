"""Hand-made simcli network files for the hostile-input tests: any metadata (raw header strings, so also values no
simcli writer produces), weights poisoned with NaN or Inf, or scaled until the network overflows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from simcli.nets.registry import build_network
from simcli.rundir.network_file import GENERATOR_FORMAT, canonical_safetensors
from tests.helpers.tiny_edm import TINY_DDPMPP

MLP = {"kind": "mlp", "dim": 2, "hidden_dim": 8, "num_layers": 1}
TINY_EDM = {"kind": "edm", "class_name": "EDMPrecond", "init_kwargs": {**TINY_DDPMPP, "label_dim": 0}}
POISONED_TENSOR = {"mlp": "net.3.weight", "edm": "model.dec.8x8_aux_conv.weight"}


def network_weights(architecture: dict[str, Any], *, poison: float | None = None, scale: float = 1.0,
                    seed: int = 0, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A freshly initialised network's state_dict; `poison`: the first element of POISONED_TENSOR set to it;
    `scale`: every weight matrix and kernel (2+ dimensions) multiplied by it (1e30: finite weights whose forward
    overflows to Inf and NaN); `dtype`: POISONED_TENSOR stored in this dtype (before the poison)."""
    torch.manual_seed(seed)
    state = {k: v.clone().contiguous() for k, v in build_network(architecture).state_dict().items()}
    for tensor in state.values():
        if tensor.is_floating_point() and tensor.ndim >= 2:
            tensor.mul_(scale)
    name = POISONED_TENSOR[architecture["kind"]]
    if dtype is not None:
        state[name] = state[name].to(dtype)
    if poison is not None:
        state[name].view(-1)[0] = poison
    return state


def write_network_file(path: Path, architecture: dict[str, Any], fmt: str = GENERATOR_FORMAT, *,
                       raw: dict[str, str | None] | None = None, **weights: Any) -> Path:
    """A network file with a generator's usual metadata (sigma_init 2.5, a spec naming gmm-ring8); `raw` replaces
    header strings as they are (not JSON-encoded; None drops the key); `weights`: network_weights' options."""
    meta = {"format": fmt, "architecture": json.dumps(architecture), "sigma_init": "2.5",
            "spec": json.dumps({"teacher": "gmm-ring8"}), "images_seen": "0", "step": "0", **(raw or {})}
    meta = {k: v for k, v in meta.items() if v is not None}
    state = network_weights(architecture, **weights)
    Path(path).write_bytes(canonical_safetensors(save(state, metadata=meta)))
    return Path(path)
