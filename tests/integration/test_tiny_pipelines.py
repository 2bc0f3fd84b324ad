"""The tiny random pipelines of tests/helpers/tiny_pipelines.py: each family saves with save_pretrained, loads
offline with DiffusionPipeline.from_pretrained as its own pipeline class, and generates finite images in 2 steps;
weights are a function of the seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DiffusionPipeline  # noqa: E402

from tests.helpers.tiny_pipelines import (  # noqa: E402
    FAMILIES,
    IMAGE_SIZES,
    LATENT_CHANNELS,
    PIPELINE_CLASSES,
    TINY_LATENT_SIZE,
    tiny_components,
    write_tiny_pipeline,
)

PROMPT = "a photo of a cat"
CASES = [(family, {}) for family in FAMILIES] + [
    ("flux", {"guidance_embeds": False}),
    ("sd15", {"prediction_type": "v_prediction"}),
]


def _case_id(case) -> str:
    """A readable test id: the family, then its options."""
    family, options = case
    return "-".join([family, *(f"{key}={value}" for key, value in options.items())])


def _call_arguments(family: str) -> dict:
    """Arguments for a 2-step CPU generation at the family's tiny size."""
    size = IMAGE_SIZES[family]  # Sana needs multiples of 32
    arguments = {"prompt": PROMPT, "num_inference_steps": 2, "height": size, "width": size,
                 "generator": torch.Generator().manual_seed(0)}
    if family in ("sana", "pixart-sigma"):
        arguments["use_resolution_binning"] = False
    if family in ("sd3", "flux", "sana", "pixart-sigma"):
        arguments["max_sequence_length"] = 32
    return arguments


def _expected_latent_shape(family: str) -> tuple[int, ...]:
    """What output_type="latent" returns: C x 8 x 8, except FLUX's packed (tokens, 4 C) sequence."""
    channels = LATENT_CHANNELS[family]
    if family == "flux":
        return (1, (TINY_LATENT_SIZE // 2) ** 2, 4 * channels)
    return (1, channels, TINY_LATENT_SIZE, TINY_LATENT_SIZE)


def _tokenizers(pipe) -> list:
    """The pipeline's tokenizers, in component-name order."""
    return [component for name, component in pipe.components.items() if name.startswith("tokenizer")]


@pytest.fixture()
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, in the environment and in huggingface_hub's already-read constant."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_saves_loads_offline_and_generates(case, tmp_path, offline):
    family, options = case
    path = write_tiny_pipeline(family, tmp_path / family, seed=0, **options)
    assert path == tmp_path / family
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == PIPELINE_CLASSES[family]

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]

    arguments = _call_arguments(family)
    images = pipe(**arguments, output_type="np").images
    size = arguments["height"]
    assert images.shape == (1, size, size, 3)
    assert np.isfinite(images).all() and images.std() > 1e-3

    arguments["generator"] = torch.Generator().manual_seed(0)
    latents = pipe(**arguments, output_type="latent").images
    assert tuple(latents.shape) == _expected_latent_shape(family)
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizers_survive_saving_and_read_words(family, tmp_path):
    components = tiny_components(family)
    built = [components[name] for name in sorted(components) if name.startswith("tokenizer")]
    loaded = _tokenizers(DiffusionPipeline.from_pretrained(write_tiny_pipeline(family, tmp_path / family)))
    assert len(loaded) == len(built) >= 1
    for after, before in zip(loaded, built, strict=True):
        ids = after(PROMPT).input_ids
        assert ids == before(PROMPT).input_ids
        assert after.decode(ids, skip_special_tokens=True).strip() == PROMPT
        assert len(after.convert_ids_to_tokens(ids, skip_special_tokens=True)) == 5  # one token per word


def _weights(family: str, seed: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Every module's state dict, flattened, and the names of its parameters (buffers are not seeded)."""
    state, parameters = {}, set()
    for name, module in sorted(tiny_components(family, seed=seed).items()):
        if isinstance(module, torch.nn.Module):
            state.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
            parameters.update(f"{name}.{key}" for key, _ in module.named_parameters())
    return state, parameters


@pytest.mark.parametrize("family", FAMILIES)
def test_weights_are_a_function_of_the_seed(family):
    rng_state = torch.random.get_rng_state()
    (first, parameters), (again, _), (other, _) = _weights(family, 0), _weights(family, 0), _weights(family, 1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert all(not torch.equal(first[key], other[key]) for key in parameters)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone


def test_unknown_family_and_option_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown family"):
        tiny_components("sd4")
    with pytest.raises(ValueError, match="unknown family"):
        write_tiny_pipeline("sd4", tmp_path)
    with pytest.raises(TypeError):
        tiny_components("sdxl", guidance_embeds=False)
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_components("sd15", prediction_type="sample")
