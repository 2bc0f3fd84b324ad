"""Text-to-image metrics for `simcli eval`: CLIP score and the LAION aesthetic score of images, per prompt set.

CLIP score, as torchmetrics defines it (`torchmetrics.multimodal.CLIPScore`): 100 * max(cos(E_image, E_text), 0)
per image-prompt pair, averaged, with `openai/clip-vit-large-patch14` by default. simcli computes it with
transformers' CLIPModel and CLIPProcessor, fed the way torchmetrics feeds them (uint8 [3, H, W] tensors to the
processor, `get_image_features` / `get_text_features`), rather than through torchmetrics itself, because:
- torchmetrics 1.9 breaks on transformers 5: `get_image_features` now returns a model output, not a tensor
  (AttributeError 'BaseModelOutputWithPooling' object has no attribute 'norm');
- its loader accepts a local folder only through a callable (a path without 'openai' in it is a ValueError);
- it returns only the mean, clamped once (max(mean, 0)), while simcli reports per-image scores, clamped each
  (the docstring's formula; the same number whenever no cosine is negative, as is typical of real CLIP pairs).
One deliberate difference: prompts longer than the text model's 77 positions are truncated by the tokenizer,
which keeps the end-of-text token that CLIP pools; torchmetrics cuts the token ids after tokenising, dropping it.

Aesthetic score: simcli.eval.aesthetic (the improved-aesthetic-predictor head on open_clip ViT-L-14/openai).

Prompts, one per image in the images' order: `--prompts FILE` (.txt one per line, or .jsonl with 'prompt';
simcli.data.prompts), else the samples npz's own `prompts` array. The report names the prompt set (its source
and the sha256 of the prompts used, joined by newlines), so scores of different prompt sets are never mixed up.
"""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simcli.data.prompts import token_prefix
from simcli.errors import UsageError
from simcli.eval.aesthetic import aesthetic_head_path, load_aesthetic_scorer
from simcli.eval.image_inputs import GeneratorImages, NpzImages, is_generator_path, open_images
from simcli.eval.stats import ImageProgressFn
from simcli.sampling.sim_release import is_sim_release
from simcli.store.hub import download_command, hf_hub_cache, hub_missing_error, hub_offline, hub_unreachable

Tensor = torch.Tensor

TEXT_METRICS = ("clip_score", "aesthetic")
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_DOWNLOAD_EXCLUDE = ("*.bin", "*.h5", "*.msgpack")  # the safetensors weights suffice
NPZ_PROMPTS_KEY = "prompts"
_PROMPTS_HINT = "pass --prompts FILE: the samples' prompts, one per line in sample order (.txt) or .jsonl with 'prompt'"


# ---------------------------------------------------------------------------------------------- CLIP score


def clip_score_from_embeddings(image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
    """100 * max(cos, 0) of each row pair: [N, D] x [N, D] -> [N]."""
    a = image_embeddings / image_embeddings.norm(p=2, dim=-1, keepdim=True)
    b = text_embeddings / text_embeddings.norm(p=2, dim=-1, keepdim=True)
    return 100 * (a * b).sum(dim=-1).clamp(min=0)


def _pooled(output: Any) -> Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor."""
    return output if torch.is_tensor(output) else output.pooler_output


class ClipScorer:
    """Per-image CLIP scores of a transformers CLIPModel + CLIPProcessor."""

    def __init__(self, model: torch.nn.Module, processor: Any, device: str | torch.device = "cpu", name: str = ""):
        self.device = torch.device(device)
        self.model = model.requires_grad_(False).eval().to(self.device)
        self.processor = processor
        self.name = name
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    def embeddings(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(image embeddings [N, D], text embeddings [N, D]), float32 on the CPU, not normalised."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"CLIP score takes uint8 images [N, 3, H, W], got {images.dtype} {list(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        pixels = self.processor.image_processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        tokenizer = self.processor.tokenizer
        texts = [token_prefix(p, self.max_tokens, lambda text: len(tokenizer.tokenize(text))) for p in prompts]
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                          return_tensors="pt")
        with torch.no_grad():
            image = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            text = _pooled(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device)))
        return image.float().cpu(), text.float().cpu()

    def scores(self, images: Tensor, prompts: list[str]) -> Tensor:
        """uint8 [N, 3, H, W] and N prompts -> float32 [N] on the CPU."""
        return clip_score_from_embeddings(*self.embeddings(images, prompts))


def load_clip_scorer(clip_model: Path | str | None = None, device: str | torch.device = "cpu") -> ClipScorer:
    """CLIPModel + CLIPProcessor from a local folder (`clip_model`), else openai/clip-vit-large-patch14 from the
    Hugging Face cache (downloaded there when online)."""
    from transformers import CLIPModel, CLIPProcessor

    if clip_model is not None:
        path = Path(clip_model).expanduser()
        if not path.is_dir():
            raise UsageError(f"CLIP model folder not found: {path}",
                             hint="--clip-model must name a folder saved with save_pretrained (config, weights, "
                                  "tokenizer, preprocessor_config.json)")
        try:
            with _quiet_transformers():
                model = CLIPModel.from_pretrained(path, local_files_only=True)
                processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UsageError(f"could not load a CLIP model from {path}: {type(exc).__name__}: {first}",
                             hint="the folder needs config.json, the weights, the tokenizer files and "
                                  "preprocessor_config.json") from None
        return ClipScorer(model, processor, device, name=str(path))
    offline_reason = hub_offline()
    unreachable = None if offline_reason else hub_unreachable()
    offline = offline_reason is not None or unreachable is not None  # then only the cache is read, without retries
    try:
        kwargs = {"cache_dir": str(hf_hub_cache()), "local_files_only": offline}
        with _quiet_transformers():
            model = CLIPModel.from_pretrained(DEFAULT_CLIP_MODEL, **kwargs)
            processor = CLIPProcessor.from_pretrained(DEFAULT_CLIP_MODEL, **kwargs)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        why = (unreachable or "offline") if offline else f"download failed: {first}"
        command = download_command(DEFAULT_CLIP_MODEL, exclude=CLIP_DOWNLOAD_EXCLUDE)
        raise hub_missing_error("CLIP model", DEFAULT_CLIP_MODEL, command, why, "pass --clip-model DIR") from None
    return ClipScorer(model, processor, device, name=DEFAULT_CLIP_MODEL)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No 'Loading weights' progress bar from transformers while a model loads (downloads keep theirs)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSet:
    """The prompts of a set of samples, in sample order, and where they came from."""

    prompts: list[str]
    source: str

    def head(self, n: int) -> PromptSet:
        return PromptSet(self.prompts[:n], self.source)

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.prompts).encode("utf-8")).hexdigest()


def _npz_prompts(path: Path) -> list[str] | None:
    """The `prompts` array of a samples npz (str or UTF-8 bytes), or None when it has none."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if NPZ_PROMPTS_KEY not in data.files:
                return None
            array = data[NPZ_PROMPTS_KEY]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UsageError(f"cannot read the '{NPZ_PROMPTS_KEY}' array of {path}: {exc}",
                         hint="store prompts as an array of str") from None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise UsageError(f"'{NPZ_PROMPTS_KEY}' in {path} is {array.dtype} {tuple(array.shape)}",
                         hint="expected a 1-d array of strings, one per image")
    return [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in array.tolist()]


def resolve_prompts(source: Path | str, prompts_file: Path | str | None) -> PromptSet | None:
    """`prompts_file` when given, else the `prompts` array of a samples npz, else None."""
    if prompts_file is not None:
        from simcli.data.prompts import read_prompts

        return PromptSet(read_prompts(prompts_file), f"file {prompts_file}")
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".npz":
        found = _npz_prompts(source)
        if found is not None:
            return PromptSet(found, f"{source} '{NPZ_PROMPTS_KEY}'")
    return None


def _aligned(prompts: PromptSet, count: int, limited: bool, description: str) -> PromptSet:
    """The first `count` prompts; without a limit (--n) the set must have exactly one prompt per image."""
    have = len(prompts.prompts)
    if have < count or (not limited and have != count):
        raise UsageError(f"{prompts.source} has {have} prompts but {description} has {count} images",
                         hint="give one prompt per image, in the images' order")
    return prompts.head(count)


# ---------------------------------------------------------------------------------------------- report


def summarize(scores: Iterable[float] | Tensor | np.ndarray) -> dict[str, float | int]:
    """{'mean', 'std', 'n'} of per-image scores, in float64 (std over the images, ddof 0)."""
    values = np.asarray(torch.as_tensor(scores).detach().cpu().to(torch.float64).reshape(-1))
    if values.size == 0:
        raise UsageError("no images were scored")
    return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


MAX_TEXT_BATCH = 64  # prompts per generator batch, as `simcli sample --prompts` takes them


def prompted_generator_images(source: str | Path, prompts_file: Path | str | None, n: int | None, seed: int,
                              batch_size: int, device: str | torch.device) -> tuple[NpzImages, PromptSet] | None:
    """A text-to-image generator (a run directory, a snapshot, or a SIM release: simcli.sampling.sim_release) sampled
    in memory on the prompts of `prompts_file`, as `simcli sample --generator G --prompts FILE --seed S` samples it:
    image i from seed S + i with prompt i mod the number of prompts, n images (default: one per prompt). None for
    other sources or without prompts."""
    if prompts_file is None or not (is_sim_release(source) or is_generator_path(Path(source))):
        return None
    from simcli.runtime import resolve_device
    from simcli.sampling.text_to_image import generator_text_images, sample_prompts

    given = resolve_prompts(source, prompts_file)
    texts = sample_prompts(given.prompts, None, n if n is not None else len(given.prompts))  # the file is read once
    images, info = generator_text_images(source, texts, seed, min(batch_size, MAX_TEXT_BATCH), resolve_device(str(device)))
    name = f"generator {info['generator']} (seeds {seed}..{seed + len(texts) - 1}, prompts from {prompts_file})"
    return NpzImages.of(images.transpose(0, 2, 3, 1), name), PromptSet(texts, given.source)


def evaluate_text_image(
    source: str | Path,
    *,
    metrics: Iterable[str],
    prompts_file: Path | str | None = None,
    clip_model: Path | str | None = None,
    aesthetic_weights: Path | str | None = None,
    aesthetic_backbone: Path | str | None = None,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    on_progress: ImageProgressFn | None = None,
) -> dict[str, Any]:
    """CLIP score and/or aesthetic score ({'mean', 'std', 'n'} each) of a folder, samples npz or generator.

    Bad input (unknown metrics, missing or misaligned prompts) fails before any model is loaded.
    """
    metrics = set(metrics)
    if not metrics or metrics - set(TEXT_METRICS):
        raise UsageError(f"choose text-image metrics among {', '.join(TEXT_METRICS)}")
    prompted = prompted_generator_images(source, prompts_file, n, seed, batch_size, device)
    source = Path(source)
    if prompted is not None:
        images, prompts = prompted
    else:
        images = open_images(source, limit=n, seed=seed, device=str(device))  # bad input fails before any download
        prompts = resolve_prompts(source, prompts_file)
    if isinstance(images, GeneratorImages) and ("clip_score" in metrics or prompts is not None):
        raise UsageError("--clip-score needs the prompt each image was made from; this generator is not "
                         "text-to-image, or no --prompts were given", hint="give --prompts FILE for a text-to-image "
                         "generator, or score a samples npz or folder: --samples PATH")
    if "clip_score" in metrics and prompts is None:
        raise UsageError("--clip-score needs the samples' prompts", hint=_PROMPTS_HINT)
    if prompts is not None:
        prompts = _aligned(prompts, len(images), n is not None, images.description)
    head = aesthetic_head_path(aesthetic_weights) if "aesthetic" in metrics else None  # small: checked first
    clip = load_clip_scorer(clip_model, device) if "clip_score" in metrics else None
    aesthetic = None if head is None else load_aesthetic_scorer(head, backbone=aesthetic_backbone, device=device)
    clip_scores, aesthetic_scores, done = [], [], 0
    for batch in images.batches(batch_size):
        batch_prompts = None if prompts is None else prompts.prompts[done : done + batch.shape[0]]
        if clip is not None:
            clip_scores.append(clip.scores(batch, batch_prompts))
        if aesthetic is not None:
            aesthetic_scores.append(aesthetic.scores(batch))
        done += batch.shape[0]
        if on_progress is not None:
            on_progress(done)
    result: dict[str, Any] = {"n": done, "source": images.description}
    if prompts is not None:
        result["prompts"] = {"source": prompts.source, "n": len(prompts.prompts), "sha256": prompts.sha256}
    if clip is not None:
        result["clip_score"] = {**summarize(torch.cat(clip_scores)), "model": clip.name}
    if aesthetic is not None:
        result["aesthetic"] = {**summarize(torch.cat(aesthetic_scores)), "backbone": aesthetic.backbone_name,
                               "head": str(aesthetic.weights_path), "head_sha256": aesthetic.weights_sha256}
    return result
