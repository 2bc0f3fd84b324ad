"""The diffusers pipeline families simcli's text-to-image teachers come from, keyed by the pipeline class that a
folder's model_index.json names (`_class_name`).

Each family says which component is the denoising network (and the diffusers class it loads with), which text
encoders and tokenizers the pipeline's `encode_prompt` runs (their transformers class, token limit, the hidden
state and pooled output it keeps, whether the tokenizer's mask goes to the encoder), the VAE class (its scaling and
shift factors are read from its config), and the pipeline's own defaults: guidance scale, steps, resolution.

Facts from diffusers 0.42 (pipelines/pixart_alpha, stable_diffusion_3, flux, sana, stable_diffusion_xl,
stable_diffusion), the source of each value. Nothing here imports torch or diffusers: the name checks read this
table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from simcli.errors import UsageError

State = Literal["last", "penultimate"]
Pooled = Literal["projected", "pooler"]


@dataclass(frozen=True)
class TextPart:
    """One tokenizer and text encoder of a pipeline.

    encoder, tokenizer  component folders ("text_encoder_2", "tokenizer_2")
    model_class         the transformers class the encoder loads with
    limit               "model": the tokenizer's model_max_length (CLIP's 77); "prompt": the family's prompt limit
                        (the pipeline's max_sequence_length)
    state               the hidden state kept: "last" (the encoder's output) or "penultimate" (hidden_states[-2])
    pooled              the pooled output kept: "projected" (text_embeds), "pooler" (pooler_output) or None
    pass_mask           whether the tokenizer's attention mask goes to the encoder
    """

    encoder: str
    tokenizer: str
    model_class: str
    limit: Literal["model", "prompt"]
    state: State | None = "last"
    pooled: Pooled | None = None
    pass_mask: bool = False


@dataclass(frozen=True)
class PipelineFamily:
    """One pipeline class and what simcli needs to know about it (module docstring).

    key             the family's short name ("sd3", "flux", ...): which prompt encoding applies
    network         the network's component folder ("transformer" or "unet") and `network_class` its diffusers class;
                    `network_configs` the `_class_name`s its config.json may carry
    text            the text encoders, in the pipeline's order
    max_tokens      the prompt token limit: the pipeline's default max_sequence_length (CLIP families: 77)
    lowercase       prompts are lower-cased and stripped first (PixArt, SANA: `_text_preprocessing`)
    vae_class       "AutoencoderKL" or "AutoencoderDC"
    latent_size     the default latent side; None: the network config's sample_size
    packed          the network takes 2x2-packed latents (FLUX): in_channels = 4 x latent channels
    pipeline_options  keyword arguments the whole pipeline is loaded with
    """

    key: str
    pipeline_class: str
    network: str
    network_class: str
    network_configs: tuple[str, ...]
    text: tuple[TextPart, ...]
    max_tokens: int
    vae_class: str
    guidance_scale: float
    steps: int
    lowercase: bool = False
    latent_size: int | None = None
    packed: bool = False
    pipeline_options: tuple[tuple[str, object], ...] = ()

    @property
    def components(self) -> tuple[str, ...]:
        """The pipeline components simcli uses: network, scheduler, VAE, text encoders and tokenizers."""
        text = tuple(name for part in self.text for name in (part.tokenizer, part.encoder))
        return (self.network, "scheduler", "vae", *text)

    def takes_no_guidance(self, network_config: Mapping[str, Any]) -> bool:
        """A timestep-distilled FLUX (schnell): a FLUX transformer without a guidance embedding takes no guidance."""
        return self.key == "flux" and not network_config.get("guidance_embeds", False)

    def sequence_length(self, max_tokens: int) -> int:
        """Text tokens the network attends to: the prompt limit, after SD3's 77 CLIP tokens (its T5 tokens are
        appended to them along the sequence)."""
        return (77 + max_tokens) if self.key == "sd3" else max_tokens

    def sample_shape(self, network_config: Mapping[str, Any]) -> tuple[int, int, int]:
        """(C, h, w) of the latents at the pipeline's default resolution: the network config's sample_size (FLUX:
        its pipeline's 128, i.e. 1024 px), C its in_channels (FLUX: in_channels / 4, the unpacked latents')."""
        channels = int(network_config["in_channels"]) // (4 if self.packed else 1)
        size = self.latent_size or network_config["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
        return channels, int(height), int(width)


def _clip(encoder: str, tokenizer: str, model_class: str, state: State | None, pooled: Pooled | None) -> TextPart:
    return TextPart(encoder, tokenizer, model_class, "model", state, pooled)


_T5 = "T5EncoderModel"
_PIXART = ("PixArtTransformer2DModel", "Transformer2DModel")  # hub configs written before the PixArt class

FAMILIES: dict[str, PipelineFamily] = {f.pipeline_class: f for f in (
    PipelineFamily("pixart-alpha", "PixArtAlphaPipeline", "transformer", "PixArtTransformer2DModel", _PIXART,
                   (TextPart("text_encoder", "tokenizer", _T5, "prompt", pass_mask=True),), 120, "AutoencoderKL",
                   4.5, 20, lowercase=True),
    PipelineFamily("pixart-sigma", "PixArtSigmaPipeline", "transformer", "PixArtTransformer2DModel", _PIXART,
                   (TextPart("text_encoder", "tokenizer", _T5, "prompt", pass_mask=True),), 300, "AutoencoderKL",
                   4.5, 20, lowercase=True),
    PipelineFamily("sd3", "StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel", ("SD3Transformer2DModel",),
                   (_clip("text_encoder", "tokenizer", "CLIPTextModelWithProjection", "penultimate", "projected"),
                    _clip("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "penultimate", "projected"),
                    TextPart("text_encoder_3", "tokenizer_3", _T5, "prompt")), 256, "AutoencoderKL", 7.0, 28),
    PipelineFamily("flux", "FluxPipeline", "transformer", "FluxTransformer2DModel", ("FluxTransformer2DModel",),
                   (_clip("text_encoder", "tokenizer", "CLIPTextModel", None, "pooler"),
                    TextPart("text_encoder_2", "tokenizer_2", _T5, "prompt")), 512, "AutoencoderKL", 3.5, 28,
                   latent_size=128, packed=True),
    PipelineFamily("sana", "SanaPipeline", "transformer", "SanaTransformer2DModel", ("SanaTransformer2DModel",),
                   (TextPart("text_encoder", "tokenizer", "Gemma2Model", "prompt", pass_mask=True),), 300,
                   "AutoencoderDC", 4.5, 20, lowercase=True),
    PipelineFamily("sdxl", "StableDiffusionXLPipeline", "unet", "UNet2DConditionModel", ("UNet2DConditionModel",),
                   (_clip("text_encoder", "tokenizer", "CLIPTextModel", "penultimate", None),
                    _clip("text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection", "penultimate", "projected")),
                   77, "AutoencoderKL", 5.0, 50),
    PipelineFamily("sd15", "StableDiffusionPipeline", "unet", "UNet2DConditionModel", ("UNet2DConditionModel",),
                   (_clip("text_encoder", "tokenizer", "CLIPTextModel", "last", None),), 77, "AutoencoderKL", 7.5, 50,
                   pipeline_options=(("requires_safety_checker", False),)),
)}


def pipeline_family(class_name: object, where: str = "model_index.json") -> PipelineFamily:
    """The family of a pipeline class; a one-line UsageError naming the class and the supported ones otherwise."""
    family = FAMILIES.get(class_name) if isinstance(class_name, str) else None
    if family is None:
        shown = repr(class_name) if isinstance(class_name, str) else "no pipeline class (_class_name)"
        raise UsageError(f"{where} names {shown}; simcli's diffusers teachers are pipelines of class "
                         f"{', '.join(FAMILIES)}", hint="pass a folder written by one of them with save_pretrained")
    return family
