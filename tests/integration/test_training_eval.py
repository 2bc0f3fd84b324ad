"""In-training evaluation and `compare` on two tiny runs of an EDM teacher (tiny registered extractor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.eval.features import lookup_extractor, register_extractor
from simcli.rundir.metrics import read_records
from simcli.sampling.generator import load_generator
from tests.helpers.eval_tiny_extractor import TINY_NAME, register_tiny_extractors
from tests.helpers.tiny_edm import write_tiny_edm


def run_cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def tiny_as_torch_fidelity():
    """The tiny extractor behind the backend name 'torch-fidelity' (evaluation.backend is one of the built-in
    names), the real factory restored afterwards."""
    register_tiny_extractors()
    real = lookup_extractor("torch-fidelity")
    register_extractor("torch-fidelity", lookup_extractor(TINY_NAME), replace=True)
    yield
    register_extractor("torch-fidelity", real, replace=True)


def test_fid_during_distillation_best_generator_and_compare(tmp_path, monkeypatch, tiny_as_torch_fidelity):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    teacher = write_tiny_edm(tmp_path / "teacher.pkl")
    ref = tmp_path / "ref"
    run_cli("sample", "--teacher", teacher, "--steps", 3, "--n", 32, "--seed", 500, "--out", ref)
    runs = []
    for method in ("sim", "sid"):
        run = tmp_path / f"run-{method}"
        run_cli("distill", "--teacher", teacher, "--method", method, "--preset", "tiny", "--batch-size", 4,
                "--steps", 6, "--eval-every", 0.008, "--fid-ref", ref, "--fid-n", 32, "--out", run)
        runs.append(run)
        evals = [r for r in read_records(run) if r["kind"] == "eval"]
        assert [r["step"] for r in evals] == [2, 4, 6]  # every 8 images at batch 4, and at the end
        assert all(r["fid"] > 0 and r["n"] == 32 and r["backend"] == "torch-fidelity" for r in evals)
        best = min(evals, key=lambda r: r["fid"])
        assert [r["best"] for r in evals].count(True) >= 1 and best["best"]
        _, meta, _ = load_generator(run / "generator-best.safetensors")
        assert meta["step"] == best["step"] and abs(meta["fid"] - best["fid"]) < 1e-12

    plot = tmp_path / "compare.png"
    doc = json.loads(run_cli("compare", *runs, "--plot", plot, "--json").stdout)
    by_method = {r["method"]: r for r in doc["runs"]}
    assert set(by_method) == {"sim", "sid"}
    for run, method in zip(runs, ("sim", "sid"), strict=True):
        fids = [r["fid"] for r in read_records(run) if r["kind"] == "eval"]
        assert by_method[method]["best_fid"] == min(fids) and by_method[method]["last_fid"] == fids[-1]
    image = Image.open(plot)
    assert image.size[0] > 500 and len(np.unique(np.asarray(image.convert("L")))) > 10
    table = run_cli("compare", *runs).stdout
    assert "run-sim" in table and "run-sid" in table
