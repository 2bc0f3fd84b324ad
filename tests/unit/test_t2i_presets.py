"""The text-to-image families' presets: `auto` picks each family's from the teacher name or the folder's JSON files,
their values are the cited sources', and text.resolution sets the latent shape the generator makes."""

from __future__ import annotations

import json
import math

import pytest

from simcli.config.resolve import resolve_spec
from simcli.config.t2i_presets import FLOW_SIGMA_INIT, SCALED_LINEAR_SIGMA_RANGE
from simcli.errors import UsageError
from simcli.teachers.diffusers_teacher import architecture_at_resolution, latent_multiple
from simcli.teachers.registry import describe_teacher_name


@pytest.mark.parametrize(("name", "preset"), [
    ("pixart-alpha-512", "pixart"), ("pixart-sigma-512", "pixart"), ("sd35-medium", "sd3"), ("flux1-dev", "flux-dev"),
    ("flux1-schnell", "flux-schnell"), ("sana-600m-512", "sana"), ("sdxl-base", "sdxl"), ("sd15", "sd15"),
])
def test_auto_picks_each_official_teachers_family_preset_without_the_network(name, preset):
    assert describe_teacher_name(name) == (name, preset)


def _folder(tmp_path, pipeline_class: str, network: str, config: dict):
    folder = tmp_path / pipeline_class
    (folder / network).mkdir(parents=True)
    for part in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                 "tokenizer_3"):
        (folder / part).mkdir()
        (folder / part / "config.json").write_text("{}")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    (folder / network / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(("embeds", "preset"), [(True, "flux-dev"), (False, "flux-schnell")])
def test_a_local_flux_folder_is_dev_or_schnell_by_its_transformer_config(tmp_path, embeds, preset):
    folder = _folder(tmp_path, "FluxPipeline", "transformer",
                     {"_class_name": "FluxTransformer2DModel", "guidance_embeds": embeds})
    assert describe_teacher_name(f"diffusers:{folder}")[1] == preset


def _resolve(preset: str, **flags):
    spec, _ = resolve_spec("pixart-alpha-512", describe_teacher_name, preset=preset, flags=flags)
    return spec


def test_flow_presets_are_sid_dits_settings_with_a_measured_sigma_init():
    for preset, guidance in (("sd3", 4.5), ("flux-dev", 4.5), ("flux-schnell", 1.0), ("sana", 4.5)):
        spec = _resolve(preset)
        g, o = spec.generator, spec.online
        assert (g.optimizer.lr, g.optimizer.beta1, g.optimizer.beta2, g.optimizer.eps) == (1e-6, 0.0, 0.999, 1e-8)
        assert o.optimizer.lr == 1e-6 and spec.text.guidance_scale == guidance
        assert (g.noise.p_mean, g.noise.p_std) == (pytest.approx(math.log(2), abs=1e-6), 1.6) == (o.noise.p_mean, o.noise.p_std)
        assert g.sigma_init == FLOW_SIGMA_INIT == 1e4 and spec.ema.halflife_kimg == 0
        assert (spec.training.batch_size, spec.training.batch_gpu, spec.training.precision) == (256, 8, "bf16")


def test_unet_presets_are_dmd2s_one_step_settings_over_the_scaled_linear_range():
    low, high = SCALED_LINEAR_SIGMA_RANGE
    for preset, lr, guidance, batch in (("sd15", 1e-5, 1.75, 2048), ("sdxl", 5e-7, 8.0, 128)):
        spec = _resolve(preset)
        assert spec.generator.optimizer.lr == lr == spec.online.optimizer.lr and spec.text.guidance_scale == guidance
        assert spec.training.batch_size == batch and spec.generator.sigma_init == high
        assert (spec.generator.noise.sigma_min, spec.generator.noise.sigma_max) == (low, high)


def test_the_scaled_linear_range_is_the_schedules_first_and_last_bin():
    from simcli.nets.train_schedule import vp_sigma_bins

    bins = vp_sigma_bins(1000, 0.00085, 0.012, "scaled_linear")
    assert SCALED_LINEAR_SIGMA_RANGE == (pytest.approx(float(bins[0]), abs=1e-6), pytest.approx(float(bins[-1]), abs=1e-6))


def test_a_preset_micro_batch_gives_way_to_a_small_batch():
    """The issue's case: the pixart preset's 32 with --batch-size 4 is 4, said in the provenance."""
    spec, provenance = resolve_spec("pixart-alpha-512", describe_teacher_name, flags={"training": {"batch_size": 4}})
    assert spec.training.batch_gpu == 4 and provenance["training.batch_gpu"].endswith("adapted to training.batch_size")


@pytest.mark.parametrize(("record", "multiple"), [
    ({"class_name": "UNet2DConditionModel", "config": {"block_out_channels": [320, 640, 1280, 1280]}}, 8),
    ({"class_name": "FluxTransformer2DModel", "config": {"patch_size": 1}}, 2),
    ({"class_name": "SD3Transformer2DModel", "config": {"patch_size": 2}}, 2),
    ({"class_name": "SanaTransformer2DModel", "config": {"patch_size": 1}}, 1),
])
def test_resolution_sets_the_latent_shape_and_refuses_sizes_the_network_cannot_take(record, multiple):
    record = {**record, "vae_scale_factor": 8, "sample_shape": [16, 128, 128]}
    assert latent_multiple(record) == multiple
    assert architecture_at_resolution(record, 512)["sample_shape"] == [16, 64, 64]
    bad = 8 * multiple * 64 + 8
    if multiple > 1:
        with pytest.raises(UsageError, match=f"not a multiple of {8 * multiple} pixels"):
            architecture_at_resolution(record, bad)
    else:
        assert architecture_at_resolution(record, bad)["sample_shape"][1:] == [bad // 8] * 2


def test_teacher_sampling_defaults_to_each_familys_steps():
    from simcli.sampling.text_to_image import default_steps
    from simcli.teachers.pipeline_families import FAMILIES

    flux, pixart = FAMILIES["FluxPipeline"], FAMILIES["PixArtAlphaPipeline"]
    assert default_steps(flux, {"guidance_embeds": False}) == 4  # schnell
    assert default_steps(flux, {"guidance_embeds": True}) == flux.steps == 28
    assert default_steps(pixart, {}) == 14 and default_steps(FAMILIES["StableDiffusionXLPipeline"], {}) == 50
