"""CPU-sized diffusers pipelines with random weights, one per text-to-image teacher family.

Each family is built the way diffusers' own fast tests build their dummy components (`get_dummy_components` in
the test file named below): a 1-2 layer transformer or a two-level UNet, a small VAE, 1-2 layer text encoders
with hidden sizes 16-64, and the scheduler configuration the family's hub repository ships. Shapes that a wrapper
could get wrong are kept real (latent channels, VAE scaling and shift factors, learned-sigma outputs, the number
and kind of text encoders, CLIP-L/CLIP-G of different widths); sizes are not. Latents are 8 x 8 everywhere (FLUX
packs them 2 x 2 into 4 x 4 tokens of 64 channels); images are 16 x 16 (two-level VAEs), except Sana's 32 x 32
(SanaPipeline requires sizes divisible by 32, so its AutoencoderDC has three levels).

Families (key: pipeline, latents, VAE scaling/shift, config source in diffusers' tests/pipelines/):

- "sd3": StableDiffusion3Pipeline; SD3Transformer2DModel (2 layers, patch 2) on 16 x 8 x 8; CLIP-L (16 wide) and
  CLIP-G (32 wide), both with projection, and a T5 encoder (d_model 64); VAE 1.5305 / 0.0609; FlowMatchEuler shift 3.
  From stable_diffusion_3/test_pipeline_stable_diffusion_3.py.
- "flux": FluxPipeline; FluxTransformer2DModel (1 double + 1 single block, RoPE axes 4/4/8) on 16 x 8 x 8 packed to
  64 x 4 x 4; CLIP-L (pooled) and T5; VAE 0.3611 / 0.1159; guidance_embeds=True and FLUX-dev's dynamic-shift
  scheduler, or with `guidance_embeds=False` FLUX-schnell's (shift 1, no dynamic shifting).
  From flux/test_pipeline_flux.py.
- "sana": SanaPipeline; SanaTransformer2DModel (2 layers) on 32 x 8 x 8; a Gemma2 encoder (hidden 16); AutoencoderDC
  (ResBlock, ResBlock, EfficientViTBlock) 0.41407; DPMSolverMultistep with flow sigmas, flow_shift 3.
  From sana/test_sana.py.
- "sdxl": StableDiffusionXLPipeline; UNet2DConditionModel with addition_embed_type="text_time" on 4 x 8 x 8; CLIP-L
  (16 wide) and CLIP-G with projection (32 wide); VAE 0.13025; EulerDiscrete, scaled-linear betas, "leading"
  spacing. From stable_diffusion_xl/test_stable_diffusion_xl.py.
- "sd15": StableDiffusionPipeline; UNet2DConditionModel on 4 x 8 x 8; CLIP-L (32 wide); VAE 0.18215; no safety
  checker; PNDM (SD1.5's scheduler), or with `prediction_type="v_prediction"` DDIM with v-prediction and linear
  attention projections (the SD2.1-768 shape). From stable_diffusion/test_stable_diffusion.py.
- "pixart-sigma": PixArtSigmaPipeline; PixArtTransformer2DModel (2 layers, learned sigma: out_channels 8) on
  4 x 8 x 8; T5 (d_model 32); VAE 0.13025 (the SDXL VAE, as PixArt-Sigma ships); DPMSolverMultistep with linear
  betas. From pixart_sigma/test_pixart.py.

The fast tests download their tokenizers from hf-internal-testing; here every tokenizer is made locally: the T5
Unigram tokenizer of tests/helpers/tiny_pixart.py, a byte-level CLIP BPE over all 256 bytes plus merges for a few
common words, and a byte-fallback Gemma BPE over printable ASCII. So nothing is downloaded and lower-case English
prompts tokenize to real tokens. All weights come from `torch.manual_seed(seed)` and are then perturbed with
seeded noise, so zero-initialised output layers do not make outputs trivially zero.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from tests.helpers.tiny_pixart import tiny_tokenizer as tiny_t5_tokenizer

FAMILIES: tuple[str, ...] = ("sd3", "flux", "sana", "sdxl", "sd15", "pixart-sigma")

PIPELINE_CLASSES: dict[str, str] = {
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "sana": "SanaPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd15": "StableDiffusionPipeline",
    "pixart-sigma": "PixArtSigmaPipeline",
}

TINY_LATENT_SIZE = 8  # latents are C x 8 x 8
TINY_IMAGE_SIZE = 16  # two-level VAEs: images are 16 x 16
IMAGE_SIZES: dict[str, int] = {family: TINY_IMAGE_SIZE for family in FAMILIES} | {"sana": 32}
LATENT_CHANNELS: dict[str, int] = {"sd3": 16, "flux": 16, "sana": 32, "sdxl": 4, "sd15": 4, "pixart-sigma": 4}

NOISE_SCALE = 0.02  # std of the seeded noise added to every floating parameter
CLIP_MAX_TOKENS = 77  # CLIP's position embeddings, as in the real encoders

WORDS = (
    "a", "an", "the", "of", "on", "in", "and", "with", "photo", "painting", "portrait", "cat", "dog", "bird", "horse",
    "man", "woman", "astronaut", "riding", "car", "house", "tree", "flower", "apple", "city", "mountain", "sunset",
    "landscape", "water", "red", "blue", "green", "white", "black", "small", "big", "beautiful",
)


# ----------------------------------------------------------------------------------------------- tokenizers


def _word_merges(pieces: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Left-to-right BPE merges that join `pieces` into one token; returns (new tokens, merges)."""
    tokens, merges, current = [], [], pieces[0]
    for piece in pieces[1:]:
        merges.append((current, piece))
        current += piece
        tokens.append(current)
    return tokens, merges


def _add_tokens(vocab: dict[str, int], tokens) -> None:
    """Append the tokens not yet in `vocab`, numbering them in order."""
    for token in tokens:
        vocab.setdefault(token, len(vocab))


def tiny_clip_tokenizer():
    """A byte-level CLIPTokenizer: every byte (bare and word-final) plus merges for WORDS; built locally."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    _add_tokens(vocab, byte_chars)
    _add_tokens(vocab, [c + "</w>" for c in byte_chars])
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        if len(word) > 1:
            tokens, word_merges = _word_merges(list(word[:-1]) + [word[-1] + "</w>"])
            _add_tokens(vocab, tokens)
            merges += [m for m in word_merges if m not in merges]
    _add_tokens(vocab, ["<|startoftext|>", "<|endoftext|>"])  # last ids, as in CLIP (eos is the largest id)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)


def tiny_gemma_tokenizer():
    """A GemmaTokenizer (BPE with byte fallback, "▁" for spaces) over printable ASCII plus merges for WORDS."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    _add_tokens(vocab, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])  # Gemma's special-token ids 0..4
    _add_tokens(vocab, [f"<0x{b:02X}>" for b in range(256)])
    _add_tokens(vocab, ["▁"] + [c for c in string.printable if not c.isspace()])
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        tokens, word_merges = _word_merges(["▁", *word])
        _add_tokens(vocab, tokens)
        merges += [m for m in word_merges if m not in merges]
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, model_max_length=8192)


# ------------------------------------------------------------------------------------------- text encoders


def _clip(tokenizer, hidden: int, projection: int | None, act: str):
    """A 2-layer CLIP text encoder (with a text projection when `projection` is set) matching `tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_MAX_TOKENS, projection_dim=projection or hidden,
        hidden_act=act, layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer, d_model: int):
    """A 2-layer T5 encoder of width `d_model` matching `tokenizer` (as tiny_pixart's)."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    ))


def _gemma2(tokenizer, hidden: int):
    """A 1-layer Gemma2 model (no LM head, as Sana uses it) of width `hidden` matching `tokenizer`."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, attn_implementation="eager",
    )
    return Gemma2Model(config)


# ---------------------------------------------------------------------------------------------------- VAEs


def _vae_kl(latent_channels: int, scaling: float, shift: float | None = None, quant_conv: bool = True):
    """A two-level AutoencoderKL (16 x 16 images <-> 8 x 8 latents) with the family's scaling and shift."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=TINY_IMAGE_SIZE, scaling_factor=scaling,
        shift_factor=shift, use_quant_conv=quant_conv, use_post_quant_conv=quant_conv,
    )


def _vae_dc(latent_channels: int = 32):
    """A three-level AutoencoderDC (32 x 32 images <-> 8 x 8 latents; Sana needs sizes divisible by 32)."""
    from diffusers import AutoencoderDC

    return AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=8,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    )


# ---------------------------------------------------------------------------------------------- denoisers


def _unet(cross_attention_dim: int, down: tuple[str, str], linear_projection: bool = False, **extra):
    """A two-level UNet2DConditionModel on 4 x 8 x 8 latents; `extra` adds the SDXL conditioning keys."""
    from diffusers import UNet2DConditionModel

    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return UNet2DConditionModel(
        sample_size=TINY_LATENT_SIZE, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=down, up_block_types=up, cross_attention_dim=cross_attention_dim, attention_head_dim=(2, 4),
        norm_num_groups=4, use_linear_projection=linear_projection, **extra,
    )


# ------------------------------------------------------------------------------------------ the families


def _sd3() -> dict:
    """Stable Diffusion 3: MMDiT over CLIP-L + CLIP-G (pooled 16 + 32 = 48) and T5 (64 wide; CLIP padded to it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    return {
        "transformer": SD3Transformer2DModel(
            sample_size=TINY_LATENT_SIZE, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
            pooled_projection_dim=48, pos_embed_max_size=16,
        ),
        "vae": _vae_kl(16, scaling=1.5305, shift=0.0609, quant_conv=False),
        "text_encoder": _clip(clip_tok, hidden=16, projection=16, act="quick_gelu"),
        "text_encoder_2": _clip(clip_tok, hidden=32, projection=32, act="gelu"),
        "text_encoder_3": _t5(t5_tok, d_model=64),
        "tokenizer": clip_tok, "tokenizer_2": tiny_clip_tokenizer(), "tokenizer_3": t5_tok,
        "scheduler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        "image_encoder": None, "feature_extractor": None,
    }


def _flux(guidance_embeds: bool = True) -> dict:
    """FLUX.1-dev (or -schnell without guidance embeddings): CLIP-L pooled (32) and T5 (32) conditioning."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    clip_tok, t5_tok = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    if guidance_embeds:  # FLUX.1-dev's scheduler_config.json
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        )
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return {
        "transformer": FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8),
        ),
        "vae": _vae_kl(16, scaling=0.3611, shift=0.1159, quant_conv=False),
        "text_encoder": _clip(clip_tok, hidden=32, projection=None, act="quick_gelu"),
        "text_encoder_2": _t5(t5_tok, d_model=32),
        "tokenizer": clip_tok, "tokenizer_2": t5_tok,
        "scheduler": scheduler,
        "image_encoder": None, "feature_extractor": None,
    }


def _sana() -> dict:
    """Sana: linear-attention DiT on DC-AE latents (32 channels) with Gemma2 (16 wide) captions."""
    from diffusers import DPMSolverMultistepScheduler, SanaTransformer2DModel

    tokenizer = tiny_gemma_tokenizer()
    return {
        "transformer": SanaTransformer2DModel(
            in_channels=32, out_channels=32, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16,
            sample_size=TINY_LATENT_SIZE, patch_size=1,
        ),
        "vae": _vae_dc(32),
        "text_encoder": _gemma2(tokenizer, hidden=16),
        "tokenizer": tokenizer,
        "scheduler": DPMSolverMultistepScheduler(  # Sana_1600M_1024px_diffusers' scheduler_config.json
            num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
            algorithm_type="dpmsolver++",
        ),
    }


def _sdxl() -> dict:
    """SDXL: UNet with text_time added conditioning over CLIP-L (16) + CLIP-G with projection (32)."""
    from diffusers import EulerDiscreteScheduler

    clip_tok = tiny_clip_tokenizer()
    time_embed_dim, pooled_dim = 8, 32
    return {
        "unet": _unet(
            cross_attention_dim=16 + 32, down=("DownBlock2D", "CrossAttnDownBlock2D"), linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + pooled_dim, transformer_layers_per_block=(1, 2),
        ),
        "vae": _vae_kl(4, scaling=0.13025),
        "text_encoder": _clip(clip_tok, hidden=16, projection=None, act="quick_gelu"),
        "text_encoder_2": _clip(clip_tok, hidden=32, projection=pooled_dim, act="gelu"),
        "tokenizer": clip_tok, "tokenizer_2": tiny_clip_tokenizer(),
        "scheduler": EulerDiscreteScheduler(  # stable-diffusion-xl-base-1.0's scheduler_config.json
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        ),
        "image_encoder": None, "feature_extractor": None,
    }


def _sd15(prediction_type: str = "epsilon") -> dict:
    """SD1.5 (epsilon, PNDM) or the SD2.1-768 shape (v_prediction, DDIM, linear projections) over CLIP-L (32)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    betas = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if prediction_type == "epsilon":
        scheduler = PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    elif prediction_type == "v_prediction":
        scheduler = DDIMScheduler(**betas, prediction_type="v_prediction", clip_sample=False, steps_offset=1,
                                  set_alpha_to_one=False)
    else:
        raise ValueError(f"sd15: prediction_type must be 'epsilon' or 'v_prediction', not {prediction_type!r}")
    clip_tok = tiny_clip_tokenizer()
    return {
        "unet": _unet(cross_attention_dim=32, down=("CrossAttnDownBlock2D", "DownBlock2D"),
                      linear_projection=prediction_type == "v_prediction"),
        "vae": _vae_kl(4, scaling=0.18215),
        "text_encoder": _clip(clip_tok, hidden=32, projection=None, act="quick_gelu"),
        "tokenizer": clip_tok,
        "scheduler": scheduler,
        "safety_checker": None, "feature_extractor": None, "image_encoder": None,
        "requires_safety_checker": False,
    }


def _pixart_sigma() -> dict:
    """PixArt-Sigma: adaLN-single DiT with learned sigma (8 output channels) over T5 (32) captions."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    tokenizer = tiny_t5_tokenizer()
    return {
        "transformer": PixArtTransformer2DModel(
            sample_size=TINY_LATENT_SIZE, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, out_channels=8, cross_attention_dim=24, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
        ),
        "vae": _vae_kl(4, scaling=0.13025),
        "text_encoder": _t5(tokenizer, d_model=32),
        "tokenizer": tokenizer,
        "scheduler": DPMSolverMultistepScheduler(  # PixArt-Sigma-XL-2-1024-MS's scheduler_config.json
            num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
            prediction_type="epsilon", solver_order=2, algorithm_type="dpmsolver++",
        ),
    }


_BUILDERS = {"sd3": _sd3, "flux": _flux, "sana": _sana, "sdxl": _sdxl, "sd15": _sd15, "pixart-sigma": _pixart_sigma}


# ------------------------------------------------------------------------------------------------- public


def _perturb(components: dict, seed: int) -> None:
    """Add seeded N(0, NOISE_SCALE^2) noise to every floating parameter of every module, in a fixed order."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in sorted(components):
            module = components[name]
            if isinstance(module, torch.nn.Module):
                for param in module.parameters():
                    if param.is_floating_point():
                        param.add_(NOISE_SCALE * torch.randn(param.shape, generator=generator))
                module.eval()


def tiny_components(family: str, seed: int = 0, **options) -> dict:
    """The keyword components of the family's pipeline, deterministic for a seed; `options` go to the family.

    Options: flux `guidance_embeds` (True: FLUX-dev, False: FLUX-schnell); sd15 `prediction_type`
    ("epsilon": SD1.5, "v_prediction": SD2.1-768). The global torch RNG state is left untouched.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _BUILDERS[family](**options)
    _perturb(components, seed)
    return components


def write_tiny_pipeline(family: str, path: Path, seed: int = 0, **options) -> Path:
    """Build the family's tiny pipeline and save_pretrained it into `path` (created); returns `path`."""
    import diffusers

    components = tiny_components(family, seed, **options)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, PIPELINE_CLASSES[family])(**components).save_pretrained(path)
    return path
