"""`sample --teacher NAME --prompt ...` on the tiny pipeline of every family (tests/helpers/tiny_pipelines.py,
tiny_pixart.py): each samples with its own pipeline class and the scheduler its folder holds (PixArt-alpha: DPM-Solver
multistep, the paper's comparison), at the family's guidance scale, and the images are those of calling that pipeline
directly with the same seeds."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler  # noqa: E402

from simcli.errors import UsageError  # noqa: E402
from simcli.sampling.text_to_image import text_samples_to_file  # noqa: E402
from tests.helpers.tiny_pipelines import IMAGE_SIZES, TINY_IMAGE_SIZE, write_tiny_pipeline  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPTS = ["a photo of a cat", "a red house"]
SEED = 5
FLUX_SIZE = 16  # FLUX's default is 1024 px (128 latents); the tiny pipeline is sampled at its own size


@dataclass(frozen=True)
class Case:
    """A tiny pipeline and what sampling it with `steps=2` must report."""

    name: str
    family: str
    sampler: str  # the scheduler class it samples with
    guidance: float | None  # the family's default guidance scale (None: takes none)
    nfe: int  # network evaluations per sample in 2 steps
    size: int = TINY_IMAGE_SIZE
    resolution: int | None = None  # passed to text_samples_to_file
    options: dict = field(default_factory=dict)  # write_tiny_pipeline options
    call: dict = field(default_factory=dict)  # what the direct pipeline call needs besides the common arguments


_NO_BINNING = {"use_resolution_binning": False, "clean_caption": False}
CASES = [
    Case("sd3", "sd3", "FlowMatchEulerDiscreteScheduler", 7.0, 4),  # classifier-free: 2 per step
    Case("flux-dev", "flux", "FlowMatchEulerDiscreteScheduler", 3.5, 2, FLUX_SIZE, FLUX_SIZE),  # embedded: 1 per step
    Case("flux-schnell", "flux", "FlowMatchEulerDiscreteScheduler", None, 2, FLUX_SIZE, FLUX_SIZE,
         {"guidance_embeds": False}),
    Case("sana", "sana", "DPMSolverMultistepScheduler", 4.5, 4, IMAGE_SIZES["sana"], call=_NO_BINNING),
    Case("sdxl", "sdxl", "EulerDiscreteScheduler", 5.0, 4),
    Case("sd15", "sd15", "PNDMScheduler", 7.5, 6),  # PNDM without Runge-Kutta steps takes 3 steps for 2
    Case("pixart-sigma", "pixart-sigma", "DPMSolverMultistepScheduler", 4.5, 4, call=_NO_BINNING),
    Case("pixart-alpha", "pixart-alpha", "DPMSolverMultistepScheduler", 4.5, 4, call=_NO_BINNING),
]
BY_NAME = {case.name: case for case in CASES}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """folder(case name) -> the tiny pipeline folder, written once per module."""
    root, made = tmp_path_factory.mktemp("pipelines"), {}

    def get(name: str) -> Path:
        if name not in made:
            case = BY_NAME[name]
            path = root / name
            made[name] = (write_tiny_pixart(path) if case.family == "pixart-alpha"
                          else write_tiny_pipeline(case.family, path, **case.options))
        return made[name]

    return get


def sample(path: Path, out: Path, **kwargs) -> tuple[np.ndarray, dict]:
    """text_samples_to_file from diffusers:PATH into an npz: (images [N, H, W, 3], summary)."""
    arguments = {"prompts": PROMPTS, "seed": SEED, "batch_size": len(PROMPTS), "device": "cpu", "steps": 2} | kwargs
    summary = text_samples_to_file(out, generator=None, teacher=f"diffusers:{path}", **arguments)
    return np.load(out)["images"], summary


def direct_images(path: Path, case: Case, scheduler=None) -> np.ndarray:
    """The family's own pipeline called directly, one generator per seed: uint8 [N, H, W, 3]."""
    pipe = DiffusionPipeline.from_pretrained(path)
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    guidance = {} if case.guidance is None else {"guidance_scale": case.guidance}
    generators = [torch.Generator().manual_seed(SEED + i) for i in range(len(PROMPTS))]
    with torch.no_grad():
        pixels = pipe(prompt=PROMPTS, num_inference_steps=2, height=case.size, width=case.size, generator=generators,
                      output_type="pt", **guidance, **case.call).images
    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_family_samples_with_its_own_pipeline_and_defaults(tmp_path, folder, case):
    path = folder(case.name)
    images, summary = sample(path, tmp_path / "a.npz", resolution=case.resolution)
    again, _ = sample(path, tmp_path / "b.npz", resolution=case.resolution)
    assert images.shape == (len(PROMPTS), case.size, case.size, 3) and images.dtype == np.uint8
    assert images.std() > 5 and not np.array_equal(images[0], images[1])  # not blank, and the seed/prompt matter
    assert np.array_equal(images, again)  # the same seeds: the same images
    assert (summary["sampler"], summary["steps"], summary["guidance_scale"], summary["nfe"], summary["resolution"]) == (
        case.sampler, 2, case.guidance, case.nfe, case.size)
    paper_solver = DPMSolverMultistepScheduler if case.family == "pixart-alpha" else None
    assert np.array_equal(images, direct_images(path, case, paper_solver))


def test_steps_guidance_and_resolution_override_the_familys(tmp_path, folder):
    _, summary = sample(folder("sd3"), tmp_path / "sd3.npz", steps=3, guidance_scale=1.0)
    assert (summary["steps"], summary["guidance_scale"], summary["nfe"]) == (3, 1.0, 3)  # unguided: 1 per step
    images, summary = sample(folder("flux-dev"), tmp_path / "flux.npz", resolution=24, guidance_scale=5.0)
    assert images.shape[1:3] == (24, 24) and (summary["resolution"], summary["guidance_scale"], summary["nfe"]) == (
        24, 5.0, 2)


def test_default_steps_are_the_familys_and_pixart_alpha_keeps_the_papers_14(tmp_path, folder):
    for name, steps in (("pixart-alpha", 14), ("pixart-sigma", 20)):
        _, summary = sample(folder(name), tmp_path / f"{name}.npz", prompts=PROMPTS[:1], batch_size=1, steps=None)
        assert (summary["steps"], summary["nfe"]) == (steps, 2 * steps)


def test_pixart_alpha_samples_with_dpm_solver_whatever_its_folder_holds(tmp_path, folder):
    """The paper's comparison for PixArt-alpha; PixArt-Sigma keeps the scheduler its folder names."""
    for name in ("pixart-alpha", "pixart-sigma"):
        path = tmp_path / name
        shutil.copytree(folder(name), path)
        config_file = path / "scheduler" / "scheduler_config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps(config | {"_class_name": "EulerDiscreteScheduler"}))
        index_file = path / "model_index.json"
        index = json.loads(index_file.read_text())
        index_file.write_text(json.dumps(index | {"scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
        images, summary = sample(path, tmp_path / f"{name}.npz")
        expected = "DPMSolverMultistepScheduler" if name == "pixart-alpha" else "EulerDiscreteScheduler"
        assert summary["sampler"] == expected
        original, _ = sample(folder(name), tmp_path / f"{name}-original.npz")
        assert np.array_equal(images, original) == (name == "pixart-alpha")


def test_what_a_teacher_cannot_take_is_one_line_before_it_loads(tmp_path, folder, monkeypatch):
    from simcli.teachers.pipeline_source import DiffusersPipelineSource

    monkeypatch.setattr(DiffusersPipelineSource, "pipeline", lambda *a, **k: pytest.fail("the pipeline was loaded"))
    with pytest.raises(UsageError, match="takes no guidance") as schnell:
        sample(folder("flux-schnell"), tmp_path / "s.npz", resolution=FLUX_SIZE, guidance_scale=3.5)
    assert schnell.value.hint == "drop --guidance"
    with pytest.raises(UsageError, match="multiples of 4 px"):  # VAE factor 2 x FLUX's 2 x 2 packing
        sample(folder("flux-dev"), tmp_path / "f.npz", resolution=18)
    with pytest.raises(UsageError, match="--guidance apply to --teacher only"):
        text_samples_to_file(tmp_path / "g.npz", generator=tmp_path / "run", teacher=None, prompts=PROMPTS, seed=0,
                             batch_size=2, device="cpu", guidance_scale=4.5)
    assert not any(tmp_path.glob("*.npz"))
