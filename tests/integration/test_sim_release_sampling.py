"""`simcli sample --generator FILE.pt --prompt ...` on a file in the SIM release's layout, end to end on a CPU-sized
PixArt pipeline: the images are the authors' one-step formula (x = 2.5 z, timestep 440, c_in = 1/sqrt(2.5^2 + 1),
D = x - 2.5 eps) computed here by hand from diffusers' own modules, prompts tokenized as given.

The release's text encoder and VAE come from the teacher it records (pixart-alpha-512); here
simcli.sampling.sim_release.LOCAL_RELEASE is monkeypatched to a release whose teacher is the tiny pipeline folder
(`diffusers:PATH`) and whose network is its transformer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from simcli.cli.app import app  # noqa: E402
from simcli.sampling import sim_release  # noqa: E402
from tests.helpers.sim_release_file import original_pixart_state_dict, tiny_release, write_sim_checkpoint  # noqa: E402
from tests.helpers.tiny_pixart import write_tiny_pixart  # noqa: E402

PROMPTS = ["A Red Cat on the Dog", "a photo of a dog"]
SEED = 5


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return write_tiny_pixart(tmp_path_factory.mktemp("pixart") / "pipe")


def authors_images(pipeline: Path, prompts: list[str], seeds: list[int]) -> np.ndarray:
    """uint8 [N, H, W, 3] by the release's inference formula, from the pipeline's own modules."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(pipeline, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(pipeline, subfolder="text_encoder").eval()
    transformer = PixArtTransformer2DModel.from_pretrained(pipeline, subfolder="transformer").eval()
    vae = AutoencoderKL.from_pretrained(pipeline, subfolder="vae").eval()
    with torch.no_grad():
        tokens = tokenizer(prompts, max_length=120, padding="max_length", truncation=True, add_special_tokens=True,
                           return_tensors="pt")
        states = encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        z = torch.stack([torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(s)) for s in seeds])
        x = 2.5 * z
        eps = transformer(x / (2.5**2 + 1) ** 0.5, encoder_hidden_states=states,
                          encoder_attention_mask=tokens.attention_mask, timestep=torch.tensor([440] * len(seeds)),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample[:, :4]
        latents = x - 2.5 * eps
        images = vae.decode(latents / vae.config.scaling_factor).sample
    pixels = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def test_a_release_file_samples_as_the_authors_inference_does(tmp_path, pipeline, monkeypatch):
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_pretrained(pipeline, subfolder="transformer")
    monkeypatch.setattr(sim_release, "LOCAL_RELEASE", tiny_release(pipeline, transformer))
    file = write_sim_checkpoint(tmp_path / "checkpoint-2024-07-02.pt", original_pixart_state_dict(transformer))
    out = tmp_path / "samples.npz"
    args = ["sample", "--generator", str(file), "--n", "2", "--seed", str(SEED), "--out", str(out), "--device", "cpu",
            "--json"]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        images, prompts, seeds = saved["images"], list(saved["prompts"]), list(saved["seeds"])
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert prompts == PROMPTS and seeds == [SEED, SEED + 1]
    expected = authors_images(pipeline, PROMPTS, [SEED, SEED + 1])
    gap = np.abs(images.astype(int) - expected.astype(int)).max()
    print("max abs difference", gap)
    assert gap <= 1, gap  # float32 on the CPU: the same numbers up to the order of a few operations
    lowered = authors_images(pipeline, [p.lower() for p in PROMPTS], [SEED, SEED + 1])
    assert np.abs(images[0].astype(int) - lowered[0].astype(int)).max() > 1  # the prompt's case was kept
    assert images.std() > 1  # not a constant image
