"""`simcli export --format safetensors` of EDM-type generators: the file's metadata, a strict reload from the metadata
alone into the EDM/EDM2 class it records, and images equal to `simcli sample`'s, through the example script's own code
(examples/edm_export/rebuild_with_nvidia_code.py) with simcli's classes standing in for NVIDIA's."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from simcli.cli.app import app
from simcli.export.edm_file import EXPORT_FORMAT, read_export_file
from simcli.nets.edm2_precond import EDM2Precond
from simcli.nets.edm_precond import EDMPrecond
from simcli.rundir.snapshots import read_generator
from simcli.sampling.run import generator_samples
from tests.helpers.edm2_pickle_writer import tiny_edm2, write_edm2_snapshot, write_tiny_vae
from tests.helpers.tiny_edm import write_tiny_edm

FAST = ["--preset", "tiny", "--batch-size", "4", "--steps", "3"]
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "edm_export" / "rebuild_with_nvidia_code.py"
STAND_INS = {"EDMPrecond": EDMPrecond, "Precond": EDM2Precond}  # simcli's classes for NVIDIA's, same kwargs and keys


def cli(*args, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def script():
    """The example script as a module (it imports neither simcli nor NVIDIA's code at import time)."""
    spec = importlib.util.spec_from_file_location("rebuild_with_nvidia_code", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def edm_teacher(tmp_path_factory):
    return write_tiny_edm(tmp_path_factory.mktemp("teacher") / "tiny-edm.pkl", label_dim=10)


def _export(run: Path, out: Path) -> tuple[dict, Path]:
    summary = json.loads(cli("export", run, "--format", "safetensors", "--out", out, "--json").stdout)
    return summary, out / summary["weights"]


def _rebuilt(script, file: Path):
    """The network built from the file's metadata alone and loaded strictly, as the script does with NVIDIA's class."""
    state_dict, meta = script.read_export(file)
    cls = STAND_INS[meta["nvidia_code"].split(" ")[1]]
    return script.rebuild(cls, state_dict, meta), meta


def _run_card_snippet(folder: Path, monkeypatch) -> dict:
    """Execute the model card's Python example in the export folder, NVIDIA's module stood in for by simcli's class."""
    code = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    module_name, class_name = json.loads((folder / "simcli-export.json").read_text())["nvidia_code"].split(" ")
    module_name = module_name.removesuffix(".py").replace("/", ".")
    module = types.ModuleType(module_name)
    setattr(module, class_name, STAND_INS[class_name])
    monkeypatch.setitem(sys.modules, "training", types.ModuleType("training"))
    monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.chdir(folder)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_edm_export_metadata_strict_reload_and_images_equal_simcli_sample(edm_teacher, script, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cli("distill", "--teacher", edm_teacher, *FAST, "--out", run)
    summary, file = _export(run, tmp_path / "export")
    tensors, gen_meta, source = read_generator(run)
    assert summary["source"] == str(source) and summary["class_name"] == "EDMPrecond"

    with safe_open(str(file), framework="pt") as f:
        raw = f.metadata()
    assert raw["format"] == EXPORT_FORMAT
    meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
    config = json.loads((run / "config.json").read_text())
    assert meta["architecture"] == gen_meta["architecture"] and meta["architecture"]["class_name"] == "EDMPrecond"
    assert meta["nvidia_code"] == "training/networks.py EDMPrecond"
    assert meta["sigma_init"] == 2.5 and meta["generator_sigmas"] == [2.5] and meta["steps"] == 1
    assert (meta["teacher"], meta["method"], meta["images_seen"], meta["step"]) == ("tiny-edm.pkl", "sim", 12, 3)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert meta["spec_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert gen_meta["spec"] == config

    exported, _ = read_export_file(file)
    assert exported.keys() == tensors.keys() and all(t.dtype == torch.float32 for t in exported.values())
    assert all(torch.equal(exported[k], tensors[k]) for k in tensors)  # the state dict itself: NVIDIA's names
    net, meta = _rebuilt(script, file)
    assert set(net.state_dict()) == set(exported)

    # Seeds 10..15 through the script's generate() and simcli's sampler: bitwise equal, and so are the PNGs.
    outputs = script.generate(net, meta, list(range(10, 16)))
    expected, labels, _ = generator_samples(run, 6, seed=10, device="cpu")
    assert float((outputs - expected).abs().max()) == 0.0
    pngs = tmp_path / "pngs"
    cli("sample", "--generator", run, "--n", 6, "--seed", 10, "--out", pngs)
    images = script.to_images(outputs, meta).numpy()
    for i, seed in enumerate(range(10, 16)):
        assert np.array_equal(np.asarray(Image.open(pngs / f"{seed:06d}.png")), images[i])
    # --class: the class replaced after it is drawn, as simcli sample does
    fixed, _, _ = generator_samples(run, 3, seed=4, class_label=7, device="cpu")
    assert torch.equal(script.generate(net, meta, [4, 5, 6], class_label=7), fixed)

    scope = _run_card_snippet(file.parent, monkeypatch)  # the card's own example runs as written
    assert scope["images"].shape == (16, 3, 8, 8) and scope["images"].dtype == torch.uint8


def test_few_step_and_lora_generators_export_as_plain_networks(edm_teacher, script, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cli("distill", "--teacher", edm_teacher, *FAST, "--out", run, "--set", "generator.steps=2",
        "--set", "generator.lora_rank=2")
    _, gen_meta, _ = read_generator(run)
    assert "lora" in gen_meta and len(gen_meta["generator_sigmas"]) == 2  # adapters only, two noise levels
    _, file = _export(run, tmp_path / "export")
    net, meta = _rebuilt(script, file)  # strict: the adapters were merged into the teacher's weights
    assert meta["lora"] == {"rank": 2, "alpha": 2.0, "merged": True}
    assert meta["steps"] == 2 and meta["generator_sigmas"] == gen_meta["generator_sigmas"]
    outputs = script.generate(net, meta, [0, 1, 2])
    expected, _, _ = generator_samples(run, 3, seed=0, device="cpu")
    # merged weights W + scale B A against the adapted forward W x + scale B (A x): equal up to float rounding (0 here)
    assert float((outputs - expected).abs().max()) < 1e-4
    assert torch.isfinite(_run_card_snippet(file.parent, monkeypatch)["images"].float()).all()  # with its step loop


def test_edm2_latent_export_reloads_strictly_and_decodes_like_simcli_sample(script, tmp_path, monkeypatch):
    vae = write_tiny_vae(tmp_path / "vae")
    teacher = write_edm2_snapshot(tmp_path / "teacher.pkl", *tiny_edm2(seed=0), vae_name=str(vae))
    run = tmp_path / "run"
    cli("distill", "--teacher", teacher, "--preset", "tiny", "--batch-size", 4, "--steps", 2,
        "--set", "logging.grid_samples=4", "--out", run)
    summary, file = _export(run, tmp_path / "export")
    assert summary["class_name"] == "Precond" and summary["nvidia_code"] == "training/networks_edm2.py Precond"
    net, meta = _rebuilt(script, file)
    assert isinstance(net, EDM2Precond) and meta["architecture"]["latents"]["vae"] == str(vae)
    assert meta["architecture"]["init_kwargs"]["use_fp16"] is True  # recorded as upstream; float32 on the CPU

    outputs = script.generate(net, meta, [5, 6, 7], class_label=3)
    expected, _, _ = generator_samples(run, 3, seed=5, class_label=3, device="cpu")
    assert float((outputs - expected).abs().max()) == 0.0
    pngs = tmp_path / "pngs"
    cli("sample", "--generator", run, "--n", 3, "--seed", 5, "--class", 3, "--out", pngs)
    images = script.to_images(outputs, meta).numpy()  # through the recorded VAE, with diffusers
    for i, seed in enumerate(range(5, 8)):
        image = np.asarray(Image.open(pngs / f"{seed:06d}.png"))
        assert image.shape == (16, 16, 3) and np.array_equal(image, images[i])
    scope = _run_card_snippet(file.parent, monkeypatch)
    assert scope["x"].shape == (16, 4, 8, 8) and "images" not in scope  # latents: the card says to decode them
