"""`simcli export --format diffusers`: a tiny PixArt generator (distilled through the CLI as
tests/integration/test_export_diffusers.py does) exported as a diffusers pipeline folder with its model card; the
refusals (--components with safetensors, an EDM generator as diffusers) are one line with nothing written; --force
replaces an existing export whole. That diffusers loads the folder and makes simcli's images is
tests/integration/test_export_diffusers.py's."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("diffusers")

from tests.cli.test_cli_export import edm_run  # noqa: E402, F401  (the shared tiny EDM run)
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPTS = ["a photo of a cat", "a red car on the road", "two dogs in the snow", "a cup of tea"]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pixart_run(tmp_path_factory):
    """A generator distilled from the tiny PixArt-alpha pipeline for 2 iterations (shared; never modified)."""
    from tests.cli.conftest import run_cli

    root = tmp_path_factory.mktemp("export-diffusers")
    pipeline = write_tiny_pixart(root / "pipe")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMCLI_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = run_cli("distill", "--teacher", f"diffusers:{pipeline}", "--prompts", prompts, "--steps", "2",
                         "--batch-size", "4", "--out", run, "--precision", "fp32", "--set", "text.resolution=16",
                         "--set", "logging.grid_samples=4", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_the_cli_exports_a_pipeline_folder_with_its_model_card(cli, pixart_run, tmp_path):
    out = tmp_path / "exported"
    result = cli("export", pixart_run, "--format", "diffusers", "--components", "copy", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "pipeline_simcli.py", "transformer", "README.md", "LOADING.md", "distill-config.json",
            "simcli-export.json", "vae", "text_encoder", "tokenizer"} <= names
    assert sorted(names) == summary["files"] and summary["components"] == "copy" and summary["hub"] is None
    assert (out / "transformer" / "config.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_simcli", "SimcliGeneratorPipeline"] and "vae" in index

    card = (out / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "diffusers" and front["pipeline_tag"] == "text-to-image"
    assert front["license"] == "other" and "base_model" not in front  # a local teacher folder: licence unknown
    assert {"one-step", "diffusion-distillation", "simcli", "diffusers"} <= set(front["tags"])
    for section in ("## Teacher and licence", "## Method and settings", "## Metrics", "## How it was made",
                    "## How to use", "## Samples"):
        assert section in card
    assert "trust_remote_code=True" in card and "DiffusionPipeline.from_pretrained" in card
    assert "safe_open" not in card  # not the EDM snippet
    assert "--prompts FILE --clip-score --aesthetic" in card and "--fid --ref" not in card  # how to score a text model
    grids = [n for n in names if n.startswith("grid-")]
    assert len(grids) == 1 and f"![samples of the generator]({grids[0]})" in card
    assert "simcli distill --config distill-config.json --out run" in card
    assert json.loads((out / "simcli-export.json").read_text()) == {k: v for k, v in summary.items() if k != "hub"}
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary folder left

    # --force replaces the export whole, here with a reference export (no copied components).
    (out / "stale.txt").write_text("from an earlier export")
    result = cli("export", pixart_run, "--format", "diffusers", "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert "components reference" in result.stderr
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and "vae" not in names and {"model_index.json", "README.md"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary or set-aside folder left


def test_without_force_an_existing_export_is_refused(cli, assert_usage_error, tree, pixart_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    assert_usage_error(cli("export", pixart_run, "--format", "diffusers", "--out", out), "exists and is not empty",
                       "--force")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("case", ["components-with-safetensors", "unknown-components", "edm-as-diffusers"])
def test_refusals_are_one_line_and_nothing_is_written(case, cli, assert_usage_error, tree, edm_run, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    if case == "components-with-safetensors":
        args, fragments = ["--format", "safetensors", "--components", "copy"], ["--components", "--format diffusers"]
    elif case == "unknown-components":
        args, fragments = ["--format", "diffusers", "--components", "link"], ["components must be one of"]
    else:
        args, fragments = ["--format", "diffusers"], ["not distilled from a diffusers pipeline"]
    before = tree(tmp_path)
    assert_usage_error(cli("export", edm_run, *args, "--out", out), *fragments)
    assert tree(tmp_path) == before
