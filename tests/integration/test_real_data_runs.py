"""Runs with real data (--data, issue 19): SiDA's adversarial term on a tiny EDM teacher, the same for any number of
processes and on resume; a frozen generator; bad data refused in one line before anything is written."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.distill.loop import Distillation, run_distillation
from simcli.teachers.registry import load_teacher
from tests.helpers.processes import assert_same_losses, records, run_processes
from tests.helpers.tiny_edm import tiny_edm_spec, write_tiny_edm

STEPS = 6
ON_AT_ONCE = ["online.augment_p=0", "adversarial.generator_freeze_kimg=0", "adversarial.generator_start_kimg=0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    images = np.random.default_rng(0).integers(0, 256, size=(32, 8, 8, 3), dtype=np.uint8)
    np.savez(root / "real.npz", images=images)
    return {"teacher": write_tiny_edm(root / "tiny.pkl"), "data": root / "real.npz", "root": root}


def data_spec(files, steps: int, *sets: str):
    return tiny_edm_spec(files["teacher"], steps, f"data.source={files['data']}", *ON_AT_ONCE, *sets,
                         snapshot_every_kimg=0.024)


def test_the_adversarial_term_changes_both_updates_and_stays_finite(tmp_path, files):
    run_distillation(data_spec(files, STEPS), tmp_path / "data")
    free = tiny_edm_spec(files["teacher"], STEPS, "online.augment_p=0", snapshot_every_kimg=0.024)
    run_distillation(free, tmp_path / "free")
    a, b = records(tmp_path / "data", "status"), records(tmp_path / "free", "status")
    assert all(np.isfinite(r["loss_online"]) and np.isfinite(r["loss_generator"]) for r in a)
    # the first online update already has the discriminator's loss; the first generator update its adversarial loss
    assert a[0]["loss_online"] != b[0]["loss_online"] and a[0]["loss_generator"] != b[0]["loss_generator"]


def test_a_run_with_data_resumes_exactly_and_is_the_same_on_two_processes(tmp_path, files):
    run_distillation(data_spec(files, STEPS), tmp_path / "straight")
    run_distillation(data_spec(files, 3), tmp_path / "resumed")
    run_distillation(data_spec(files, STEPS), tmp_path / "resumed")
    a, b = records(tmp_path / "straight", "status"), records(tmp_path / "resumed", "status")
    assert [(r["loss_online"], r["loss_generator"]) for r in a] == [(r["loss_online"], r["loss_generator"]) for r in b]
    run_processes(2, data_spec(files, STEPS), tmp_path / "two")  # each process draws its micro-batches' images
    assert_same_losses(tmp_path / "straight", tmp_path / "two", STEPS)
    # sharded (FSDP2): the discriminator's encoder-only pass over sharded blocks too
    run_processes(2, data_spec(files, STEPS, "training.sharding=fsdp"), tmp_path / "sharded")
    a, c = records(tmp_path / "straight", "status"), records(tmp_path / "sharded", "status")
    for key in ("loss_online", "loss_generator"):
        scale = max(abs(r[key]) for r in a)
        assert all(abs(x[key] - y[key]) <= 1e-5 * scale for x, y in zip(a, c, strict=True)), key


def test_a_frozen_generator_does_not_step_and_the_run_says_so(tmp_path, files):
    spec = data_spec(files, 3, "adversarial.generator_freeze_kimg=1")
    with Distillation(spec, tmp_path / "run") as run:
        assert any("does not step before 1 kimg" in w for w in run.started.warnings)
        run.run()
        teacher = load_teacher(str(files["teacher"])).denoiser
        for (name, p), q in zip(run.nets.generator.named_parameters(), teacher.parameters(), strict=True):
            assert torch.equal(p, q), name
        assert any(not torch.equal(p, q) for p, q in zip(run.nets.online.parameters(), teacher.parameters(),
                                                             strict=True))


def _png(size: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def _bad_sources(root, conditional_name):
    wrong = root / "wrong"
    wrong.mkdir()
    for i in range(3):
        (wrong / f"{i}.png").write_bytes(_png(8))
    (wrong / "3.png").write_bytes(_png(16))
    empty = root / "empty"
    empty.mkdir()
    corrupt = root / "corrupt"
    corrupt.mkdir()
    (corrupt / "0.png").write_bytes(_png(8))
    (corrupt / "1.png").write_bytes(_png(8)[:40])
    unlabelled = root / "unlabelled.zip"
    with zipfile.ZipFile(unlabelled, "w") as z:
        for i in range(3):
            z.writestr(f"img{i}.png", _png(8))
    return [(wrong, None, "3.png"), (empty, None, "no images"), (corrupt, None, "1.png"),
            (unlabelled, conditional_name, "labels")]


def test_bad_data_is_refused_in_one_line_before_anything_is_written(tmp_path, files):
    conditional = write_tiny_edm(tmp_path / "cond.pkl", label_dim=10)
    for source, teacher, named in _bad_sources(tmp_path, str(conditional)):
        out = tmp_path / f"run-{source.stem}"
        result = CliRunner().invoke(app, ["distill", "--teacher", teacher or str(files["teacher"]), "--preset", "tiny",
                                          "--data", str(source), "--steps", "2", "--out", str(out), "--device", "cpu",
                                          "--set", "online.augment_p=0"])
        assert result.exit_code == 2, (source, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("simcli: error:") and named in lines[0], lines
        assert "Traceback" not in result.stderr and not out.exists(), source


def test_data_for_a_teacher_without_a_discriminator_is_refused(tmp_path, files):
    gmm = CliRunner().invoke(app, ["distill", "--teacher", "gmm-ring8", "--data", str(files["data"]), "--steps", "2",
                                   "--out", str(tmp_path / "gmm")])
    assert gmm.exit_code == 2 and "--data gives real images to image teachers" in gmm.stderr
    assert not (tmp_path / "gmm").exists()


def test_with_augmentation_the_real_images_are_augmented_on_their_own(tmp_path, files):
    """SiD's augmentation (online.augment_p) with data: real images augmented independently of the fakes, from their
    own stream, so the run still resumes exactly."""
    run_distillation(data_spec(files, 4, "online.augment_p=0.5"), tmp_path / "straight")
    run_distillation(data_spec(files, 2, "online.augment_p=0.5"), tmp_path / "resumed")
    run_distillation(data_spec(files, 4, "online.augment_p=0.5"), tmp_path / "resumed")
    a, b = records(tmp_path / "straight", "status"), records(tmp_path / "resumed", "status")
    assert all(np.isfinite(r["loss_online"]) for r in a)
    assert [r["loss_online"] for r in a] == [r["loss_online"] for r in b]
    plain = records(tmp_path / "straight", "status")[0]["loss_online"]
    run_distillation(data_spec(files, 1), tmp_path / "unaugmented")
    assert records(tmp_path / "unaugmented", "status")[0]["loss_online"] != plain


def test_a_relative_data_path_is_stored_absolute(files, monkeypatch):
    monkeypatch.chdir(files["root"])
    result = CliRunner().invoke(app, ["distill", "--teacher", str(files["teacher"]), "--data", "real.npz",
                                      "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spec"]["data"]["source"] == str(files["data"].resolve())
