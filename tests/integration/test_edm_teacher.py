"""A local EDM snapshot as the teacher, end to end on CPU: distill, resume-safe files, PNG samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.sampling.generator import load_generator
from tests.helpers.tiny_edm import write_tiny_edm

FAST = ["--preset", "tiny", "--batch-size", "4", "--steps", "3"]


def run_cli(*args) -> object:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """A random-weight conditional DDPM++ written in the official pickle format."""
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny-edm.pkl", label_dim=10)


def test_distill_from_a_local_edm_pickle_then_sample_pngs(snapshot, tmp_path):
    run = tmp_path / "run"
    summary = json.loads(run_cli("distill", "--teacher", snapshot, *FAST, "--out", run, "--json").stdout)
    assert summary["steps"] == 3 and summary["images_seen"] == 12
    config = json.loads((run / "config.json").read_text())
    assert config["teacher"] == str(snapshot)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_online"]) and np.isfinite(r["loss_generator"]) for r in records)

    generator, meta, _ = load_generator(run)
    assert meta["architecture"]["kind"] == "edm" and meta["architecture"]["class_name"] == "EDMPrecond"
    assert generator.label_dim == 10 and tuple(generator.sample_shape) == (3, 8, 8)

    pngs = tmp_path / "pngs"
    run_cli("sample", "--generator", run, "--n", 6, "--seed", 10, "--out", pngs, "--grid", tmp_path / "grid.png")
    names = sorted(p.name for p in pngs.iterdir())
    assert names == [f"{s:06d}.png" for s in range(10, 16)]
    image = np.asarray(Image.open(pngs / "000012.png"))
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    # 6 images, 3 columns, padding 2; 8x8 images are enlarged 4x so they can be seen
    assert Image.open(tmp_path / "grid.png").size == (4 * (3 * 10 + 2), 4 * (2 * 10 + 2))

    # The same seed gives the same image whatever the batch, and --class fixes the label.
    run_cli("sample", "--generator", run, "--n", 3, "--seed", 12, "--batch-size", 1, "--out", tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as data:
        assert np.array_equal(data["images"][0], image)
    run_cli("sample", "--generator", run, "--n", 4, "--class", 3, "--out", tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as data:
        assert data["images"].shape == (4, 8, 8, 3) and data["labels"].tolist() == [3, 3, 3, 3]


def test_teacher_heun_samples_as_pngs(snapshot, tmp_path):
    out = tmp_path / "teacher"
    summary = json.loads(run_cli("sample", "--teacher", snapshot, "--steps", 3, "--n", 2, "--out", out, "--json").stdout)
    assert summary["nfe"] == 5 and summary["source"] == "teacher"
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]


def test_activation_checkpointing_changes_nothing_but_memory(snapshot, tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    run_cli("distill", "--teacher", snapshot, *FAST, "--out", plain)
    run_cli("distill", "--teacher", snapshot, *FAST, "--out", ckpt, "--set", "training.activation_checkpointing=true")

    def losses(run):
        return [(r["loss_online"], r["loss_generator"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert losses(plain) == losses(ckpt)
