"""`simcli export --format safetensors` of generators distilled (through the CLI, 2 iterations) from tiny PixArt-alpha,
FLUX.1-dev, SD3 and SD1.5 pipelines: one file under the original checkpoint's names, which diffusers' own single-file
conversion (PixArt: simcli.nets.pixart_original_keys, diffusers has none) turns back into exactly the generator's
weights, loading strictly into the family's transformer; the metadata holds simcli's record (sigma_init, t_init,
the noise levels, the teacher, the spec's sha256); the model card says how to load it. A family without a layout is
refused in one line naming the exported families, with nothing written (an SD3 generator stands in for SANA's)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("diffusers")

from simcli.export.edm_file import EXPORT_FORMAT, spec_sha256  # noqa: E402
from simcli.nets.pixart_original_keys import diffusers_state_dict  # noqa: E402
from tests.cli.test_cli_export_diffusers import PROMPTS, pixart_run  # noqa: E402, F401  (the shared tiny PixArt run)
from tests.helpers.flux1_width import flux1_width_of  # noqa: E402
from tests.helpers.tiny_pipelines import IMAGE_SIZES, write_tiny_pipeline  # noqa: E402

ORIGINAL_PREFIXES = {
    "pixart": ("blocks.", "x_embedder.", "t_embedder.", "t_block.", "y_embedder.", "final_layer."),
    "flux": ("double_blocks.", "single_blocks.", "time_in.", "vector_in.", "guidance_in.", "txt_in.", "img_in.",
             "final_layer."),
    "sd3": ("joint_blocks.", "x_embedder.", "t_embedder.", "y_embedder.", "context_embedder.", "final_layer.",
            "pos_embed"),
}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _distill(root, family: str, steps: int = 1):
    from tests.cli.conftest import run_cli

    pipeline = write_tiny_pipeline(family, root / "pipe")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    run = root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SIMCLI_CACHE", str(root / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        result = run_cli("distill", "--teacher", f"diffusers:{pipeline}", "--prompts", prompts, "--steps", "2",
                         "--batch-size", "4", "--out", run, "--precision", "fp32", "--set",
                         f"text.resolution={IMAGE_SIZES[family]}", "--set", f"generator.steps={steps}",
                         "--set", "logging.grid_samples=2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def flux_run(tmp_path_factory):
    """A 2-step generator distilled from the tiny FLUX.1-dev pipeline (shared; never modified)."""
    return _distill(tmp_path_factory.mktemp("export-flux"), "flux", steps=2)


@pytest.fixture(scope="module")
def sd15_run(tmp_path_factory):
    """A one-step generator distilled from the tiny SD1.5 pipeline (shared; never modified)."""
    return _distill(tmp_path_factory.mktemp("export-sd15"), "sd15")


@pytest.fixture(scope="module")
def sd3_run(tmp_path_factory):
    """A one-step generator distilled from the tiny SD3 pipeline (shared; never modified)."""
    return _distill(tmp_path_factory.mktemp("export-sd3"), "sd3")


def _generator_weights(run):
    """The generator's diffusers network (the snapshot exported) and its state dict."""
    from simcli.export.single_file import network_state
    from simcli.sampling.generator import load_generator

    net, meta, _ = load_generator(run)
    return net.network, network_state(net, meta)


def _export(cli, run, out):
    result = cli("export", run, "--format", "safetensors", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    from safetensors import safe_open

    with safe_open(str(out / summary["weights"]), framework="pt") as f:
        raw = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta = {k: (v if k == "format" else json.loads(v)) for k, v in raw.items()}
    return summary, tensors, meta


def _check_record(meta, summary, out, run, family, layout, steps):
    config = json.loads((out / "distill-config.json").read_text())
    assert meta["format"] == EXPORT_FORMAT and meta["family"] == family and meta["layout"] == layout
    assert meta["spec_sha256"] == spec_sha256(config) == summary["spec_sha256"]
    assert meta["steps"] == steps == len(meta["generator_sigmas"]) and meta["generator_sigmas"][0] == meta["sigma_init"]
    assert meta["teacher"] == "pipe" and meta["method"] == config["loss"]["method"]  # a local teacher: its folder name
    assert meta["images_seen"] == summary["images_seen"] == 8 and meta["source_file"] == summary["source"].split("/")[-1]
    assert summary["family"] == family and summary["layout"] == layout
    assert str(run) in summary["source"]


def _check_card(out, loader: bool):
    card = (out / "README.md").read_text()
    head = yaml.safe_load(card[4:].partition("\n---\n")[0])
    assert head["library_name"] == "diffusers" and head["pipeline_tag"] == "text-to-image"
    assert {"diffusers", "text-to-image", "safetensors"} <= set(head["tags"])
    assert "## How to use" in card and "## Sampling" in card and "simcli sample --generator" in card
    assert ("from_single_file" in card) == loader and "trust_remote_code" not in card


def test_a_flux_generator_exports_in_black_forest_labs_layout(cli, flux_run, tmp_path):
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    out = tmp_path / "flux-export"
    summary, tensors, meta = _export(cli, flux_run, out)
    _check_record(meta, summary, out, flux_run, "flux", "flux-original", steps=2)
    assert meta["t_init"] == meta["sigma_init"] / (1 + meta["sigma_init"]) == summary["t_init"]
    assert meta["generator_times"] == [s / (1 + s) for s in meta["generator_sigmas"]]
    assert meta["embedded_guidance"] > 0 and meta["network_class"] == "FluxTransformer2DModel"
    assert all(k.startswith(ORIGINAL_PREFIXES["flux"]) for k in tensors)
    assert {"double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight", "guidance_in.in_layer.weight",
            "final_layer.adaLN_modulation.1.weight"} <= set(tensors)

    network, weights = _generator_weights(flux_run)
    fresh = FluxTransformer2DModel.from_config(network.config)
    with flux1_width_of(network.inner_dim):
        converted = convert_flux_transformer_checkpoint_to_diffusers(dict(tensors))
    fresh.load_state_dict(converted, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    _check_card(out, loader=True)


def test_an_sd3_generator_exports_in_the_mmdit_layout_from_single_file_loads(cli, sd3_run, tmp_path):
    from diffusers import SD3Transformer2DModel

    out = tmp_path / "sd3-export"
    summary, tensors, meta = _export(cli, sd3_run, out)
    _check_record(meta, summary, out, sd3_run, "sd3", "sd3-original", steps=1)
    assert meta["t_init"] == meta["sigma_init"] / (1 + meta["sigma_init"]) and "embedded_guidance" not in meta
    assert all(k.startswith(ORIGINAL_PREFIXES["sd3"]) for k in tensors)
    assert "joint_blocks.1.context_block.adaLN_modulation.1.weight" in tensors

    _, weights = _generator_weights(sd3_run)
    loaded = SD3Transformer2DModel.from_single_file(str(out / summary["weights"]), config=str(sd3_run.parent / "pipe"),
                                                    subfolder="transformer")
    assert sorted(loaded.state_dict()) == sorted(weights)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
    _check_card(out, loader=True)


def test_an_sd15_generator_exports_in_the_ldm_layout_from_single_file_loads(cli, sd15_run, tmp_path):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "sd15-export"
    summary, tensors, meta = _export(cli, sd15_run, out)
    _check_record(meta, summary, out, sd15_run, "unet", "ldm-original", steps=1)
    assert "t_init" not in meta and meta["component"] == "unet" and meta["network_class"] == "UNet2DConditionModel"
    assert all(k.startswith("model.diffusion_model.") for k in tensors)
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.out.2.bias"} <= set(tensors)

    _, weights = _generator_weights(sd15_run)
    loaded = UNet2DConditionModel.from_single_file(str(out / summary["weights"]), config=str(sd15_run.parent / "pipe"),
                                                   subfolder="unet")
    assert sorted(loaded.state_dict()) == sorted(weights)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
    _check_card(out, loader=True)
    card = (out / "README.md").read_text()
    assert 'unet = UNet2DConditionModel.from_single_file(' in card and "StableDiffusionPipeline" in card


def test_a_pixart_generator_exports_in_the_pixart_repository_layout(cli, pixart_run, tmp_path):  # noqa: F811
    from diffusers import PixArtTransformer2DModel

    out = tmp_path / "pixart-export"
    summary, tensors, meta = _export(cli, pixart_run, out)
    _check_record(meta, summary, out, pixart_run, "pixart", "pixart-original", steps=1)
    assert "t_init" not in meta and meta["left_out"] == ["pos_embed", "y_embedder.y_embedding"]
    assert all(k.startswith(ORIGINAL_PREFIXES["pixart"]) for k in tensors)
    assert {"blocks.0.attn.qkv.weight", "blocks.1.cross_attn.kv_linear.bias", "t_block.1.weight"} <= set(tensors)

    network, weights = _generator_weights(pixart_run)
    converted, unplaced = diffusers_state_dict(tensors)
    assert unplaced == []
    fresh = PixArtTransformer2DModel.from_config(network.config)
    fresh.load_state_dict(converted, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    _check_card(out, loader=False)
    assert "strict=False" in (out / "README.md").read_text()


def test_a_family_without_a_layout_is_refused_in_one_line(cli, assert_usage_error, tree, sd3_run, tmp_path,
                                                          monkeypatch):
    from simcli.export import single_file

    # the SD3 generator stands in for a family without a layout (a new table: the module's keeps its order)
    monkeypatch.setattr(single_file, "FAMILIES", {k: v for k, v in single_file.FAMILIES.items() if k != "sd3"})
    out = tmp_path / "out"
    before = tree(tmp_path)
    assert_usage_error(cli("export", sd3_run, "--format", "safetensors", "--out", out), "a sd3 generator",
                       "exports the text-to-image families pixart, flux, unet")
    assert tree(tmp_path) == before
