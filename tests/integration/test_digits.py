"""The shipped digits teacher end to end: weights, denoising quality, feature network, references, CLI runs.

simcli ships a small class-conditional EDM teacher of scikit-learn's 8x8 digits (simcli/assets/digits), a
digits classifier used as the 'digits' feature backend, and FID reference statistics 'digits-train' and
'digits-test'. These tests load them through the public entry points only and check measured values against
stated bounds (measured values are given beside each bound), then run a few real distillation steps of the
digits teacher through the CLI (the "few distillation steps in CI"), and sample, score and refuse bad input.

Everything runs on the CPU with one thread; the whole file takes about half a minute on two busy cores.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from simcli.assets import asset_path
from simcli.cli.app import app
from simcli.data.digits import load_digits_split
from simcli.distill.losses import edm_weight
from simcli.eval.features import get_extractor
from simcli.eval.fid_math import frechet_distance
from simcli.eval.image_inputs import to_rgb_nchw
from simcli.eval.stats import FeatureStats, compute_features, resolve_reference
from simcli.nets.registry import build_network
from simcli.rundir.metrics import read_records
from simcli.sampling.images import to_uint8
from simcli.sampling.run import teacher_samples
from simcli.teachers.registry import load_teacher, teacher_kind

NUM_PARAMETERS = 1_032_705
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)

# Teacher EDM loss lambda(sigma) * sum_pixels (D - x0)^2 / 64 on the 300 held-out digits, at the 16 quantiles of
# ln sigma ~ N(-1.2, 1.2^2), noise from torch.Generator(123). Measured: 0.3934 with 1 draw per image (this test),
# 0.3951 with 4 draws (examples/digits/check_teacher.py; 0.3615 on the training digits). A freshly initialised
# network of the same architecture measured 1.685.
HELD_OUT_LOSS_BOUND = 0.42
FRESH_LOSS_FACTOR = 2.0  # a fresh network must be at least this many times above the bound
LOSS_SIGMAS = 16
LOSS_SEED = 123
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 0.5

CLASSIFIER_MIN_ACC = 0.99  # measured 0.9967 (299 of 300 held-out digits)
# Class accuracy of 100 teacher samples (EDM Heun, 18 steps, seeds 0..99) per class, measured for every class:
# 0.97 to 1.00; class 8 is the hardest (0.97), class 3 measured 0.99.
SAMPLE_CLASSES = (3, 8)
SAMPLE_MIN_ACC = 0.95
# FID of the shipped held-out statistics against the shipped training statistics, measured 0.899.
HELD_OUT_VS_TRAIN_FID = (0.85, 0.95)

# The CLI run: 4 iterations of 16 images, evaluated every 32 images (and at the end) on 200 samples.
RUN_STEPS, RUN_BATCH, EVAL_N, GRID_SAMPLES = 4, 16, 200, 20
GRID_PADDING = 2  # simcli.sampling.images.image_grid
GRID_SCALE = 4  # save_grid enlarges images under 32 pixels: ceil(32 / 8)
CLI_ENV = {"NO_COLOR": "1", "COLUMNS": "200", "SIMCLI_DEBUG": None}


def cli(*args: object):
    """Invoke the Typer app in-process; stdout and stderr stay apart (result.stdout / result.stderr)."""
    return CliRunner(env=CLI_ENV).invoke(app, [str(a) for a in args])


def cli_ok(*args: object):
    result = cli(*args)
    assert result.exit_code == 0, (result.exit_code, result.output, repr(result.exception))
    return result


def uint8_rgb(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float [N, 1, 8, 8] in [-1, 1] -> uint8 [N, 3, 8, 8], as every feature backend receives images."""
    x = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    return to_rgb_nchw(to_uint8(x))


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("digits")


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.fixture(scope="module")
def extractor():
    return get_extractor("digits", device="cpu")


# ---------------------------------------------------------------------------------------------- the teacher


def test_shipped_teacher_loads_through_the_registry(teacher):
    assert teacher_kind("digits").name == "digits"
    assert teacher_kind("digits").preset == "digits"
    assert teacher.name == "digits" and teacher.fid_reference == "digits-train" and teacher.mixture is None
    net = teacher.denoiser
    assert net.label_dim == NUM_CLASSES and tuple(net.sample_shape) == IMAGE_SHAPE
    assert sum(p.numel() for p in net.parameters()) == NUM_PARAMETERS
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    arch = teacher.architecture
    assert arch["kind"] == "edm" and arch["class_name"] == "EDMPrecond"
    assert arch["init_kwargs"]["model_type"] == "SongUNet" and arch["init_kwargs"]["label_dim"] == NUM_CLASSES
    rebuilt = build_network(arch)
    shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert type(rebuilt) is type(net)


def test_loaded_digits_teacher_records_the_digits_kind(teacher):
    assert teacher.kind == teacher_kind("digits").name == "digits"


@torch.inference_mode()
def fixed_sigma_loss(net: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Mean per-pixel EDM loss over the N(P_MEAN, P_STD^2) quantiles of ln sigma, one seeded draw per image."""
    q = [NormalDist().inv_cdf((k + 0.5) / LOSS_SIGMAS) for k in range(LOSS_SIGMAS)]
    sigmas = torch.tensor(q, dtype=torch.float64).mul(P_STD).add(P_MEAN).exp().to(torch.float32)
    x0 = torch.from_numpy(images)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), NUM_CLASSES).to(torch.float32)
    gen = torch.Generator().manual_seed(LOSS_SEED)
    per_sigma = []
    for sigma in sigmas:
        eps = torch.randn(x0.shape, generator=gen)
        d = net(x0 + sigma * eps, sigma.expand(len(x0)), onehot)
        per_sigma.append(float((edm_weight(sigma, SIGMA_DATA) * (d - x0).pow(2).flatten(1).sum(1)).double().mean()))
    return float(np.mean(per_sigma)) / x0[0].numel()


def test_teacher_denoises_held_out_digits(teacher, split):
    _, test = split
    assert test.images.shape == (300, *IMAGE_SHAPE)
    loss = fixed_sigma_loss(teacher.denoiser, test.images, test.labels)
    assert 0 < loss < HELD_OUT_LOSS_BOUND, loss
    torch.manual_seed(0)
    fresh = build_network(teacher.architecture).eval()
    fresh_loss = fixed_sigma_loss(fresh, test.images, test.labels)
    assert fresh_loss > FRESH_LOSS_FACTOR * HELD_OUT_LOSS_BOUND, (fresh_loss, loss)


def test_teacher_samples_the_asked_class(extractor):
    for c in SAMPLE_CLASSES:
        x, labels, info = teacher_samples("digits", n=100, heun_steps=18, class_label=c, device="cpu")
        assert x.shape == (100, *IMAGE_SHAPE) and torch.isfinite(x).all()
        assert labels.tolist() == [c] * 100 and info["nfe"] == 35
        _, logits = extractor.features(uint8_rgb(x))
        acc = float((logits.argmax(1) == c).double().mean())
        assert acc >= SAMPLE_MIN_ACC, (c, acc)


# ---------------------------------------------------------------------------------------------- feature network


def test_digits_classifier_held_out_accuracy(extractor, split):
    _, test = split
    images = uint8_rgb(test.images)
    assert images.dtype == torch.uint8 and images.shape == (300, 3, 8, 8)
    feats, logits = extractor.features(images)
    assert feats.shape == (300, 64) and logits.shape == (300, NUM_CLASSES) and extractor.has_logits
    acc = float((logits.argmax(1).numpy() == test.labels).mean())
    assert acc >= CLASSIFIER_MIN_ACC, acc
    shipped = hashlib.sha256(asset_path("digits/classifier.safetensors").read_bytes()).hexdigest()
    assert extractor.weights_sha256 == shipped


def test_shipped_references_match_recomputed_statistics(extractor, split):
    shipped = {}
    for name, part in zip(("train", "test"), split, strict=True):
        feats, _ = compute_features([uint8_rgb(part.images)], extractor)
        mine = FeatureStats.from_features(feats)
        ref = resolve_reference(f"digits-{name}", extractor)
        assert ref.n == len(part.images) and ref.dim == 64 and ref.note is None
        assert ref.extractor == extractor.name == "digits/classifier-64"
        assert ref.weights_sha256 == extractor.weights_sha256
        # The features are float32 network outputs: CPUs with other vector kernels round them differently (1e-7
        # relative), so the statistics agree to float32 accuracy, not bit for bit, across machines.
        np.testing.assert_allclose(ref.mu, mine.mu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ref.sigma, mine.sigma, rtol=1e-5, atol=1e-6)
        assert frechet_distance(ref.mu, ref.sigma, mine.mu, mine.sigma) < 1e-8
        shipped[name] = ref
    fid = frechet_distance(shipped["test"].mu, shipped["test"].sigma, shipped["train"].mu, shipped["train"].sigma)
    assert HELD_OUT_VS_TRAIN_FID[0] < fid < HELD_OUT_VS_TRAIN_FID[1], fid


# ---------------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One real `simcli distill --teacher digits` run of 4 iterations with two evaluations; shared, never modified."""
    root = tmp_path_factory.mktemp("digits")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMCLI_CACHE", str(root / "cache"))
        result = cli("distill", "--teacher", "digits", "--out", run, "--steps", RUN_STEPS, "--batch-size", RUN_BATCH,
                     "--set", "logging.eval_every_kimg=0.032", "--set", f"evaluation.num_samples={EVAL_N}",
                     "--set", f"logging.grid_samples={GRID_SAMPLES}", "--threads", 1, "--device", "cpu", "--json")
    return result, run


def test_distill_digits_few_steps(digits_run):
    result, run = digits_run
    assert result.exit_code == 0, (result.output, repr(result.exception))
    summary = json.loads(result.stdout)
    assert summary["teacher"] == "digits" and summary["steps"] == RUN_STEPS
    assert summary["images_seen"] == RUN_STEPS * RUN_BATCH and summary["nonfinite_total"] == 0

    records = read_records(run)
    status = [r for r in records if r["kind"] == "status"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert status and all(math.isfinite(r["loss_online"]) and math.isfinite(r["loss_generator"]) for r in status)
    assert [r["step"] for r in evals] == [2, 4]  # every 32 images at batch 16
    for r in evals:
        assert r["n"] == EVAL_N and r["backend"] == "digits" and r["reference"] == "digits-train"
        assert math.isfinite(r["fid"]) and r["fid"] > 0, r
        assert 1 <= r["is_mean"] <= NUM_CLASSES, r
    assert summary["best_score"] == min(r["fid"] for r in evals)

    # Grids: one row per class, GRID_SAMPLES // 10 columns, 8x8 cells with 2-pixel padding, enlarged 4 times.
    columns, rows = GRID_SAMPLES // NUM_CLASSES, NUM_CLASSES
    size = ((columns * (8 + GRID_PADDING) + GRID_PADDING) * GRID_SCALE,
            (rows * (8 + GRID_PADDING) + GRID_PADDING) * GRID_SCALE)
    assert size == (88, 408)
    grids = sorted(run.glob("grid-*.png"))
    assert [g.name for g in grids] == ["grid-0000000.000.png", "grid-0000000.032.png", "grid-0000000.064.png"]
    for path in [run / "teacher-grid.png", *grids]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size, (path.name, image.size)
    assert Path(summary["grid"]).resolve() == grids[-1].resolve()


def test_teacher_grid_rows_hold_their_classes(digits_run, extractor):
    """Row r of teacher-grid.png holds class r: cut the 8x8 cells back out and classify them."""
    result, run = digits_run
    assert result.exit_code == 0, result.output
    with Image.open(run / "teacher-grid.png") as image:
        pixels = np.asarray(image.convert("L"))[::GRID_SCALE, ::GRID_SCALE]  # undo the nearest enlargement
    cells, classes = [], []
    for r in range(NUM_CLASSES):
        for c in range(GRID_SAMPLES // NUM_CLASSES):
            y, x = GRID_PADDING + r * (8 + GRID_PADDING), GRID_PADDING + c * (8 + GRID_PADDING)
            cells.append(pixels[y : y + 8, x : x + 8])
            classes.append(r)
    images = torch.from_numpy(np.stack(cells))[:, None].expand(-1, 3, -1, -1).contiguous()
    assert (pixels[:GRID_PADDING] == 255).all()  # the padding is white, so cells were cut where they lie
    _, logits = extractor.features(images)
    correct = int((logits.argmax(1) == torch.tensor(classes)).sum())
    assert correct >= GRID_SAMPLES - 2, correct


def test_sample_and_eval_the_digits_generator(digits_run, tmp_path, monkeypatch):
    result, run = digits_run
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))

    out = tmp_path / "x.npz"
    cli_ok("sample", "--generator", run, "--n", 12, "--class", 3, "--out", out, "--device", "cpu")
    with np.load(out) as data:
        assert data["images"].shape == (12, 8, 8, 1) and data["images"].dtype == np.uint8
        assert data["labels"].tolist() == [3] * 12 and data["seeds"].tolist() == list(range(12))

    doc = json.loads(cli_ok("eval", "--generator", run, "--fid", "--is", "--backend", "digits", "--ref", "digits-test",
                            "--n", EVAL_N, "--device", "cpu", "--json").stdout)
    assert doc["n"] == EVAL_N and doc["backend"] == "digits" and doc["reference"] == "digits-test"
    assert math.isfinite(doc["fid"]) and doc["fid"] > 0 and 1 <= doc["is_mean"] <= NUM_CLASSES, doc
    # Same generator (the newest snapshot is the EMA of the last evaluation), seeds 0..199, all on the CPU: same IS.
    last = [r for r in read_records(run) if r["kind"] == "eval"][-1]
    assert doc["is_mean"] == pytest.approx(last["is_mean"], rel=1e-9, abs=1e-12)

    stats_path = tmp_path / "s.npz"
    cli_ok("eval", "--samples", out, "--backend", "digits", "--save-stats", stats_path)
    stats = resolve_reference(stats_path)
    assert stats.n == 12 and stats.dim == 64 and stats.extractor == "digits/classifier-64"
    assert np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()


def test_distill_dry_run_shows_the_digits_preset():
    doc = json.loads(cli_ok("distill", "--teacher", "digits", "--dry-run", "--json").stdout)
    spec, provenance = doc["spec"], doc["provenance"]
    assert spec["training"]["batch_size"] == 128 and provenance["training.batch_size"] == "preset:digits"
    assert spec["evaluation"]["backend"] == "digits" and provenance["evaluation.backend"] == "preset:digits"
    assert spec["online"]["augment_p"] == 0.0


def test_eval_refuses_images_that_are_not_8x8(tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(folder / f"{i:06d}.png")
    result = cli("eval", "--samples", folder, "--fid", "--backend", "digits", "--ref", "digits-test")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("simcli: error: "), result.stderr
    assert "8x8" in lines[0] and "32x32" in lines[0], lines[0]
