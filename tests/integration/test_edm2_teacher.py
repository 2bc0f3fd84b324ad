"""A tiny EDM2 teacher in latent space (random weights, a tiny VAE), end to end on CPU: distilled, resumed, sampled
with --class and decoded to PNGs; guided by a second network; bad input refused before the run directory exists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.rundir.snapshots import read_generator
from simcli.sampling.run import generator_samples
from tests.helpers.edm2_pickle_writer import tiny_edm2, write_edm2_snapshot, write_tiny_vae
from tests.helpers.tiny_dinov2 import write_tiny_dinov2

FAST = ["--preset", "tiny", "--batch-size", "4", "--set", "logging.grid_samples=4"]


def cli(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(teacher .pkl, its VAE folder, an unconditional guide .pkl, a pixel-space network .pkl)."""
    root = tmp_path_factory.mktemp("edm2")
    vae = write_tiny_vae(root / "vae")
    teacher = write_edm2_snapshot(root / "teacher.pkl", *tiny_edm2(seed=0), vae_name=str(vae))
    guide = write_edm2_snapshot(root / "guide.pkl", *tiny_edm2(seed=1, label_dim=0), vae_name=str(vae))
    pixels = write_edm2_snapshot(root / "pixels.pkl", *tiny_edm2(seed=2, img_channels=3), vae_name=None)
    return teacher, vae, guide, pixels


def _decoded_by_hand(latents: torch.Tensor, vae_folder) -> np.ndarray:
    """EDM2's decode written out here: raw = (x - bias) / scale, the VAE, trunc(clamp(y, 0, 1) * 255), NHWC."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_folder)).eval()
    scale = np.float32(0.5) / np.float32([4.17, 4.62, 3.71, 3.28])
    bias = np.float32(0) - np.float32([5.81, 3.25, 0.12, -2.15]) * scale
    raw = (latents - torch.from_numpy(bias).view(1, 4, 1, 1)) / torch.from_numpy(scale).view(1, 4, 1, 1)
    with torch.no_grad():
        y = vae.decode(raw).sample
    return y.clamp(0, 1).mul(255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_distill_resume_and_sample_a_class_decoded_to_pngs(files, tmp_path):
    teacher, vae, _, _ = files
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("distill", "--teacher", teacher, *FAST, "--steps", 4, "--out", straight)
    cli("distill", "--teacher", teacher, *FAST, "--steps", 2, "--out", resumed)
    cli("distill", "--teacher", teacher, *FAST, "--steps", 4, "--out", resumed)
    a, meta, _ = read_generator(straight)
    b, _, _ = read_generator(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resuming changes nothing
    assert meta["architecture"]["latents"]["vae"] == str(vae)
    # Grids are decoded images (the tiny VAE doubles 8x8 latents to 16x16 pixels): 4 samples, 2 columns, padding 2,
    # enlarged 2x so a person can see them.
    for grid in ("teacher-grid.png", "grid-0000000.016.png"):
        assert Image.open(straight / grid).size == (2 * (2 * 18 + 2), 2 * (2 * 18 + 2))

    pngs = tmp_path / "pngs"
    summary = json.loads(cli("sample", "--generator", straight, "--n", 3, "--seed", 5, "--class", 3, "--out", pngs,
                             "--json").stdout)
    assert summary["vae"] == str(vae) and summary["nfe"] == 1
    latents, labels, _ = generator_samples(straight, 3, seed=5, class_label=3, device="cpu")
    assert labels.tolist() == [3, 3, 3] and latents.shape == (3, 4, 8, 8)
    expected = _decoded_by_hand(latents, vae)
    for i, seed in enumerate(range(5, 8)):
        image = np.asarray(Image.open(pngs / f"{seed:06d}.png"))
        assert image.shape == (16, 16, 3) and np.array_equal(image, expected[i])

    # FD-DINOv2 of the generator (sampled and decoded in memory) against the teacher's decoded samples, with a tiny
    # random-weight DINOv2: equal to the same images scored from files.
    weights = write_tiny_dinov2(tmp_path / "dinov2.pth")
    cli("sample", "--teacher", teacher, "--steps", 3, "--n", 6, "--out", tmp_path / "teacher-pngs")
    cli("sample", "--generator", straight, "--n", 6, "--out", tmp_path / "generator-pngs")
    scores = [json.loads(cli("eval", source, path, "--n", 6, "--fd-dinov2", "--ref", tmp_path / "teacher-pngs",
                              "--dinov2-weights", weights, "--json").stdout)
              for source, path in (("--generator", straight), ("--samples", tmp_path / "generator-pngs"))]
    assert scores[0]["n"] == 6 and scores[0]["fd_dinov2"] > 0
    assert scores[0]["fd_dinov2"] == pytest.approx(scores[1]["fd_dinov2"], rel=1e-9)


def test_teacher_samples_are_decoded_and_guidance_changes_them(files, tmp_path):
    teacher, vae, guide, _ = files
    out = tmp_path / "t.npz"
    summary = json.loads(cli("sample", "--teacher", teacher, "--steps", 3, "--n", 2, "--out", out, "--json").stdout)
    assert summary["vae"] == str(vae)
    with np.load(out) as data:
        assert data["images"].shape == (2, 16, 16, 3) and data["images"].dtype == np.uint8
    plain, guided = tmp_path / "plain", tmp_path / "guided"
    cli("distill", "--teacher", teacher, *FAST, "--steps", 1, "--out", plain)
    cli("distill", "--teacher", teacher, "--guide", guide, "--guidance", 3, *FAST, "--steps", 1, "--out", guided)
    config = json.loads((guided / "config.json").read_text())
    assert config["guide"] == {"network": str(guide), "weight": 3.0}
    plain_grid, guided_grid = (np.asarray(Image.open(run / "teacher-grid.png")) for run in (plain, guided))
    assert plain_grid.shape == guided_grid.shape and not np.array_equal(plain_grid, guided_grid)
    # The generator copies the teacher's own network, not the guide: both runs start from the same weights.
    first = [read_generator(run)[1]["architecture"] for run in (plain, guided)]
    assert first[0] == first[1]


@pytest.mark.parametrize("args, message", [
    (["--guidance", "2"], "--guidance 2 given without a guide network"),
    (["--guide", "PIXELS", "--guidance", "2"], "cannot guide teacher"),
    (["--guide", "GUIDE"], "guidance weight 1, which is the teacher alone"),
    (["--guide", "nope.pkl", "--guidance", "2"], "EDM pickle not found"),
    (["--guide", "foo", "--guidance", "2"], "guide network (--guide): unknown network 'foo'"),
    (["--guide", "GUIDE", "--guidance", "0.5"], "--guidance: Input should be greater than or equal to 1"),
])
def test_bad_guidance_is_refused_before_the_run_directory_exists(files, tmp_path, args, message):
    teacher, _, guide, pixels = files
    args = [{"GUIDE": guide, "PIXELS": pixels}.get(a, a) for a in args]
    out = tmp_path / "run"
    result = cli("distill", "--teacher", teacher, *FAST, "--steps", 1, "--out", out, *args, code=2)
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_official_names_offline_name_the_url_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    result = cli("distill", "--teacher", "edm2-img512-xs", "--steps", 1, "--out", out, code=2)
    line = result.output.strip()
    assert "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.135.pkl" in line
    assert str(tmp_path / "cache" / "edm2" / "posthoc-reconstructions") in line
    assert len(line.splitlines()) == 1 and not out.exists()


def test_sample_a_guided_teacher(files, tmp_path):
    teacher, _, guide, _ = files
    plain, guided = tmp_path / "plain.npz", tmp_path / "guided.npz"
    cli("sample", "--teacher", teacher, "--steps", 3, "--n", 2, "--out", plain)
    summary = json.loads(cli("sample", "--teacher", teacher, "--guide", guide, "--guidance", 2, "--steps", 3, "--n", 2,
                             "--out", guided, "--json").stdout)
    assert summary["teacher"] == "teacher.pkl guided by guide.pkl (w=2)"
    with np.load(plain) as a, np.load(guided) as b:
        assert a["images"].shape == b["images"].shape and not np.array_equal(a["images"], b["images"])
    for args, message in ((["--guide", guide], "--guide needs the guidance weight"),
                          (["--guidance", 2], "--guidance applies to text-to-image samples")):
        out = tmp_path / "bad.npz"
        result = cli("sample", "--teacher", teacher, "--n", 2, "--out", out, *args, code=2)
        assert message in result.output and not out.exists()


@pytest.mark.parametrize("method", ["sid", "dmd2"])
def test_real_data_terms_with_an_edm2_pixel_teacher(files, tmp_path, method):
    """SiDA's discriminator runs the online model on fake and real images before one backward, DMD2's head too:
    EDM2's forced weight normalisation must not overwrite the weights the first pass saved (it did, and the
    backward failed)."""
    _, _, _, pixels = files
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 16))
    out = tmp_path / "run"
    cli("distill", "--teacher", pixels, "--method", method, "--data", tmp_path / "data.npz", *FAST, "--steps", 2,
        "--set", "adversarial.generator_freeze_kimg=0", "--set", "adversarial.generator_start_kimg=0", "--out", out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "status"]
    assert steps and all(np.isfinite(r["loss_online"]) and np.isfinite(r["loss_generator"]) for r in steps)
