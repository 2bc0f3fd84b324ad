"""Single-file export of text-to-image generators (simcli.export.single_file_*): each family's diffusers -> original
mapping, checked by a round trip through the conversion users load single files with. A tiny random-weight
transformer (or UNet) state dict -> the original layout -> diffusers' own convert_*_to_diffusers (SD3, FLUX, the LDM
UNet; for PixArt, which diffusers cannot load from a single file, simcli.nets.pixart_original_keys' forward mapping)
-> exactly the tensors started from, loading strictly into a fresh model of the class. SD3, FLUX and the UNet also
load through `from_single_file(..., config=<local folder>)`."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from simcli.errors import UsageError  # noqa: E402
from simcli.export.single_file import FAMILIES, check_family  # noqa: E402
from simcli.export.single_file_flux import flux_original  # noqa: E402
from simcli.export.single_file_keys import swap_halves  # noqa: E402
from simcli.export.single_file_pixart import LEFT_OUT, pixart_original  # noqa: E402
from simcli.export.single_file_sd3 import sd3_original  # noqa: E402
from simcli.export.single_file_unet import PREFIX, ldm_unet_original  # noqa: E402
from simcli.nets.pixart_original_keys import diffusers_state_dict, original_key_names  # noqa: E402
from tests.helpers.flux1_width import flux1_width_of  # noqa: E402
from tests.helpers.tiny_pipelines import tiny_components  # noqa: E402


def _tiny(family: str, **options) -> torch.nn.Module:
    return tiny_components(family, **options)["transformer"]


def _tiny_sd35() -> torch.nn.Module:
    """SD3.5-medium's variant of the tiny SD3 transformer: RMS qk-norm and dual attention in block 0."""
    from diffusers import SD3Transformer2DModel

    with torch.random.fork_rng(devices=[]), torch.no_grad():  # the global RNG left as it was
        torch.manual_seed(3)
        model = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                      attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                      joint_attention_dim=64, pooled_projection_dim=48, pos_embed_max_size=16,
                                      qk_norm="rms_norm", dual_attention_layers=(0,))
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def _assert_same_and_loads(model: torch.nn.Module, converted: dict[str, torch.Tensor]) -> None:
    """The converted dict is the model's state dict exactly, and loads strictly into a fresh model of its class."""
    start = model.state_dict()
    assert sorted(converted) == sorted(start)
    for key, tensor in start.items():
        assert converted[key].dtype == tensor.dtype and torch.equal(converted[key], tensor), key
    fresh = type(model).from_config(model.config)
    fresh.load_state_dict(converted, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in start.items())


# ------------------------------------------------------------------------------------------------- PixArt


@pytest.mark.parametrize("which", ["pixart-alpha", "pixart-sigma"])
def test_pixart_round_trips_through_the_original_key_mapping(which):
    if which == "pixart-sigma":
        model = _tiny("pixart-sigma")
    else:
        from tests.helpers.tiny_pixart import tiny_components as tiny_alpha

        model = tiny_alpha()["transformer"]
    original = pixart_original(model.state_dict())
    assert sorted(original) == sorted(original_key_names([0, 1]))
    assert not set(LEFT_OUT) & set(original)
    state = model.state_dict()
    qkv = original["blocks.1.attn.qkv.weight"]
    assert torch.equal(qkv, torch.cat([state[f"transformer_blocks.1.attn1.to_{p}.weight"] for p in "qkv"]))
    assert torch.equal(original["final_layer.scale_shift_table"], state["scale_shift_table"])
    back, unplaced = diffusers_state_dict(original)
    assert unplaced == []
    _assert_same_and_loads(model, back)


# ---------------------------------------------------------------------------------------------------- SD3


@pytest.mark.parametrize("variant", ["sd3", "sd3.5-medium"])
def test_sd3_round_trips_through_diffusers_conversion(variant):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    model = _tiny("sd3") if variant == "sd3" else _tiny_sd35()
    state = model.state_dict()
    original = sd3_original(state)
    assert all(k.startswith(("joint_blocks.", "final_layer.", "x_embedder.", "t_embedder.", "y_embedder.",
                             "context_embedder.", "pos_embed")) for k in original)
    assert torch.equal(original["joint_blocks.0.context_block.attn.qkv.bias"],
                       torch.cat([state[f"transformer_blocks.0.attn.add_{p}_proj.bias"] for p in "qkv"]))
    assert torch.equal(original["final_layer.adaLN_modulation.1.weight"], swap_halves(state["norm_out.linear.weight"]))
    assert torch.equal(original["joint_blocks.1.context_block.adaLN_modulation.1.bias"],  # the pre-only last block
                       swap_halves(state["transformer_blocks.1.norm1_context.linear.bias"]))
    assert torch.equal(original["joint_blocks.0.context_block.adaLN_modulation.1.bias"],
                       state["transformer_blocks.0.norm1_context.linear.bias"])
    if variant == "sd3.5-medium":
        assert "joint_blocks.0.x_block.attn2.qkv.weight" in original and "joint_blocks.1.x_block.attn.ln_q.weight" in original
    _assert_same_and_loads(model, convert_sd3_transformer_checkpoint_to_diffusers(dict(original)))


def test_sd3_file_loads_with_from_single_file(tmp_path, monkeypatch):
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny("sd3")
    model.save_config(tmp_path / "teacher" / "transformer")
    save_file(sd3_original(model.state_dict()), tmp_path / "g.safetensors")
    loaded = SD3Transformer2DModel.from_single_file(str(tmp_path / "g.safetensors"), config=str(tmp_path / "teacher"),
                                                    subfolder="transformer")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------------- FLUX


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_flux_round_trips_through_diffusers_conversion(guidance_embeds):
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    model = _tiny("flux", guidance_embeds=guidance_embeds)
    state = model.state_dict()
    original = flux_original(state)
    assert ("guidance_in.in_layer.weight" in original) == guidance_embeds
    linear1 = torch.cat([state[f"single_transformer_blocks.0.attn.to_{p}.weight"] for p in "qkv"]
                        + [state["single_transformer_blocks.0.proj_mlp.weight"]])
    assert torch.equal(original["single_blocks.0.linear1.weight"], linear1)
    assert torch.equal(original["double_blocks.0.img_attn.norm.key_norm.scale"],
                       state["transformer_blocks.0.attn.norm_k.weight"])
    assert torch.equal(original["final_layer.adaLN_modulation.1.bias"], swap_halves(state["norm_out.linear.bias"]))
    assert len(original) == len(state) - 2 * 4 - 2 * 3  # per leaf: two q|k|v triples, one q|k|v|mlp fused into one
    with flux1_width_of(model.inner_dim):
        converted = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    _assert_same_and_loads(model, converted)


def test_flux_file_loads_with_from_single_file(tmp_path, monkeypatch):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _tiny("flux")
    model.save_config(tmp_path / "teacher" / "transformer")
    save_file(flux_original(model.state_dict()), tmp_path / "g.safetensors")
    with flux1_width_of(model.inner_dim):
        loaded = FluxTransformer2DModel.from_single_file(str(tmp_path / "g.safetensors"),
                                                         config=str(tmp_path / "teacher"), subfolder="transformer")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------------------- UNets


def _tiny_unet_two_layers() -> torch.nn.Module:
    """SD's layers_per_block (2) and three levels: two cross-attention blocks, then a plain one (SD1.5's shape)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(5)
        model = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16, 16), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
            attention_head_dim=2, norm_num_groups=4)
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


UNETS = {"sd15": lambda: tiny_components("sd15")["unet"],
         "sd21-v": lambda: tiny_components("sd15", prediction_type="v_prediction")["unet"],
         "sdxl": lambda: tiny_components("sdxl")["unet"], "sd15-two-layers": _tiny_unet_two_layers}


@pytest.mark.parametrize("which", list(UNETS))
def test_unets_round_trip_through_diffusers_ldm_conversion(which):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = UNETS[which]()
    state = model.state_dict()
    original = ldm_unet_original(state)
    assert all(k.startswith(PREFIX) for k in original)
    per = model.config.layers_per_block
    downsample = f"{PREFIX}input_blocks.{per + 1}.0.op.weight"  # block 0: resnets at 1..per, then its downsampler
    assert torch.equal(original[downsample], state["down_blocks.0.downsamplers.0.conv.weight"])
    assert torch.equal(original[f"{PREFIX}middle_block.2.out_layers.3.bias"], state["mid_block.resnets.1.conv2.bias"])
    assert (f"{PREFIX}label_emb.0.0.weight" in original) == (which == "sdxl")
    _assert_same_and_loads(model, convert_ldm_unet_checkpoint(dict(original), dict(model.config)))


def test_unet_file_loads_with_from_single_file(tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_components("sdxl")["unet"]
    model.save_config(tmp_path / "teacher" / "unet")
    save_file(ldm_unet_original(model.state_dict()), tmp_path / "g.safetensors")
    loaded = UNet2DConditionModel.from_single_file(str(tmp_path / "g.safetensors"), config=str(tmp_path / "teacher"),
                                                   subfolder="unet")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("family", ["pixart", "sd3", "flux", "unet"])
def test_a_tensor_no_move_places_is_refused(family):
    model = tiny_components({"pixart": "pixart-sigma", "unet": "sd15"}.get(family, family))[
        "unet" if family == "unet" else "transformer"]
    state = {**model.state_dict(), "extra_embedder.linear.weight": torch.zeros(2, 2)}
    layout = FAMILIES[family].layout
    with pytest.raises(ValueError, match=f"the {layout} layout has no name for extra_embedder.linear.weight"):
        FAMILIES[family].convert(state)


def test_other_families_are_refused_naming_the_exported_ones(tmp_path):
    with pytest.raises(UsageError) as caught:
        check_family("sana", tmp_path / "generator.safetensors")
    assert "a sana generator" in caught.value.message and "pixart, sd3, flux, unet" in caught.value.message
    assert "\n" not in caught.value.message


def test_swap_halves_is_its_own_inverse():
    tensor = torch.arange(12.0).reshape(6, 2)
    assert swap_halves(tensor).tolist() == [[6.0, 7.0], [8.0, 9.0], [10.0, 11.0], [0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert torch.equal(swap_halves(swap_halves(tensor)), tensor)

