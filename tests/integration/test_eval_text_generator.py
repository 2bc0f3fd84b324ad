"""`simcli eval --generator RUN --prompts FILE --clip-score`: a text-to-image generator sampled in memory on the
prompts scores exactly as its samples written by `simcli sample --generator RUN --prompts FILE` do."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")

from simcli.cli.app import app  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402
from tests.unit.test_text_image_metrics import clip_dir  # noqa: E402, F401  (the tiny CLIP model fixture)

PROMPTS = ["a photo of a cat", "a red car", "a dog on grass"]


def cli(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SIMCLI_OFFLINE", "1")


def test_a_text_generator_scores_as_its_samples_do(tmp_path, clip_dir):  # noqa: F811
    pipeline = write_tiny_pixart(tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run = tmp_path / "run"
    cli("distill", "--teacher", f"diffusers:{pipeline}", "--prompts", prompts, "--out", run, "--steps", 1,
        "--batch-size", 2, "--device", "cpu")
    cli("sample", "--generator", run, "--prompts", prompts, "--n", 3, "--seed", 4, "--out", tmp_path / "s.npz",
        "--device", "cpu")
    scored = [json.loads(cli("eval", *source, "--clip-score", "--clip-model", clip_dir, "--seed", 4, "--device", "cpu",
                             "--json").stdout)
              for source in (["--generator", run, "--prompts", prompts], ["--samples", tmp_path / "s.npz"])]
    assert scored[0]["n"] == scored[1]["n"] == 3
    assert scored[0]["clip_score"] == scored[1]["clip_score"]
    assert scored[0]["prompts"]["sha256"] == scored[1]["prompts"]["sha256"]
    # --n beyond the prompts cycles through them, as `simcli sample` does
    more = json.loads(cli("eval", "--generator", run, "--prompts", prompts, "--n", 5, "--clip-score", "--clip-model",
                          clip_dir, "--device", "cpu", "--json").stdout)
    assert more["n"] == 5 and more["prompts"]["n"] == 5
    without = cli("eval", "--generator", run, "--clip-score", "--clip-model", clip_dir, code=2)
    assert "--prompts FILE" in without.output and len(without.output.strip().splitlines()) == 1
