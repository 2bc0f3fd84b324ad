"""Where a text-to-image teacher's diffusers pipeline is, and its parts loaded on demand: the denoising network, the
prompt encoder (simcli.teachers.prompt_encoders), the VAE decoder (simcli.teachers.latent_decoder) and the whole
pipeline as its own class.

A source is a local folder (absolute) or a Hub repository, fetched into the Hugging Face cache through
simcli.store.hub (only the files a use needs; fp16/bf16 variants, non-EMA and non-safetensors weights never). Offline
or unreachable, a missing repository is one line naming it and the command that pre-downloads it; gated ones add
what their licence and token need.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.errors import UsageError
from simcli.store.hub import IGNORED_FILES, download_command, hub_snapshot
from simcli.teachers.hf_loading import (
    loading_failed,
    pipeline_dtype,
    require_t2i_packages,
    tokenizer_packages_error,
    transformers_dtype,
)
from simcli.teachers.hub_teachers import gated_note
from simcli.teachers.pipeline_families import PipelineFamily, pipeline_family
from simcli.teachers.pipeline_folder import LOCAL_HINT, folder_fingerprint, read_json

if TYPE_CHECKING:  # torch is imported when a part is loaded: naming teachers needs none
    import torch

    from simcli.nets.text_condition import TextCondition
    from simcli.teachers.latent_decoder import LatentDecoder
    from simcli.teachers.prompt_encoders import PromptEncoder

# Besides hub.IGNORED_FILES: sharded fp16/bf16 variants (model.fp16-00001-of-00002.safetensors) and SD1.5's non-EMA UNet.
IGNORED = (*IGNORED_FILES, "*.fp16-*", "*.bf16.*", "*.bf16-*", "*non_ema*")
DEFAULT_VAE_SCALE_FACTORS = {"AutoencoderKL": 8, "AutoencoderDC": 32}  # the pipelines' own fallbacks


def _weights(component: str) -> tuple[str, str]:
    return f"{component}/*.json", f"{component}/*.safetensors"


@dataclass(frozen=True)
class DiffusersPipelineSource:
    """A diffusers pipeline: `location` is a Hub repo id (and `revision`) or, with `local`, an absolute folder.

    pipeline_class    the model_index.json `_class_name` (simcli.teachers.pipeline_families)
    max_tokens        the prompt token limit (default: the family's)
    network_location  a Hub repo holding the network when `location` holds the other components (PixArt-Sigma 512)
    gated             the Hub repo needs a token and its licence accepted (said when it cannot be fetched)

    Each call loads afresh (nothing is kept here): keep what `encoder()`, `decoder()` or `pipeline()` return.
    """

    location: str
    revision: str | None = None
    local: bool = False
    max_tokens: int | None = None
    pipeline_class: str = "PixArtAlphaPipeline"
    network_location: str | None = None
    gated: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is None:
            object.__setattr__(self, "max_tokens", self.family.max_tokens)

    @property
    def family(self) -> PipelineFamily:
        return pipeline_family(self.pipeline_class, "the pipeline source")

    # ------------------------------------------------------------------ files

    def network_files(self) -> tuple[str, ...]:
        return _weights(self.family.network)

    def setup_files(self) -> tuple[str, ...]:
        """What loading the network as a teacher needs besides its weights: the scheduler and VAE configs."""
        return "model_index.json", "scheduler/*", "vae/*.json"

    def encoder_files(self) -> tuple[str, ...]:
        parts = self.family.text
        return ("model_index.json", *(f"{p.tokenizer}/*" for p in parts), *(f for p in parts for f in _weights(p.encoder)))

    def decoder_files(self) -> tuple[str, ...]:
        return ("model_index.json", *_weights("vae"))

    def pipeline_files(self) -> tuple[str, ...]:
        network = () if self.network_location else self.network_files()
        return tuple(dict.fromkeys(self.setup_files() + network + self.encoder_files() + self.decoder_files()))

    def folder(self, patterns: tuple[str, ...] | None = None) -> Path:
        """The local folder holding the pipeline's files `patterns` names (default: all it uses; a Hub snapshot,
        fetched into the cache if needed)."""
        if self.local:
            return Path(self.location)
        return self._snapshot(self.location, self.revision, patterns or self.pipeline_files())

    def network_folder(self) -> Path:
        """The folder holding the network's config and weights."""
        if self.network_location is None:
            return self.folder(self.setup_files() + self.network_files())
        return self._snapshot(self.network_location, None, self.network_files())

    def _snapshot(self, repo_id: str, revision: str | None, patterns: tuple[str, ...]) -> Path:
        require_t2i_packages()
        try:
            return hub_snapshot(repo_id, revision, patterns, IGNORED)
        except UsageError as exc:
            notes = [gated_note(repo_id)] if self.gated else []
            if self.network_location is not None:
                other = self.network_location if repo_id == self.location else self.location
                notes.append(f"this teacher also needs {other} (`{download_command(other)}`)")
            raise UsageError("; ".join([exc.message, *notes]), hint=exc.hint) from None

    def _load(self, what: str, folder: Path, load: Callable[[], Any]) -> Any:
        """load(); a failure is one line naming the part and the folder."""
        try:
            return load()
        except UsageError:
            raise
        except Exception as exc:
            raise loading_failed(what, folder, exc, LOCAL_HINT) from None

    def model_index(self) -> dict[str, Any]:
        return read_json(self.folder(("model_index.json",)) / "model_index.json")

    # ------------------------------------------------------------------ the network

    def network(self, dtype: torch.dtype | None = None) -> Any:
        """The denoising network (transformer or UNet; float32 unless dtype), in eval mode."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers

        family, folder = self.family, self.network_folder()
        network_class = getattr(require_diffusers(), family.network_class)
        return self._load(family.network, folder, lambda: network_class.from_pretrained(
            folder, subfolder=family.network, torch_dtype=dtype or torch.float32)).eval()

    def scheduler_config(self) -> dict[str, Any]:
        """scheduler/scheduler_config.json (empty when absent: the DDPM defaults apply)."""
        path = self.folder(self.setup_files()) / "scheduler" / "scheduler_config.json"
        return read_json(path) if path.is_file() else {}

    def vae_scale_factor(self) -> int:
        """Pixels per latent, as the pipeline computes it from vae/config.json: 2 ** (levels - 1), the levels being
        block_out_channels (AutoencoderKL) or encoder_block_out_channels (AutoencoderDC)."""
        vae_class = self.family.vae_class
        path = self.folder(self.setup_files()) / "vae" / "config.json"
        key = "encoder_block_out_channels" if vae_class == "AutoencoderDC" else "block_out_channels"
        channels = read_json(path).get(key) if path.is_file() else None
        return 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else DEFAULT_VAE_SCALE_FACTORS[vae_class]

    # ------------------------------------------------------------------ text

    def encoder(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                batch_size: int = 64) -> PromptEncoder:
        """encode(prompts) -> TextCondition: the family's tokenizers and text encoders as its encode_prompt uses them."""
        import torch

        from simcli.teachers.prompt_encoders import PromptEncoder, sana_instruction

        require_t2i_packages()
        import transformers

        family, folder = self.family, self.folder(self.encoder_files())
        tokenizers, models = {}, {}
        for part in family.text:
            tokenizer_folder = folder / part.tokenizer
            try:
                tokenizers[part.tokenizer] = transformers.AutoTokenizer.from_pretrained(folder, subfolder=part.tokenizer)
            except Exception as exc:
                raise tokenizer_packages_error(tokenizer_folder) or loading_failed(
                    part.tokenizer, folder, exc, LOCAL_HINT) from None
            model_class = getattr(transformers, part.model_class)
            model = self._load(part.encoder, folder, lambda cls=model_class, name=part.encoder: cls.from_pretrained(
                folder, subfolder=name, **transformers_dtype(dtype or torch.float32)))
            models[part.encoder] = model.to(device).eval().requires_grad_(False)
        if family.key == "sana":
            tokenizers[family.text[0].tokenizer].padding_side = "right"  # as SanaPipeline sets it
        return PromptEncoder(family, tokenizers, models, self.max_tokens, self.encoder_id(), batch_size,
                             zero_null=self._zero_null(), instruction=sana_instruction() if family.key == "sana" else "")

    def _zero_null(self) -> bool:
        """SDXL: the pipeline's force_zeros_for_empty_prompt (its default: True)."""
        return self.family.key == "sdxl" and bool(self.model_index().get("force_zeros_for_empty_prompt", True))

    def encoder_id(self) -> str:
        """What identifies the embeddings this source's encoder gives (cache keys), without loading it: the
        pipeline's name, a fingerprint of every tokenizer and text-encoder folder, the token limit, and SANA's
        instruction or SDXL's zero null condition where they apply."""
        family, folder = self.family, self.folder(self.encoder_files())
        name = self.location if not self.local else Path(self.location).name
        folders = [folder / sub for part in family.text for sub in (part.tokenizer, part.encoder)]
        encoders = "+".join(part.encoder for part in family.text)
        key = f"{name}/{encoders}@{folder_fingerprint(folders)[:16]}/max_tokens={self.max_tokens}"
        if family.key == "sana":
            from simcli.teachers.prompt_encoders import sana_instruction

            key += f"/instruction@{hashlib.sha256(sana_instruction().encode()).hexdigest()[:12]}"
        return key + ("/null=zeros" if self._zero_null() else "")

    def null_condition(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> TextCondition:
        """The condition guidance contrasts with (one row): the pipeline's negative embedding of the empty prompt.
        Loads the encoder; with one at hand, ask it (`PromptEncoder.null_condition`)."""
        return self.encoder(device, dtype, batch_size=1).null_condition()

    # ------------------------------------------------------------------ images

    def decoder(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                batch_size: int = 8) -> LatentDecoder:
        """decode(latents [B, C, h, w]) -> uint8 images [B, 3, H, W] through the pipeline's VAE."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers
        from simcli.teachers.latent_decoder import LatentDecoder

        folder = self.folder(self.decoder_files())
        vae_class = getattr(require_diffusers(), self.family.vae_class)
        vae = self._load("VAE", folder, lambda: vae_class.from_pretrained(folder, subfolder="vae",
                                                                          torch_dtype=dtype or torch.float32))
        return LatentDecoder(vae.to(device).eval().requires_grad_(False), batch_size)

    def pipeline(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Any:
        """The whole pipeline as the family's own class (float32 unless dtype) on device, with the network loaded
        as the teacher's is; components simcli does not use (safety checker, image encoder) are left out."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers

        family = self.family
        folder = self.folder()
        unused = {name: None for name, value in self.model_index().items()
                  if not name.startswith("_") and isinstance(value, list) and name not in family.components}
        network = self.network(dtype)
        pipeline_class = getattr(require_diffusers(), family.pipeline_class)
        pipe = self._load("pipeline", folder, lambda: pipeline_class.from_pretrained(
            folder, **{family.network: network}, **unused, **dict(family.pipeline_options),
            **pipeline_dtype(dtype or torch.float32)))
        return pipe.to(device)
