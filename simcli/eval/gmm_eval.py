"""Exact evaluation against an analytic teacher: samples from a file or from a generator, in memory."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.errors import UsageError
from simcli.eval.gmm_metrics import gmm_report
from simcli.sampling.run import generator_samples
from simcli.teachers.registry import load_teacher


def read_samples_npz(path: Path) -> torch.Tensor:
    """'samples' [N, D] from an npz written by `simcli sample`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"samples file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "samples" not in data:
                raise UsageError(f"{path} has no 'samples' array (keys: {', '.join(data.files)})")
            arr = data["samples"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = "not an npz archive" if "pickle" in str(exc) else str(exc)
        raise UsageError(f"{path} is not a readable npz file ({reason})") from None
    if arr.ndim != 2:
        raise UsageError(f"{path}: 'samples' must be [N, D], got shape {list(arr.shape)}")
    return torch.from_numpy(arr.astype(np.float32))


def evaluate_against_teacher(
    teacher: str,
    *,
    samples: Path | None = None,
    generator: Path | None = None,
    n: int = 10000,
    seed: int = 0,
    reference_seed: int = 1_000_003,
    mmd_bandwidth: float | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Mode weights, their L1 error, precision, MMD^2 (key `mmd`) and SW2 of samples against the exact teacher."""
    mixture = load_teacher(teacher).mixture
    if mixture is None:
        raise UsageError(f"exact metrics need an analytic teacher, not '{teacher}'", hint="use --fid with --ref for image teachers")
    if (samples is None) == (generator is None):
        raise UsageError("give exactly one of --samples and --generator")
    if samples is not None:
        x, source = read_samples_npz(samples), {"source": "samples", "samples": str(samples)}
    else:
        x, _, source = generator_samples(generator, n, seed, device=device)
    if x.shape[1] != mixture.dim:
        raise UsageError(f"samples have dimension {x.shape[1]} but teacher '{teacher}' has {mixture.dim}")
    report = gmm_report(x, mixture, seed=reference_seed, mmd_bandwidth=mmd_bandwidth)
    return {"teacher": teacher, **source, **report}
