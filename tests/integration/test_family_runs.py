"""Every text-to-image family end to end on its tiny random pipeline (tests/helpers/tiny_pipelines.py), through the
CLI as a user runs it: distill from prompts with the family's own preset, resume to the same numbers, sample the
one-step generator with a prompt, and sample the teacher's own pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from simcli.cli.app import app  # noqa: E402
from simcli.rundir.layout import list_generators  # noqa: E402
from tests.helpers.records import run_records  # noqa: E402
from tests.helpers.tiny_pipelines import IMAGE_SIZES, TINY_IMAGE_SIZE, write_tiny_pipeline  # noqa: E402

# family, options of the tiny pipeline, the preset `auto` must pick
CASES = [
    ("sd3", {}, "sd3"),
    ("flux", {}, "flux-dev"),
    ("flux", {"guidance_embeds": False}, "flux-schnell"),
    ("sana", {}, "sana"),
    ("sdxl", {}, "sdxl"),
    ("sd15", {}, "sd15"),
    ("sd15", {"prediction_type": "v_prediction"}, "sd15"),
    ("pixart-sigma", {}, "pixart"),
]
PROMPTS = ["a photo of a cat", "a red car on the road", "two dogs in the snow", "a cup of tea"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _distill(pipeline: Path, prompts: Path, out: Path, steps: int, size: int) -> dict:
    # fp32 on the CPU: the presets' bf16 autocast is for GPUs and would only slow the test; the tiny pipelines'
    # image size (FLUX's pipeline default is 1024 px)
    return _invoke("distill", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts), "--steps", str(steps),
                   "--batch-size", "4", "--out", str(out), "--precision", "fp32", "--set", f"text.resolution={size}",
                   "--set", "logging.status_every_kimg=0.004", "--set", "logging.grid_samples=2")


@pytest.mark.parametrize(("family", "options", "preset"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_distill_resume_and_sample_each_family(tmp_path, family, options, preset):
    pipeline = write_tiny_pipeline(family, tmp_path / "pipe", **options)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    size = IMAGE_SIZES.get(family, TINY_IMAGE_SIZE)
    straight = tmp_path / "straight"
    _distill(pipeline, prompts, straight, 4, size)
    config = json.loads((straight / "config.json").read_text())
    assert config["training"]["batch_gpu"] in (2, 4)  # the preset's micro-batch adapted to --batch-size 4
    dry = CliRunner().invoke(app, ["distill", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts),
                                   "--dry-run"])
    assert dry.exit_code == 0 and f"(preset:{preset})" in dry.stdout, dry.stdout

    split = tmp_path / "split"
    _distill(pipeline, prompts, split, 2, size)
    resumed = _distill(pipeline, prompts, split, 4, size)
    assert resumed["resumed_from"] is not None
    assert run_records(straight, "status") == run_records(split, "status")
    a, b = load_file(str(list_generators(straight)[-1])), load_file(str(list_generators(split)[-1]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "samples"
    summary = _invoke("sample", "--generator", str(straight), "--prompt", "a photo of a cat", "--prompt", "a red car",
                      "--n", "2", "--out", str(out))
    assert summary["nfe"] == 1 and sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]
    images = np.load(_invoke("sample", "--generator", str(straight), "--prompt", "a photo of a cat", "--prompt",
                             "a red car", "--n", "2", "--out", str(tmp_path / "s.npz"))["out"])["images"]
    assert images.shape == (2, size, size, 3) and not np.array_equal(images[0], images[1])

    teacher = _invoke("sample", "--teacher", f"diffusers:{pipeline}", "--prompt", "a photo of a cat", "--n", "1",
                      "--steps", "2", "--resolution", str(size), "--out", str(tmp_path / "t.npz"))
    assert teacher["source"] == "teacher" and np.load(tmp_path / "t.npz")["images"].shape == (1, size, size, 3)


def test_a_teacher_without_guidance_refuses_a_guidance_scale_before_the_run_directory(tmp_path):
    pipeline = write_tiny_pipeline("flux", tmp_path / "schnell", guidance_embeds=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = CliRunner().invoke(app, ["distill", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts),
                                      "--out", str(tmp_path / "run"), "--steps", "1", "--device", "cpu",
                                      "--set", "text.guidance_scale=3.5", "--set", "text.resolution=16"])
    assert result.exit_code == 2 and "takes no guidance" in result.stderr and "text.guidance_scale=1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
