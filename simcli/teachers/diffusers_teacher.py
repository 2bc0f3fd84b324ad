"""Text-to-image teachers from diffusers pipelines: PixArt-alpha (the SIM paper's SIM-DiT-600M set-up).

Names: `pixart-alpha-512` (PixArt-alpha/PixArt-XL-2-512x512 from the Hugging Face Hub, through its cache:
HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE) and `diffusers:PATH`, a local pipeline folder written by
`save_pretrained`. The teacher's denoiser is the pipeline's transformer alone (float32), wrapped as an EDM
denoiser (simcli.nets.diffusers_denoiser); the text encoder, tokenizer and VAE stay on disk until `DiffusersPipelineSource`
is asked for them.

Hub files come through simcli.store.hub: first looked up in the cache only; a download is tried only when
not offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, SIMCLI_OFFLINE) and the Hub's host answers a TCP connect within
HF_HUB_ETAG_TIMEOUT seconds (default 10), so a machine without network fails fast with one line naming the repo,
the cache and the command that pre-downloads it.

This module imports neither torch nor diffusers at import time: the registry reads its name table.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simcli.data.prompts import token_prefix
from simcli.errors import UsageError
from simcli.store.hub import hf_library_version, hub_snapshot

if TYPE_CHECKING:
    import torch

    from simcli.nets.diffusers_denoiser import DiffusersDenoiser
    from simcli.nets.text_condition import TextCondition


@dataclass(frozen=True)
class HubPipeline:
    """An official pipeline on the Hugging Face Hub."""

    repo_id: str
    display_name: str
    revision: str | None = None
    max_tokens: int = 120


DIFFUSERS_TEACHERS: dict[str, HubPipeline] = {
    "pixart-alpha-512": HubPipeline("PixArt-alpha/PixArt-XL-2-512x512", "PixArt-alpha 512px (PixArt-XL-2-512x512)"),
}
DIFFUSERS_PREFIX = "diffusers:"
DEFAULT_MAX_TOKENS = 120  # PixArt-alpha's max_sequence_length (T5, section 3.1 of its paper)
LOCAL_HINT = "pass a folder written by PixArtAlphaPipeline.save_pretrained (model_index.json, transformer/, ...)"

# What each use needs from a pipeline folder (Hub allow_patterns; hub.IGNORED_FILES are never fetched).
TRANSFORMER_FILES = ("model_index.json", "scheduler/*", "transformer/*.json", "transformer/*.safetensors", "vae/*.json")
ENCODER_FILES = ("model_index.json", "tokenizer/*", "text_encoder/*.json", "text_encoder/*.safetensors")
DECODER_FILES = ("model_index.json", "vae/*.json", "vae/*.safetensors")
PIPELINE_FILES = tuple(dict.fromkeys(TRANSFORMER_FILES + ENCODER_FILES + DECODER_FILES))


# ---------------------------------------------------------------------------------------------- names


def is_diffusers_name(name: str) -> bool:
    return name in DIFFUSERS_TEACHERS or name.startswith(DIFFUSERS_PREFIX)


def absolute_diffusers_name(name: str) -> str:
    """`diffusers:PATH` with PATH made absolute (official names and an empty PATH unchanged)."""
    path = name.removeprefix(DIFFUSERS_PREFIX)
    if name in DIFFUSERS_TEACHERS or not path:
        return name
    return DIFFUSERS_PREFIX + str(Path(path).expanduser().resolve())


def _local_folder(name: str) -> Path:
    path = name.removeprefix(DIFFUSERS_PREFIX)
    if not path:
        raise UsageError(f"'{name}' names no folder", hint=f"use diffusers:PATH; {LOCAL_HINT}")
    return Path(path).expanduser()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}",
                         hint=LOCAL_HINT) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a JSON object", hint=LOCAL_HINT)
    return data


def check_pipeline_folder(folder: Path) -> None:
    """Refuse a folder that is not a PixArt pipeline saved by diffusers (reads two small JSON files, loads nothing)."""
    if not folder.is_dir():
        raise UsageError(f"diffusers pipeline folder not found: {folder}", hint=LOCAL_HINT)
    if not (folder / "model_index.json").is_file():
        raise UsageError(f"{folder} is not a diffusers pipeline folder: it has no model_index.json", hint=LOCAL_HINT)
    _read_json(folder / "model_index.json")
    if not (folder / "transformer").is_dir():
        raise UsageError(f"{folder} has no transformer/ folder (simcli's diffusers teachers are PixArt pipelines)",
                         hint=LOCAL_HINT)
    config_file = folder / "transformer" / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{folder / 'transformer'} has no config.json", hint=LOCAL_HINT)
    class_name = _read_json(config_file).get("_class_name")
    if class_name not in (None, "PixArtTransformer2DModel"):
        raise UsageError(f"{config_file} is a {class_name}, not a PixArtTransformer2DModel",
                         hint="simcli's diffusers teachers are PixArt-alpha pipelines")


def require_t2i_packages() -> None:
    """One-line UsageError naming the t2i extra when one of its packages cannot be found (simcli.nets.t2i_extra);
    then diffusers' and transformers' own output quietened."""
    from simcli.nets import t2i_extra

    t2i_extra.require_t2i_packages()
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep diffusers' and transformers' own progress bars and advice off simcli's output (simcli reports what it
    loads); their errors still come through."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def check_diffusers_teacher(name: str) -> None:
    """Refuse missing packages and unusable local folders; no loading, no network."""
    require_t2i_packages()
    if name not in DIFFUSERS_TEACHERS:
        check_pipeline_folder(_local_folder(name))


# ---------------------------------------------------------------------------------------------- the source


def _folder_fingerprint(folders: list[Path], head_bytes: int = 1 << 20) -> str:
    """sha256 over file names, sizes and contents (whole small files; first and last MiB of large ones)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = path.stat().st_size
            digest.update(f"{path.relative_to(folder.parent).as_posix()}\0{size}\0".encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(head_bytes))
                if size > 2 * head_bytes:
                    fh.seek(size - head_bytes)
                    digest.update(fh.read(head_bytes))
    return digest.hexdigest()


def _transformers_dtype_keyword() -> str:
    """`dtype` (transformers 4.56 and later, or an unknown version) or the older `torch_dtype`."""
    return "dtype" if (hf_library_version("transformers") or (4, 56)) >= (4, 56) else "torch_dtype"


def _missing_tokenizer_packages(tokenizer_folder: Path) -> list[str]:
    """sentencepiece / protobuf when a tokenizer comes as spiece.model alone (no tokenizer.json) and they are missing."""
    import importlib.util

    if (tokenizer_folder / "tokenizer.json").is_file() or not (tokenizer_folder / "spiece.model").is_file():
        return []
    missing = []
    for package, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package (google) is missing
            found = False
        if not found:
            missing.append(package)
    return missing


def _pipeline_dtype_keyword(dtype: Any) -> dict[str, Any]:
    """{'dtype': dtype} for the diffusers pipelines that take it (and deprecate torch_dtype), else {'torch_dtype': ...}."""
    try:
        from diffusers.utils import _resolve_dtype  # noqa: F401 - present where pipelines accept `dtype`
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _fail_loading(what: str, folder: Path, exc: Exception) -> UsageError:
    return UsageError(f"cannot load the {what} of {folder}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                      hint=LOCAL_HINT)


@dataclass(frozen=True)
class DiffusersPipelineSource:
    """Where a diffusers pipeline is (Hub repo id + revision, or an absolute local folder); loads its parts on demand.

    Each call loads afresh (nothing is kept here): keep what `encoder()`, `decoder()` or `pipeline()` return.
    """

    location: str
    revision: str | None = None
    local: bool = False
    max_tokens: int = DEFAULT_MAX_TOKENS

    def folder(self, patterns: tuple[str, ...] = PIPELINE_FILES) -> Path:
        """The local folder holding the files `patterns` name (the Hub snapshot, fetched into the cache if needed)."""
        if self.local:
            return Path(self.location)
        require_t2i_packages()
        return hub_snapshot(self.location, self.revision, patterns)

    def _load(self, what: str, patterns: tuple[str, ...], load: Callable[[Path], Any]) -> Any:
        """load(folder) on the folder holding `patterns`; a failure is one line naming the part and the folder."""
        folder = self.folder(patterns)
        try:
            return load(folder)
        except Exception as exc:
            raise _fail_loading(what, folder, exc) from None

    def transformer(self, dtype: torch.dtype | None = None) -> Any:
        """The PixArtTransformer2DModel (float32 unless dtype), in eval mode."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers

        diffusers = require_diffusers()
        return self._load("transformer", TRANSFORMER_FILES, lambda folder: diffusers.PixArtTransformer2DModel
                          .from_pretrained(folder, subfolder="transformer", torch_dtype=dtype or torch.float32)).eval()

    def scheduler_config(self) -> dict[str, Any]:
        """scheduler/scheduler_config.json (empty when absent: the DDPM defaults apply)."""
        path = self.folder(TRANSFORMER_FILES) / "scheduler" / "scheduler_config.json"
        return _read_json(path) if path.is_file() else {}

    def vae_scale_factor(self) -> int:
        """Pixels per latent: 2 ** (VAE levels - 1), as the pipeline computes it (8 when vae/config.json is absent)."""
        from simcli.nets.diffusers_denoiser import DEFAULT_VAE_SCALE_FACTOR

        path = self.folder(TRANSFORMER_FILES) / "vae" / "config.json"
        channels = _read_json(path).get("block_out_channels") if path.is_file() else None
        return 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else DEFAULT_VAE_SCALE_FACTOR

    def encoder(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                batch_size: int = 64) -> PromptEncoder:
        """encode(prompts) -> TextCondition: the T5 tokenizer and encoder as PixArtAlphaPipeline.encode_prompt uses them."""
        import torch

        from simcli.nets.t2i_extra import T2I_INSTALL

        require_t2i_packages()
        from transformers import AutoTokenizer, T5EncoderModel

        folder = self.folder(ENCODER_FILES)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
            model = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder",
                                                   **{_transformers_dtype_keyword(): dtype or torch.float32})
        except Exception as exc:
            missing = _missing_tokenizer_packages(folder / "tokenizer")
            if missing:
                raise UsageError(f"reading the T5 tokenizer {folder / 'tokenizer' / 'spiece.model'} needs the "
                                 f"{' and '.join(missing)} package(s): {T2I_INSTALL}",
                                 hint="the t2i extra installs sentencepiece and protobuf") from None
            raise _fail_loading("text encoder", folder, exc) from None
        model = model.to(device).eval().requires_grad_(False)
        return PromptEncoder(tokenizer, model, self.max_tokens, self.encoder_id(), batch_size)

    def encoder_id(self) -> str:
        """What identifies the embeddings this source's encoder gives (cache keys), without loading it: the
        pipeline's name, a fingerprint of the tokenizer and text-encoder files, and the token limit."""
        folder = self.folder(ENCODER_FILES)
        name = self.location if not self.local else Path(self.location).name
        fingerprint = _folder_fingerprint([folder / "tokenizer", folder / "text_encoder"])[:16]
        return f"{name}/text_encoder@{fingerprint}/max_tokens={self.max_tokens}"

    def decoder(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                batch_size: int = 8) -> LatentDecoder:
        """decode(latents) -> uint8 images [B, 3, H, W] through the pipeline's VAE."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers

        diffusers = require_diffusers()
        vae = self._load("VAE", DECODER_FILES, lambda folder: diffusers.AutoencoderKL
                         .from_pretrained(folder, subfolder="vae", torch_dtype=dtype or torch.float32))
        return LatentDecoder(vae.to(device).eval().requires_grad_(False), batch_size)

    def pipeline(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Any:
        """The whole diffusers PixArtAlphaPipeline on device (for the teacher's own multi-step sampling)."""
        import torch

        from simcli.nets.t2i_extra import require_diffusers

        diffusers = require_diffusers()
        pipe = self._load("pipeline", PIPELINE_FILES, lambda folder: diffusers.PixArtAlphaPipeline
                          .from_pretrained(folder, **_pipeline_dtype_keyword(dtype or torch.float32)))
        return pipe.to(device)


class PromptEncoder:
    """Prompts -> TextCondition (embeds float32 [n, max_tokens, C], mask int64 [n, max_tokens]) on the encoder's device.

    As PixArtAlphaPipeline.encode_prompt with clean_caption off: lower-cased and stripped, padded to
    max_tokens, truncated beyond it, attention mask passed to the encoder.
    """

    def __init__(self, tokenizer: Any, model: Any, max_tokens: int, encoder_id: str, batch_size: int = 64):
        self.tokenizer = tokenizer
        self.model = model
        self.max_tokens = int(max_tokens)
        self.encoder_id = encoder_id
        self.batch_size = max(1, int(batch_size))

    def readable(self, prompt: str) -> str:
        """The part of a prompt the encoder reads (simcli.data.prompts.token_prefix): a 10 MB prompt is not
        tokenized whole to keep its first max_tokens tokens."""
        return token_prefix(str(prompt), self.max_tokens, lambda text: len(self.tokenizer.tokenize(text.lower())))

    def __call__(self, prompts: list[str]) -> TextCondition:
        import torch

        from simcli.nets.text_condition import TextCondition

        device = next(self.model.parameters()).device
        parts = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                texts = [self.readable(p).lower().strip() for p in prompts[start:start + self.batch_size]]
                tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                        add_special_tokens=True, return_tensors="pt")
                mask = tokens.attention_mask.to(device)
                embeds = self.model(tokens.input_ids.to(device), attention_mask=mask)[0]
                parts.append(TextCondition(embeds.to(torch.float32), mask.to(torch.int64)))
        if not parts:
            width = int(self.model.config.d_model)
            return TextCondition(torch.zeros(0, self.max_tokens, width, device=device),
                                 torch.zeros(0, self.max_tokens, dtype=torch.int64, device=device))
        return TextCondition.cat(parts)


class LatentDecoder:
    """Latents [B, C, h, w] -> uint8 images [B, 3, H, W] (VAE decode of latents / scaling_factor, (x / 2 + 0.5) clamped)."""

    def __init__(self, vae: Any, batch_size: int = 8):
        self.vae = vae
        self.batch_size = max(1, int(batch_size))
        self.scaling_factor = float(vae.config.scaling_factor)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        import torch

        param = next(self.vae.parameters())
        images = []
        with torch.no_grad():
            for chunk in latents.split(self.batch_size):
                x = self.vae.decode(chunk.to(param.device, param.dtype) / self.scaling_factor, return_dict=False)[0]
                images.append((x.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8))
        if not images:
            return torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
        return torch.cat(images)


# ---------------------------------------------------------------------------------------------- loading


def pipeline_source(name: str) -> DiffusersPipelineSource:
    """The source a teacher name points at (a local folder is checked first)."""
    entry = DIFFUSERS_TEACHERS.get(name)
    if entry is not None:
        return DiffusersPipelineSource(entry.repo_id, entry.revision, local=False, max_tokens=entry.max_tokens)
    folder = _local_folder(name).resolve()
    check_pipeline_folder(folder)
    return DiffusersPipelineSource(str(folder), None, local=True)


def display_name(name: str) -> str:
    entry = DIFFUSERS_TEACHERS.get(name)
    return entry.display_name if entry is not None else Path(name.removeprefix(DIFFUSERS_PREFIX)).name


def load_diffusers_denoiser(name: str) -> tuple[DiffusersDenoiser, dict[str, Any], DiffusersPipelineSource]:
    """(the frozen DiffusersDenoiser, its architecture record, the pipeline source) of a teacher name."""
    from simcli.nets.diffusers_denoiser import DiffusersDenoiser, diffusers_architecture
    from simcli.nets.train_schedule import training_schedule

    require_t2i_packages()
    source = pipeline_source(name)
    transformer = source.transformer()
    schedule = training_schedule(source.scheduler_config())
    scale = source.vae_scale_factor()
    architecture = diffusers_architecture(transformer, schedule, guidance_scale=1.0, vae_scale_factor=scale)
    net = DiffusersDenoiser(transformer, architecture["schedule"], guidance_scale=1.0, vae_scale_factor=scale)
    return net.eval().requires_grad_(False), architecture, source
