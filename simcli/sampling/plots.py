"""Pictures of vector samples (`simcli sample --plot`): 2-D scatter panels with the mixture's modes marked.

Each source (the samples asked for, and beside them the teacher's own Heun sampler when the samples come from
a generator) gets a block of panels: one panel for 2-D data, otherwise the pairwise projections of the first
MAX_DIMS dimensions as a lower-triangle grid (dimension j across, dimension i up). When the teacher is a
Gaussian mixture its means are drawn as crosses and each component's 2-std ellipse (diagonal covariance, so
axis-aligned in every projection) as an outline. All blocks share the axis limits of each dimension, so the
columns can be compared by eye. The figure is built on an Agg canvas without pyplot (nothing global is
touched) and written atomically.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simcli.rundir.atomic import atomic_write
from simcli.teachers.gmm import GaussianMixture

MAX_DIMS = 4  # projections of the first 4 dimensions: 6 panels per source
MAX_POINTS = 20_000  # points drawn per source; more only hide each other
PANEL_INCHES = 3.4
GENERATOR_COLOUR, TEACHER_COLOUR = "#1f77b4", "#ff7f0e"
MODE_COLOUR = "#c0392b"
TITLE_FONTSIZE, MIN_TITLE_FONTSIZE = 13.0, 7.0


@dataclass(frozen=True)
class PlotSource:
    """One block of panels: samples [N, D], the block's title (what made them, its NFE) and the points' colour."""

    samples: np.ndarray
    title: str
    colour: str = GENERATOR_COLOUR


def _cpu(t) -> np.ndarray:
    return t.detach().cpu().numpy()  # the teacher's sampler may have moved the mixture to the accelerator


def _limits(sources: list[PlotSource], mixture: GaussianMixture | None, dims: int) -> list[tuple[float, float]]:
    """Per dimension: the range holding 99.8% of every source's points and every mode's 3-std box, padded 5%."""
    limits = []
    for d in range(dims):
        lo, hi = [], []
        for s in sources:
            col = s.samples[:, d]
            col = col[np.isfinite(col)]
            if col.size:
                lo.append(float(np.quantile(col, 0.001)))
                hi.append(float(np.quantile(col, 0.999)))
        if mixture is not None:
            means, stds = _cpu(mixture.means)[:, d], _cpu(mixture.stds)[:, d]
            lo.append(float((means - 3 * stds).min()))
            hi.append(float((means + 3 * stds).max()))
        a, b = (min(lo), max(hi)) if lo else (-1.0, 1.0)
        pad = 0.05 * (b - a) if b > a else 0.5
        limits.append((a - pad, b + pad))
    return limits


def _mark_modes(ax, mixture: GaussianMixture, dx: int, dy: int) -> None:
    from matplotlib.patches import Ellipse

    means, stds = _cpu(mixture.means), _cpu(mixture.stds)
    for k in range(means.shape[0]):
        ax.add_patch(Ellipse((means[k, dx], means[k, dy]), 4 * stds[k, dx], 4 * stds[k, dy], fill=False,
                             edgecolor=MODE_COLOUR, linewidth=1.0, alpha=0.9, zorder=3))
    ax.scatter(means[:, dx], means[:, dy], marker="x", s=40, color="black", linewidths=1.3, zorder=4)


def _draw_block(subfig, source: PlotSource, mixture: GaussianMixture | None, dims: int,
                limits: list[tuple[float, float]]) -> None:
    side = max(dims - 1, 1)
    axes = np.atleast_2d(subfig.subplots(side, side, squeeze=False))
    n = source.samples.shape[0]
    size = float(np.clip(3000 / max(n, 1), 0.5, 12))
    for i in range(side):
        for j in range(side):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            dx, dy = j, i + 1  # x: dimension j, y: dimension i+1
            ax.scatter(source.samples[:, dx], source.samples[:, dy], s=size, color=source.colour, alpha=0.5,
                       linewidths=0, rasterized=True, zorder=2)
            if mixture is not None:
                _mark_modes(ax, mixture, dx, dy)
            ax.set_xlim(*limits[dx])
            ax.set_ylim(*limits[dy])
            ax.set_aspect("equal", adjustable="box")
            ax.grid(True, alpha=0.25)
            ax.set_xlabel(f"x[{dx}]")
            ax.set_ylabel(f"x[{dy}]")
    subfig.suptitle(source.title, fontsize=12)


def render_vector_plot(sources: list[PlotSource], mixture: GaussianMixture | None = None, title: str | None = None):
    """The matplotlib Figure: one block of scatter panels per source, side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dim = sources[0].samples.shape[1]
    if dim < 2:
        raise ValueError(f"a scatter plot needs at least 2 dimensions, got {dim}")
    dims = min(dim, MAX_DIMS)
    side = dims - 1
    block = max(PANEL_INCHES * side, 5.0)  # a lone 2-D panel gets room for its two-line title
    fig = Figure(figsize=(block * len(sources) + 0.4, block + 1.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    limits = _limits(sources, mixture, dims)
    subfigs = fig.subfigures(1, len(sources), squeeze=False)[0]
    for subfig, source in zip(subfigs, sources, strict=True):
        _draw_block(subfig, source, mixture, dims, limits)
    notes = []
    if dim > MAX_DIMS:
        notes.append(f"first {MAX_DIMS} of {dim} dimensions")
    if mixture is not None:
        notes.append(f"{mixture.num_components} modes: x = mean, ellipse = 2 std")
    parts = [t for t in (title, *notes) if t]
    if parts:
        text, size = _fit_title(fig, parts, TITLE_FONTSIZE)
        fig.suptitle(text, fontsize=size)
        extra_lines = text.count("\n")
        if extra_lines:  # room for the title's further lines, so that the panels keep their size and labels
            fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + extra_lines * size * 1.3 / 72)
    return fig


def _fit_title(fig, parts: list[str], fontsize: float) -> tuple[str, float]:
    """(text, font size) of the figure title: the parts joined by '; ' on one line where they fit the figure's
    width, else one line per part (a lone 2-D panel is narrow); a part still too wide gets a smaller font."""
    from matplotlib.font_manager import FontProperties

    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width * 0.96  # display units (pixels at the figure's dpi), a small margin either side

    def width(text: str, size: float) -> float:
        return renderer.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0]

    lines = [parts[0]]
    for part in parts[1:]:
        joined = f"{lines[-1]}; {part}"
        if width(joined, fontsize) <= room:
            lines[-1] = joined
        else:
            lines.append(part)
    widest = max(width(line, fontsize) for line in lines)
    if widest <= room:
        return "\n".join(lines), fontsize
    size = max(MIN_TITLE_FONTSIZE, fontsize * room / widest)
    wrapped = []
    for line in lines:  # a line too wide even in the smallest font (a long file name) is broken where it must be
        w = width(line, size)
        wrapped += textwrap.wrap(line, max(10, int(len(line) * room / w))) if w > room else [line]
    return "\n".join(wrapped), size


def write_vector_plot(path: Path, sources: list[PlotSource], mixture: GaussianMixture | None = None,
                      title: str | None = None) -> Path:
    """Render the scatter panels and write them atomically to `path` (PNG); returns the path."""
    path = Path(path)
    fig = render_vector_plot(sources, mixture, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path
