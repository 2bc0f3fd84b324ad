"""A CPU-sized PixArt-alpha pipeline with random weights, saved as a diffusers pipeline folder.

Built from configs as diffusers' own fast tests build theirs (a 2-layer PixArtTransformer2DModel on 4x8x8
latents, a two-level AutoencoderKL, a 2-layer T5 encoder with d_model 32), with a T5 tokenizer made locally from
a small character-level vocabulary, so nothing is downloaded. All weights are drawn from a seeded generator and
perturbed, so no output is trivially zero. Loads with `PixArtAlphaPipeline.from_pretrained(path)` and as
`--teacher diffusers:PATH`.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

TINY_SAMPLE_SIZE = 8  # latents 4 x 8 x 8
TINY_CAPTION_CHANNELS = 32  # T5 d_model
TINY_VAE_SCALE_FACTOR = 2  # two VAE levels: 16 x 16 images
TINY_MAX_TOKENS = 120  # the pipeline's default max_sequence_length


def tiny_tokenizer():
    """A T5Tokenizer (Unigram) over lower-case letters, digits and a few words; built locally, no download."""
    from transformers import T5Tokenizer

    words = ["▁a", "▁the", "▁cat", "▁dog", "▁of", "▁photo", "▁red", "▁on", "▁in", "▁and"]
    chars = list(string.ascii_lowercase + string.digits + ".,'-!?")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(w, -3.0) for w in words] + [("▁" + c, -5.0) for c in chars] + [(c, -6.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def tiny_components(seed: int = 0) -> dict:
    """The five pipeline components, deterministic for a seed."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=TINY_SAMPLE_SIZE, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=TINY_CAPTION_CHANNELS, in_channels=4, cross_attention_dim=24, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=TINY_CAPTION_CHANNELS, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    ))
    scheduler = DPMSolverMultistepScheduler(  # PixArt-alpha's scheduler_config.json
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        prediction_type="epsilon", solver_order=2, algorithm_type="dpmsolver++",
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # random, non-zero weights everywhere (zero-initialised layers included)
        for module, scale in ((transformer, 0.3), (vae, 0.05), (text_encoder, 0.3)):
            for param in module.parameters():
                param.add_(scale * torch.randn(param.shape, generator=generator) / max(1, param.shape[-1]) ** 0.5)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": tokenizer, "scheduler": scheduler}


def write_tiny_pixart(path: str | Path, seed: int = 0) -> Path:
    """Save the tiny PixArtAlphaPipeline into `path` (created) with save_pretrained; returns the folder."""
    from diffusers import PixArtAlphaPipeline

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    PixArtAlphaPipeline(**tiny_components(seed)).save_pretrained(path)
    return path
