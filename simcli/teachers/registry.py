"""Teacher names: what `--teacher` accepts and how each name becomes a Denoiser."""

from __future__ import annotations

from collections.abc import Callable

from simcli.errors import UsageError
from simcli.teachers.base import Denoiser
from simcli.teachers.gmm import GaussianMixture, grid, load_mixture_json, ring

ANALYTIC_TEACHERS: dict[str, Callable[[], GaussianMixture]] = {
    "gmm-ring8": lambda: ring(num_modes=8, radius=1.0, std=0.1),
    "gmm-grid25": lambda: grid(side=5, spacing=0.5, std=0.05),
}


def known_teachers() -> list[str]:
    """Every name `--teacher` accepts, plus the file forms."""
    return [*ANALYTIC_TEACHERS, "gmm:PATH.json"]


def is_analytic(name: str) -> bool:
    """True for analytic mixture teachers (exact denoiser, exact samples)."""
    return name in ANALYTIC_TEACHERS or name.startswith("gmm:")


def check_teacher(name: str) -> None:
    """Refuse unknown teacher names and unreadable mixture files without loading any network."""
    if name.startswith("gmm:"):
        load_mixture_json(name[len("gmm:") :])
    elif name not in ANALYTIC_TEACHERS:
        load_teacher(name)


def load_teacher(name: str) -> Denoiser:
    """Build the teacher a name refers to; unknown names are a UsageError listing the known ones."""
    if name in ANALYTIC_TEACHERS:
        return ANALYTIC_TEACHERS[name]()
    if name.startswith("gmm:"):
        return load_mixture_json(name[len("gmm:") :])
    raise UsageError(f"unknown teacher '{name}'", hint=f"known teachers: {', '.join(known_teachers())}")
