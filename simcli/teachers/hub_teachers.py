"""The official text-to-image teachers: names for pipelines on the Hugging Face Hub.

Each name is a repository (`repo_id`) and the pipeline class it holds. PixArt-Sigma 512 is two repositories:
PixArt-alpha/PixArt-Sigma-XL-2-512-MS holds the transformer only; the scheduler, T5 encoder, tokenizer and SDXL VAE
come from PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers (`pipeline_repo`), as PixArt-Sigma's model card loads
them. Gated repositories (SD3.5, FLUX.1-dev) need a Hugging Face token and their licence accepted on the model page.

Imports nothing heavy: the registry reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from simcli.store.hub import login_command

HUB_URL = "https://huggingface.co"


@dataclass(frozen=True)
class HubPipeline:
    """An official pipeline on the Hugging Face Hub.

    repo_id         the repository of the teacher's network (and of the whole pipeline unless pipeline_repo)
    pipeline_class  the diffusers pipeline class (simcli.teachers.pipeline_families)
    pipeline_repo   the repository of the other components when repo_id holds the network alone
    max_tokens      the prompt token limit when it differs from the family's default
    gated           the repository needs a token and its licence accepted
    """

    repo_id: str
    pipeline_class: str
    display_name: str
    pipeline_repo: str | None = None
    revision: str | None = None
    max_tokens: int | None = None
    gated: bool = False


HUB_TEACHERS: dict[str, HubPipeline] = {
    "pixart-alpha-512": HubPipeline("PixArt-alpha/PixArt-XL-2-512x512", "PixArtAlphaPipeline",
                                    "PixArt-alpha 512px (PixArt-XL-2-512x512)"),
    "pixart-sigma-512": HubPipeline("PixArt-alpha/PixArt-Sigma-XL-2-512-MS", "PixArtSigmaPipeline",
                                    "PixArt-Sigma 512px (PixArt-Sigma-XL-2-512-MS)",
                                    pipeline_repo="PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"),
    "sd35-medium": HubPipeline("stabilityai/stable-diffusion-3.5-medium", "StableDiffusion3Pipeline",
                               "Stable Diffusion 3.5 Medium", gated=True),
    "flux1-schnell": HubPipeline("black-forest-labs/FLUX.1-schnell", "FluxPipeline", "FLUX.1 [schnell]",
                                 max_tokens=256),  # trained with 256 T5 tokens (diffusers' FLUX docs; BFL's load_t5)
    "flux1-dev": HubPipeline("black-forest-labs/FLUX.1-dev", "FluxPipeline", "FLUX.1 [dev]", gated=True),
    "sana-600m-512": HubPipeline("Efficient-Large-Model/Sana_600M_512px_diffusers", "SanaPipeline", "SANA 600M 512px"),
    "sdxl-base": HubPipeline("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline",
                             "Stable Diffusion XL base 1.0"),
    "sd15": HubPipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline",
                        "Stable Diffusion 1.5"),
}


def gated_note(repo_id: str) -> str:
    """What a gated repository needs, for an error message: the licence accepted and a token given."""
    return (f"{repo_id} is gated: accept its licence on {HUB_URL}/{repo_id} and give a Hugging Face token "
            f"(`{login_command()}`, or the HF_TOKEN environment variable)")
