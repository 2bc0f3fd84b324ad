"""Helpers shared by the digits example scripts: uint8 conversion, safetensors metadata, seeding, timing.

The scripts run as `python examples/digits/SCRIPT.py`, so this directory is on sys.path and they import
this module by name.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "simcli" / "assets" / "digits"
NUM_THREADS = 2  # the saved bytes reproduce only with the same torch version and the same thread count


def quantize(x: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, C, H, W] via (x * 127.5 + 128).clip(0, 255), as EDM does."""
    return (x.detach().to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)


def seed_everything(seed: int) -> None:
    """Fix Python, numpy and torch seeds, deterministic kernels and the thread count."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_safetensors(state: dict[str, torch.Tensor], path: Path, fmt: str, metadata: dict[str, Any]) -> None:
    """Write weights with metadata as simcli's network files hold it: `format` = fmt, every other value JSON.

    simcli's own writer (simcli.rundir.network_file): the header is canonical (keys sorted, compact JSON), so
    equal content gives equal bytes, although safetensors itself writes the metadata map in a random order.
    """
    from simcli.rundir.network_file import save_network_file

    save_network_file(Path(path), state, metadata, fmt)


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a network file: `format` as is, every other value JSON-decoded."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = dict(f.metadata() or {})
    return {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}


def load_classifier(path: Path | None = None) -> torch.nn.Module:
    """The trained DigitsClassifier from its safetensors file, in eval mode."""
    from safetensors.torch import load_file

    from simcli.nets.digits_classifier import DigitsClassifier

    path = Path(path or ASSETS / "classifier.safetensors")
    arch = read_metadata(path)["architecture"]
    net = DigitsClassifier(**{k: v for k, v in arch.items() if k != "class_name"})
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def load_teacher(path: Path | None = None) -> torch.nn.Module:
    """The trained EDMPrecond teacher from its safetensors file, in eval mode."""
    from safetensors.torch import load_file

    from simcli.nets.edm_precond import EDMPrecond

    path = Path(path or ASSETS / "teacher.safetensors")
    arch = read_metadata(path)["architecture"]
    assert arch["kind"] == "edm" and arch["class_name"] == "EDMPrecond", arch
    net = EDMPrecond(**arch["init_kwargs"])
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)
