"""Teachers in simcli's native format: a `simcli-teacher/1` safetensors file whose metadata records the
architecture (see simcli/rundir/network_file.py). The shipped digits teacher is one; any network saved the same
way can be passed as `--teacher PATH.safetensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.registry import NATIVE_DTYPE_HINT, network_with_weights
from simcli.rundir.network_file import TEACHER_FORMAT, load_network_file


def load_native_teacher(path: str | Path) -> tuple[Denoiser, dict[str, Any]]:
    """(network frozen in eval mode, decoded metadata) from a simcli teacher file."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"teacher file not found: {path}", hint="pass a simcli-teacher .safetensors file")
    tensors, meta = load_network_file(path, TEACHER_FORMAT)
    architecture = meta.get("architecture")
    if not isinstance(architecture, dict):
        raise UsageError(f"{path} records no architecture", hint="save teachers with simcli.rundir.network_file")
    net = network_with_weights(architecture, tensors, str(path), dtypes=True, dtype_hint=NATIVE_DTYPE_HINT)
    return net.eval().requires_grad_(False), meta
