"""`simcli sample --plot`: scatter plots of vector samples, the mixture's modes marked, the teacher beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

MODE_RED = (0xC0, 0x39, 0x2B)


def _pixels(img: Image.Image, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return sum(n for n, c in img.getcolors(img.width * img.height) if all(abs(a - b) <= tol for a, b in zip(c, rgb, strict=True)))


def _blue(img: Image.Image) -> int:
    """Pixels of the generator's points (#1f77b4, half transparent over white or each other)."""
    return sum(n for n, (r, g, b) in img.getcolors(img.width * img.height) if b > 150 and b - r > 50 and b - g > 20)


def _orange(img: Image.Image) -> int:
    """Pixels of the teacher's points (#ff7f0e, half transparent): red high, green clearly above blue."""
    return sum(n for n, (r, g, b) in img.getcolors(img.width * img.height) if r > 200 and r - b > 70 and g - b > 40)


def _read_png(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.convert("RGB")


def test_generator_plot_has_generator_and_teacher_columns(cli, json_doc, tiny_run, tmp_path):
    distilled, run_dir = tiny_run
    assert distilled.exit_code == 0, distilled.output
    png = tmp_path / "g.png"
    result = cli("sample", "--generator", run_dir, "--n", 400, "--out", tmp_path / "g.npz", "--plot", png, "--json")
    assert result.exit_code == 0, result.output
    assert json_doc(result.stdout)["plot"] == str(png)
    img = _read_png(png)
    assert 900 <= img.width <= 1400 and 500 <= img.height <= 800  # two 2-D panels side by side
    assert len(img.getcolors(img.width * img.height)) > 50  # anti-aliased points, lines and text
    left, right = img.crop((0, 0, img.width // 2, img.height)), img.crop((img.width // 2, 0, img.width, img.height))
    assert _blue(left) > 500 and _orange(left) == 0  # the generator's points on the left
    assert _orange(right) > 500 and _blue(right) == 0  # the teacher's 18-step Heun points on the right
    assert _pixels(img, MODE_RED, tol=25) > 300  # the 2-std circles of the 8 modes
    assert not list(tmp_path.glob(".*tmp*"))


def test_teacher_plot_of_a_5d_mixture_shows_pairwise_projections(cli, tmp_path):
    spec = {"weights": [1, 2, 1], "means": [[0, 0, 0, 0, 0], [1, 1, 0, 0, 1], [-1, 0, 1, 1, 0]], "stds": [0.1, 0.2, 0.1]}
    (tmp_path / "m.json").write_text(json.dumps(spec))
    png = tmp_path / "t.png"
    result = cli("sample", "--teacher", f"gmm:{tmp_path / 'm.json'}", "--steps", 6, "--n", 300,
                 "--out", tmp_path / "t.npz", "--plot", png)
    assert result.exit_code == 0, result.output
    assert f"wrote {png}" in result.stderr
    img = _read_png(png)
    assert img.width >= 900 and img.height >= 900  # a 3x3 lower triangle of projections of 4 dimensions
    assert _orange(img) > 1000 and _blue(img) == 0  # teacher samples only: one column


def test_render_marks_every_mode_in_every_panel():
    from matplotlib.patches import Ellipse

    from simcli.sampling.plots import PlotSource, render_vector_plot
    from simcli.teachers.gmm import ring

    mixture = ring(8)
    x, _ = mixture.sample(500)
    fig = render_vector_plot([PlotSource(x.numpy(), "a"), PlotSource(x.numpy(), "b")], mixture, "ring")
    panels = [ax for ax in fig.axes if ax.axison]
    assert len(panels) == 2
    for ax in panels:
        assert sum(isinstance(p, Ellipse) for p in ax.patches) == 8
        (cross,) = [c for c in ax.collections if len(c.get_offsets()) == 8]
        assert np.allclose(np.sort(cross.get_offsets()[:, 0]), np.sort(mixture.means[:, 0].numpy()))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--teacher", "digits", "--n", 4, "--out", "pngs", "--plot", "p.png"), "--plot draws vector samples"),
        (("--teacher", "edm-cifar10", "--n", 4, "--out", "pngs", "--plot", "p.png"), "use --grid"),
        (("--teacher", "gmm-ring8", "--n", 4, "--out", "a.npz", "--plot", "p.jpg"), "--plot writes a PNG"),
        (("--teacher", "gmm-ring8", "--n", 4, "--out", "a.npz", "--grid", "g.png"), "use --plot"),
    ],
)
def test_bad_plot_requests_exit_2(cli, assert_usage_error, tree, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert_usage_error(cli("sample", *args), fragment)
    assert tree(tmp_path) == before


def _title_and_labels_inside(fig) -> None:
    """The figure title and every axis label lie wholly inside the figure once it is drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [fig._suptitle] + [t for ax in fig.axes if ax.axison for t in (ax.xaxis.label, ax.yaxis.label)]
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (text.get_text(), extent, box)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, (text.get_text(), extent, box)


def test_teacher_only_2d_plot_title_fits_the_figure():
    from simcli.sampling.plots import TEACHER_COLOUR, PlotSource, render_vector_plot
    from simcli.teachers.gmm import ring

    mixture = ring(8)
    x, _ = mixture.sample(500)
    fig = render_vector_plot([PlotSource(x.numpy(), "teacher: 18-step Heun (NFE 35)\n500 samples", TEACHER_COLOUR)],
                             mixture, "gmm-ring8, seeds 0..499")
    _title_and_labels_inside(fig)
    # too long for one line beside a single panel: the title and the note get a line each, at full size
    assert fig._suptitle.get_text() == "gmm-ring8, seeds 0..499\n8 modes: x = mean, ellipse = 2 std"
    assert fig._suptitle.get_fontsize() == 13
    # beside the teacher's column there is room for one line
    wide = render_vector_plot([PlotSource(x.numpy(), "a"), PlotSource(x.numpy(), "b")], mixture, "gmm-ring8, seeds 0..499")
    assert wide._suptitle.get_text() == "gmm-ring8, seeds 0..499; 8 modes: x = mean, ellipse = 2 std"
    _title_and_labels_inside(wide)


def test_a_title_too_long_for_the_smallest_font_is_broken_into_lines():
    from simcli.sampling.plots import MIN_TITLE_FONTSIZE, PlotSource, render_vector_plot

    x = np.random.default_rng(0).normal(size=(200, 2))
    name = "gmm:/data/mixtures/" + "a-long-directory-name/" * 3 + "mixture.json, seeds 0..199"
    fig = render_vector_plot([PlotSource(x, "teacher")], None, name)
    assert fig._suptitle.get_text().replace("\n", " ") == name  # broken into lines, nothing lost
    assert fig._suptitle.get_fontsize() == MIN_TITLE_FONTSIZE
    _title_and_labels_inside(fig)
