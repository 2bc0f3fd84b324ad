"""The exported folder's model card (README.md): YAML front matter that parses, the teacher's licence, the run's metrics
equal to its metrics.jsonl, and a command that reruns the recorded spec.

The metrics come from a real run with in-training evaluation (`--eval-every`, `--fid-ref` of teacher samples) scored
by the tiny deterministic feature network of tests/helpers/eval_tiny_extractor.py standing in for torch-fidelity's,
as tests/integration/test_training_eval.py does: the records are the loop's own, not written by hand.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.eval.features import lookup_extractor, register_extractor
from simcli.export.model_card import last_and_best, metrics_section, teacher_licence
from simcli.rundir.metrics import read_records
from tests.helpers.eval_tiny_extractor import TINY_NAME, register_tiny_extractors
from tests.helpers.tiny_edm import write_tiny_edm


def cli(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.mark.parametrize(("teacher", "licence", "base_model"), [
    ("edm-cifar10", "cc-by-nc-sa-4.0", None),
    ("/data/edm-ffhq-64x64-uncond-vp.pkl", "cc-by-nc-sa-4.0", None),  # an official file by its name
    ("edm2-img512-xs", "cc-by-nc-sa-4.0", None),
    ("digits", "mit", None),
    ("pixart-alpha-512", "openrail++", "PixArt-alpha/PixArt-XL-2-512x512"),
    ("pixart-sigma-512", "other", "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"),  # not known here: the repo named
    ("flux1-schnell", "apache-2.0", "black-forest-labs/FLUX.1-schnell"),
    ("flux1-dev", "other", "black-forest-labs/FLUX.1-dev"),
    ("sd35-medium", "other", "stabilityai/stable-diffusion-3.5-medium"),
    ("sana-600m-512", "other", "Efficient-Large-Model/Sana_600M_512px_diffusers"),
    ("/data/my-own.pkl", "other", None),
    (None, "other", None),
])
def test_teacher_licence(teacher, licence, base_model):
    found = teacher_licence(teacher)
    assert (found.licence, found.base_model) == (licence, base_model)
    if licence == "other" and base_model is None:
        assert "unknown" in found.text
    if base_model is not None:
        assert base_model in found.text
    names = {"flux1-dev": "FLUX.1 [dev] Non-Commercial License", "sd35-medium": "Stability AI Community License"}
    if teacher in names:
        assert names[teacher] in found.text


def test_card_of_a_diffusers_pipeline_export():
    """library_name diffusers, the Hub teacher as base_model with its licence, the loading text as the usage section."""
    from pathlib import Path

    from simcli.export.edm_file import EdmExport
    from simcli.export.model_card import render_model_card

    metadata = {"architecture": {"kind": "diffusers"}, "sigma_init": 2.5, "generator_sigmas": [2.5], "steps": 1,
                "teacher": "pixart-alpha-512", "method": "sim", "source_file": "generator-0000000.008.safetensors"}
    export = EdmExport({}, metadata, Path("/runs/x/generator-0000000.008.safetensors"), None,
                       {"teacher": "pixart-alpha-512", "loss": {"method": "sim"}})
    loading = "# Loading this generator with diffusers\n\nLoad it.\n\n## The same images\n\n```python\n# a comment\n```\n"
    card = render_model_card(export, "x", [], diffusers_usage=loading)
    front = _front_matter(card)
    assert front["library_name"] == "diffusers" and front["license"] == "openrail++"
    assert front["base_model"] == "PixArt-alpha/PixArt-XL-2-512x512" and front["pipeline_tag"] == "text-to-image"
    assert "## How to use\n\nLoad it.\n\n### The same images\n\n```python\n# a comment\n```" in card
    assert "Loading this generator" not in card and "safe_open" not in card


def test_last_and_best_rows():
    records = [{"kimg": 1, "fid": 5.0}, {"kimg": 2, "fid": 3.0}, {"kimg": 3, "fid": 3.0}, {"kimg": 4, "fid": 4.0}]
    assert last_and_best(records) == [("last", records[3]), ("best", records[1])]  # ties: the earliest
    assert last_and_best(records[:2]) == [("last, best", records[1])]
    assert last_and_best([]) == []
    assert "no evaluation" in metrics_section([])


@pytest.fixture
def tiny_as_torch_fidelity():
    """The tiny extractor behind the backend name 'torch-fidelity', the real factory restored afterwards."""
    register_tiny_extractors()
    real = lookup_extractor("torch-fidelity")
    register_extractor("torch-fidelity", lookup_extractor(TINY_NAME), replace=True)
    yield
    register_extractor("torch-fidelity", real, replace=True)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def _metrics_rows(card: str) -> dict[str, dict[str, str]]:
    """The metrics table: {row label: {column: cell}}."""
    section = card.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_card_of_a_run_with_evaluations(tmp_path, monkeypatch, tiny_as_torch_fidelity):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    teacher = write_tiny_edm(tmp_path / "teacher.pkl")
    ref = tmp_path / "ref"
    cli("sample", "--teacher", teacher, "--steps", 3, "--n", 32, "--seed", 500, "--out", ref)
    run = tmp_path / "run"
    cli("distill", "--teacher", teacher, "--preset", "tiny", "--batch-size", 4, "--steps", 6, "--eval-every", 0.008,
        "--fid-ref", ref, "--fid-n", 32, "--out", run)
    out = tmp_path / "export"
    summary = json.loads(cli("export", run, "--format", "safetensors", "--out", out, "--json").stdout)
    card = (out / "README.md").read_text()

    front = _front_matter(card)
    assert front["library_name"] == "simcli" and front["license"] == "other"  # a local pickle: licence unknown
    assert {"one-step", "diffusion-distillation", "simcli", "score-implicit-matching"} <= set(front["tags"])
    assert front["pipeline_tag"] == "unconditional-image-generation"

    evals = [r for r in read_records(run) if r["kind"] == "eval"]
    assert len(evals) == 3
    best = min(evals, key=lambda r: r["fid"])
    rows = _metrics_rows(card)
    expected = {"last": evals[-1], "best": best} if best is not evals[-1] else {"last, best": best}
    assert set(rows) == set(expected)
    for label, record in expected.items():
        row = rows[label]
        assert float(row["FID"]) == record["fid"] and float(row["IS"]) == record["is_mean"]
        assert float(row["IS std"]) == record["is_std"] and float(row["kimg"]) == record["kimg"]
        assert (int(row["samples"]), row["backend"], row["reference"]) == (32, "torch-fidelity", record["reference"])
    assert "3 evaluation record(s)" in card

    # The grid of the exported snapshot is in the folder and the card shows it.
    assert summary["files"][2] == "grid-0000000.024.png" and (out / "grid-0000000.024.png").is_file()
    assert "![samples of the generator](grid-0000000.024.png)" in card

    # The command the card gives reruns the recorded spec: the same spec, and its hash is the file's.
    assert "simcli distill --config distill-config.json --out run" in card
    dry = json.loads(cli("distill", "--config", out / "distill-config.json", "--out", tmp_path / "again", "--dry-run",
                         "--json").stdout)
    config = json.loads((run / "config.json").read_text())
    assert dry["spec"] == config == json.loads((out / "distill-config.json").read_text())
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert summary["spec_sha256"] == hashlib.sha256(canonical.encode()).hexdigest() and summary["spec_sha256"] in card


def test_card_of_an_official_edm_teacher_names_its_licence(tmp_path):
    """A local copy of an official checkpoint, by its official file name: CC BY-NC-SA 4.0 in the front matter."""
    teacher = write_tiny_edm(tmp_path / "edm-cifar10-32x32-cond-vp.pkl", label_dim=10)
    run = tmp_path / "run"
    cli("distill", "--teacher", teacher, "--preset", "tiny", "--batch-size", 4, "--steps", 2,
        "--set", "logging.grid_samples=0", "--out", run)
    out = tmp_path / "export"
    cli("export", run, "--format", "safetensors", "--out", out)
    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["license"] == "cc-by-nc-sa-4.0" and "pipeline_tag" not in front  # class-conditional
    assert "NVIDIA's EDM checkpoints" in card and "no evaluation" in card and "wrote no sample grid" in card
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "distill-config.json", "export.safetensors",
                                                      "simcli-export.json"]
