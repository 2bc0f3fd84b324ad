"""A real tiny run through the CLI: distill, sample, eval, resume (preset tiny: 20 iterations of 32 images)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def test_distill_prints_one_json_summary(tiny_run, json_doc):
    result, run_dir = tiny_run
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    summary = json_doc(result.stdout)
    assert summary["steps"] == 20
    assert summary["images_seen"] == 640
    assert (summary["teacher"], summary["method"], summary["distance"]) == ("gmm-ring8", "sim", "pseudo-huber")
    assert summary["nonfinite_total"] == 0
    assert summary["resumed_from"] is None
    assert summary["wall_time_s"] > 0
    generator = Path(summary["generator"])
    assert generator.is_file() and generator.parent == run_dir
    assert generator.name == "generator-0000000.640.safetensors"
    # Human output went to stderr, not into the JSON on stdout.
    assert "starting at iteration 0 of 20" in result.stderr
    assert "fitting the network to the analytic teacher" in result.stderr


def test_run_directory_contents(tiny_run):
    result, run_dir = tiny_run
    assert result.exit_code == 0, result.output
    config = json.loads((run_dir / "config.json").read_text())
    assert config["teacher"] == "gmm-ring8"
    assert config["training"]["duration_steps"] == 20 and config["training"]["batch_size"] == 32
    assert config["network"]["hidden_dim"] == 32

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]  # status every 0.16 kimg = 5 iterations of 32
    for r in records:
        assert r["images_seen"] == 32 * r["step"]
        for key in ("loss_online", "loss_generator", "sec_per_kimg"):
            assert isinstance(r[key], float) and math.isfinite(r[key]), (key, r)
        assert r["sec_per_kimg"] > 0

    generators = sorted(p.name for p in run_dir.glob("generator-*.safetensors"))
    states = sorted(p.name for p in run_dir.glob("state-*.pt"))
    assert generators == ["generator-0000000.320.safetensors", "generator-0000000.640.safetensors"]
    assert states == ["state-0000000.320.pt", "state-0000000.640.pt"]
    assert (run_dir / "teacher-fit.safetensors").is_file()
    assert not list(run_dir.glob(".*"))  # no temporary files or write probes left behind


def test_sample_from_the_generator(tiny_run, cli, json_doc, tmp_path):
    _, run_dir = tiny_run
    out = tmp_path / "f.npz"
    result = cli("sample", "--generator", run_dir, "--n", 500, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json_doc(result.stdout)
    assert (summary["n"], summary["source"], summary["nfe"], summary["first_seed"]) == (500, "generator", 1, 0)
    assert summary["generator"].endswith("generator-0000000.640.safetensors")
    assert summary["images_seen"] == 640 and summary["teacher"] == "gmm-ring8"
    with np.load(out) as data:
        samples, seeds = data["samples"], data["seeds"]
    assert samples.shape == (500, 2) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and samples.std() > 0
    assert np.array_equal(seeds, np.arange(500))

    # Sample i depends only on seed i: a later window with another batch size gives the same rows.
    part = tmp_path / "part.npz"
    result = cli("sample", "--generator", run_dir, "--seed", 100, "--n", 10, "--batch-size", 3, "--out", part)
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"wrote 10 samples (generator) to {part}" in result.stderr
    with np.load(part) as data:
        np.testing.assert_allclose(data["samples"], samples[100:110], rtol=1e-5, atol=1e-6)
        assert np.array_equal(data["seeds"], np.arange(100, 110))

    # --force replaces an existing file.
    result = cli("sample", "--generator", run_dir, "--n", 7, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        assert data["samples"].shape == (7, 2)


def test_sample_teacher_and_eval_it(teacher_npz, cli, json_doc):
    result, out = teacher_npz
    assert result.exit_code == 0, result.output
    summary = json_doc(result.stdout)
    assert (summary["source"], summary["heun_steps"], summary["nfe"], summary["n"]) == ("teacher", 18, 35, 200)
    with np.load(out) as data:
        assert data["samples"].shape == (200, 2) and data["samples"].dtype == np.float32
        assert np.array_equal(data["seeds"], np.arange(200))

    result = cli("eval", "--teacher", "gmm-ring8", "--samples", out, "--json")
    assert result.exit_code == 0, result.output
    report = json_doc(result.stdout)
    assert report["n"] == 200 and report["source"] == "samples"
    assert report["mode_weight_l1"] < 0.25
    assert report["precision"] > 0.8
    for key in ("mmd", "mmd_bandwidth", "sw2"):
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    assert report["mmd_bandwidth"] > 0 and 0 <= report["sw2"] < 0.3
    assert len(report["mode_weights"]) == 8 and math.isclose(sum(report["mode_weights"]), 1.0, abs_tol=1e-9)


def test_eval_human_table_goes_to_stdout(teacher_npz, cli):
    _, out = teacher_npz
    result = cli("eval", "--teacher", "gmm-ring8", "--samples", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert "mode-weight L1 error" in result.stdout and "exact metrics against gmm-ring8 (200 samples)" in result.stdout


def test_eval_a_generator_in_memory(tiny_run, cli, json_doc):
    _, run_dir = tiny_run
    result = cli("eval", "--teacher", "gmm-ring8", "--generator", run_dir, "--n", 300, "--json")
    assert result.exit_code == 0, result.output
    report = json_doc(result.stdout)
    assert report["n"] == 300 and report["source"] == "generator"
    assert report["generator"].endswith("generator-0000000.640.safetensors")
    for key in ("mode_weight_l1", "precision", "mmd", "sw2"):
        assert math.isfinite(report[key]), key
    assert 0 <= report["precision"] <= 1 and 0 <= report["mode_weight_l1"] <= 2


def test_running_again_with_more_steps_resumes(tiny_run_copy, cli, json_doc):
    run_dir = tiny_run_copy
    result = cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", run_dir, "--json", "--steps", 30)
    assert result.exit_code == 0, result.output
    summary = json_doc(result.stdout)
    assert summary["steps"] == 30 and summary["images_seen"] == 960
    assert Path(summary["resumed_from"]).name == "state-0000000.640.pt"
    assert Path(summary["generator"]).name == "generator-0000000.960.safetensors"
    assert "resuming from state-0000000.640.pt at iteration 20 of 30" in result.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30]
    # keep_states = 2: the oldest state is pruned.
    assert sorted(p.name for p in run_dir.glob("state-*.pt")) == ["state-0000000.640.pt", "state-0000000.960.pt"]
    # The duration is a resumable change: config.json now records the new one.
    assert json.loads((run_dir / "config.json").read_text())["training"]["duration_steps"] == 30


def test_running_a_finished_run_again_changes_no_results(tiny_run_copy, cli, json_doc, tree):
    run_dir = tiny_run_copy
    before = tree(run_dir)
    result = cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", run_dir, "--json")
    assert result.exit_code == 0, result.output
    summary = json_doc(result.stdout)
    assert summary["steps"] == 20 and Path(summary["resumed_from"]).name == "state-0000000.640.pt"
    assert tree(run_dir) == before


def test_resume_after_a_torn_metrics_line(tiny_run_copy, cli, json_doc):
    # A process killed while appending to metrics.jsonl leaves half a line; resuming used to crash (JSONDecodeError).
    run_dir = tiny_run_copy
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "status", "st')
    result = cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--out", run_dir, "--json", "--steps", 25)
    assert result.exit_code == 0, result.output
    assert json_doc(result.stdout)["steps"] == 25
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25]


def test_training_dropout_sets_the_copies_and_network_settings_are_refused_for_mixtures(cli, tmp_path):
    """training.dropout: the generator snapshot records it (the teacher's file says 0.13); an analytic teacher is
    refused with exit 2 before the run directory exists."""
    from simcli.rundir.layout import list_generators
    from simcli.rundir.snapshots import load_generator_file
    from tests.helpers.tiny_edm import write_tiny_edm

    teacher = write_tiny_edm(tmp_path / "tiny.pkl")
    result = cli("distill", "--teacher", teacher, "--preset", "tiny", "--steps", 1, "--batch-size", 4,
                 "--set", "training.dropout=0.05", "--set", "logging.grid_samples=0", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    _, meta = load_generator_file(list_generators(tmp_path / "run")[-1])
    assert meta["architecture"]["init_kwargs"]["dropout"] == 0.05
    refused = cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--set", "training.dropout=0.1",
                  "--out", tmp_path / "gmm")
    assert refused.exit_code == 2
    assert "training.dropout applies to copies of an EDM network, not an analytic teacher's fitted MLP" in refused.stderr
    assert not (tmp_path / "gmm").exists()
    refused = cli("distill", "--teacher", "gmm-ring8", "--preset", "tiny", "--set", "training.activation_checkpointing=true",
                  "--out", tmp_path / "gmm")
    assert refused.exit_code == 2
    assert ("training.activation_checkpointing needs an EDM or diffusers network, not an analytic teacher's fitted MLP"
            in refused.stderr)
    assert not (tmp_path / "gmm").exists()  # refused before the fit and config.json
