"""`export_diffusers` on tiny random pipelines: a generator distilled through the CLI, exported as a diffusers
pipeline folder, loaded by diffusers' own `DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)` in a fresh
Python process where simcli cannot be imported, makes the images `simcli sample --generator` makes for the same
prompts and seeds; and the refusals (another teacher, an occupied --out, nothing partial left)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from simcli.cli.app import app  # noqa: E402
from simcli.errors import UsageError  # noqa: E402
from simcli.export import diffusers_pipeline  # noqa: E402
from simcli.export.diffusers_pipeline import export_diffusers  # noqa: E402
from tests.helpers.crafted_files import MLP, write_network_file  # noqa: E402
from tests.helpers.tiny_pipelines import IMAGE_SIZES, write_tiny_pipeline  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPTS = ["a photo of a cat", "a red car on the road", "two dogs in the snow", "a cup of tea"]
SAMPLE_PROMPTS = ["a photo of a cat", "the red dog on a mountain"]
SEED = 7
TOLERANCE = 1
"""Max abs difference allowed between the exported pipeline's uint8 images and simcli's. Both run the same float32
operations in the same order on the same CPU (measured: 0 for every case below); one level leaves room for a BLAS
that blocks a matrix product differently in another process, which can move a pixel across a rounding boundary."""

# (case id, tiny pipeline family, components mode, generator steps, --set options of the run, tiny pipeline options)
CASES = [
    ("pixart-alpha-copy", "pixart-alpha", "copy", 1, (), {}),
    ("pixart-sigma-reference-2step", "pixart-sigma", "reference", 2, (), {}),
    ("flux-dev-copy", "flux", "copy", 1, (), {}),
    ("sd3-lora-copy", "sd3", "copy", 1, ("generator.lora_rank=4",), {}),
    ("sana-reference", "sana", "reference", 1, (), {}),
    ("sd15-copy", "sd15", "copy", 1, (), {}),
    ("sd15-v-reference-2step", "sd15", "reference", 2, (), {"prediction_type": "v_prediction"}),
    ("sdxl-copy", "sdxl", "copy", 1, (), {}),
]
UNET_FAMILIES = ("sd15", "sdxl")  # their network is the pipeline's `unet`, every other family's its `transformer`

# Run with `python -I` (no PYTHONPATH, no user site, no cwd on sys.path); the venv has simcli installed in editable
# mode, so its finder is blocked too: any import of simcli fails in this process.
LOADER = r"""
import sys

class _NoSimcli:
    def find_spec(self, name, path=None, target=None):
        if name == "simcli" or name.startswith("simcli."):
            raise ImportError("simcli is blocked in this process")
        return None

sys.meta_path.insert(0, _NoSimcli())
try:
    import simcli  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("simcli is importable")

import numpy as np
import torch
from diffusers import DiffusionPipeline

folder, out, seed, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
by_seed = np.stack([np.asarray(image) for image in pipe(prompts, seed=seed).images])
generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(len(prompts))]
floats = pipe(prompts, generator=generators, output_type="np").images
assert np.array_equal(np.round(floats * 255).astype(np.uint8), by_seed)
assert "simcli" not in sys.modules
np.save(out, by_seed)
print(type(pipe).__name__)
"""


def _invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _teacher(family: str, path: Path, options: dict) -> Path:
    if family == "pixart-alpha":
        return write_tiny_pixart(path)
    return write_tiny_pipeline(family, path, **options)


def _run(tmp: Path, family: str, steps: int, sets: tuple[str, ...] = (), options: dict | None = None) -> Path:
    """A generator distilled from the family's tiny pipeline (built with `options`) for 2 iterations through the
    CLI."""
    pipeline = _teacher(family, tmp / "pipe", options or {})
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run = tmp / "run"
    size = IMAGE_SIZES.get(family, 16)
    _invoke("distill", "--teacher", f"diffusers:{pipeline}", "--prompts", str(prompts), "--steps", "2",
            "--batch-size", "4", "--out", str(run), "--precision", "fp32", "--set", f"text.resolution={size}",
            "--set", f"generator.steps={steps}", *[a for option in sets for a in ("--set", option)])
    return run


def _load_elsewhere(folder: Path, out: Path, cwd: Path) -> np.ndarray:
    """uint8 images [n, H, W, 3] from the exported folder, made in a fresh `python -I` process without simcli."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "hf-modules"))
    done = subprocess.run([sys.executable, "-I", "-c", LOADER, str(folder), str(out), str(SEED), *SAMPLE_PROMPTS],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "SimcliGeneratorPipeline"
    return np.load(out)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(("family", "components", "steps", "sets", "options"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_the_exported_pipeline_makes_simclis_images(tmp_path, family, components, steps, sets, options):
    run = _run(tmp_path, family, steps, sets, options)
    folder = tmp_path / "exported"
    summary = export_diffusers(run, folder, components=components)
    assert summary["family"] == family and summary["steps"] == steps and summary["components"] == components
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_simcli", "SimcliGeneratorPipeline"]
    record = index["simcli"]
    assert record["sigma_init"] == summary["sigmas"][0] and len(record["steps"]) == steps
    parts = set(record["components"])
    held = {p.name for p in folder.iterdir() if p.is_dir()}
    network = "unet" if family in UNET_FAMILIES else "transformer"
    assert (index[network][1] == "UNet2DConditionModel") == (family in UNET_FAMILIES)
    if family in UNET_FAMILIES:  # DDPM networks: bin times; c_skip 1 (epsilon) or 1 / (sigma^2 + 1) (v), as simcli's
        sigma = torch.tensor([step["sigma"] for step in record["steps"]], dtype=torch.float32)
        v = options.get("prediction_type") == "v_prediction"
        assert [step["c_skip"] for step in record["steps"]] == (1 / (sigma**2 + 1) if v else sigma**0).tolist()
        assert record["time_dtype"] == "int64" and all(0 <= step["network_time"] < 1000 for step in record["steps"])
    if components == "copy":
        assert held == {network, *parts} and parts <= set(index)
    else:
        assert held == {network} and not parts & set(index)
        assert record["components_from"]["location"] == str((tmp_path / "pipe").resolve())
    assert (folder / "LOADING.md").read_text() == summary["loading"] and "trust_remote_code=True" in summary["loading"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no build folder left

    exported = _load_elsewhere(folder, tmp_path / "exported.npy", tmp_path)
    sampled = _invoke("sample", "--generator", str(run), *[a for p in SAMPLE_PROMPTS for a in ("--prompt", p)],
                      "--seed", str(SEED), "--n", str(len(SAMPLE_PROMPTS)), "--out", str(tmp_path / "simcli.npz"))
    assert sampled["nfe"] == steps
    images = np.load(tmp_path / "simcli.npz")["images"]
    size = IMAGE_SIZES.get(family, 16)
    assert exported.shape == images.shape == (2, size, size, 3) and exported.dtype == np.uint8
    difference = int(np.abs(exported.astype(np.int16) - images.astype(np.int16)).max())
    print(f"{family} ({components}, {steps} step(s)): max abs difference {difference} (uint8)")
    assert difference <= TOLERANCE
    assert images.std() > 1 and not np.array_equal(images[0], images[1])  # real images, the prompt matters


def test_a_generator_of_another_teacher_is_refused(tmp_path):
    generator = write_network_file(tmp_path / "gen.safetensors", MLP)
    with pytest.raises(UsageError) as caught:
        export_diffusers(generator, tmp_path / "out", components="copy")
    assert "gmm-ring8" in caught.value.message and "\n" not in caught.value.message and caught.value.hint
    assert not (tmp_path / "out").exists()


def test_an_occupied_out_and_an_unknown_mode_are_refused_and_nothing_partial_is_left(tmp_path, monkeypatch):
    run = _run(tmp_path, "pixart-sigma", 1)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not an empty directory") as caught:
        export_diffusers(run, occupied, components="copy")
    assert caught.value.hint and [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(UsageError, match="components must be one of"):
        export_diffusers(run, tmp_path / "new", components="link")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(diffusers_pipeline, "_copy_components", fail)
    with pytest.raises(OSError, match="disk full"):
        export_diffusers(run, tmp_path / "new", components="copy")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new")]  # the build folder went too
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.undo()
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert export_diffusers(run, empty, components="reference")["files"] == ["LOADING.md", "model_index.json",
                                                                          "pipeline_simcli.py", "transformer"]
