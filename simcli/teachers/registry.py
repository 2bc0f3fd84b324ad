"""Teacher names: what `--teacher` accepts and how each name becomes a Denoiser.

- analytic mixtures: `gmm-ring8`, `gmm-grid25`, `gmm:PATH.json`;
- official EDM checkpoints by name (`edm-cifar10`, ...; see edm_catalog.py), downloaded into the cache;
- a local EDM snapshot: any path ending in `.pkl`, loaded without running code from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simcli.errors import UsageError
from simcli.teachers.base import Denoiser
from simcli.teachers.edm_catalog import EDM_TEACHERS
from simcli.teachers.gmm import GaussianMixture, grid, load_mixture_json, ring

ANALYTIC_TEACHERS: dict[str, Callable[[], GaussianMixture]] = {
    "gmm-ring8": lambda: ring(num_modes=8, radius=1.0, std=0.1),
    "gmm-grid25": lambda: grid(side=5, spacing=0.5, std=0.05),
}

ProgressFn = Callable[[int, int | None], None]


def known_teachers() -> list[str]:
    """Every name `--teacher` accepts, plus the file forms."""
    return [*ANALYTIC_TEACHERS, *EDM_TEACHERS, "gmm:PATH.json", "PATH.pkl"]


def is_analytic(name: str) -> bool:
    """True for analytic mixture teachers (exact denoiser, exact samples)."""
    return name in ANALYTIC_TEACHERS or name.startswith("gmm:")


def _unknown(name: str) -> UsageError:
    return UsageError(f"unknown teacher '{name}'", hint=f"known teachers: {', '.join(known_teachers())}")


def check_teacher(name: str) -> None:
    """Refuse unknown teacher names and unreadable mixture files without loading or downloading a network."""
    if name.startswith("gmm:"):
        load_mixture_json(name[len("gmm:") :])
    elif name.endswith(".pkl"):
        if not Path(name).is_file():
            raise UsageError(f"EDM pickle not found: {name}", hint="pass the path of an edm-*.pkl file")
    elif name not in ANALYTIC_TEACHERS and name not in EDM_TEACHERS:
        raise _unknown(name)


def load_teacher(name: str, on_download: ProgressFn | None = None) -> Denoiser:
    """Build the teacher a name refers to (downloading an official checkpoint into the cache if needed).

    EDM networks come back frozen, in eval mode, with `architecture` set to their rebuild record.
    """
    if name in ANALYTIC_TEACHERS:
        return ANALYTIC_TEACHERS[name]()
    if name.startswith("gmm:"):
        return load_mixture_json(name[len("gmm:") :])
    if name in EDM_TEACHERS or name.endswith(".pkl"):
        from simcli.teachers.download import ensure_teacher_file
        from simcli.teachers.edm_pickle import load_edm_pickle

        path = ensure_teacher_file(name, on_progress=on_download) if name in EDM_TEACHERS else Path(name)
        net, meta = load_edm_pickle(path)
        net.architecture = {"kind": "edm", "class_name": meta["class_name"], "init_kwargs": meta["init_kwargs"]}
        return net
    raise _unknown(name)
