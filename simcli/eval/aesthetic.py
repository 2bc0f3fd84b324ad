"""The LAION aesthetic score: improved-aesthetic-predictor's head on L2-normalised CLIP ViT-L/14 image embeddings.

Sources:
- christophschuhmann/improved-aesthetic-predictor, `simple_inference.py`: the head is `MLP(768).layers` =
  Linear(768, 1024), Dropout(0.2), Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16),
  Linear(16, 1); the ReLUs are commented out, so in eval mode it is one affine map ("linearMSE"). Its state dict
  keys are `layers.{0,2,4,6,7}.{weight,bias}`. The input is OpenAI CLIP ViT-L/14 `encode_image` of the CLIP
  preprocessed image, divided by its L2 norm (a zero norm is left as it is).
- The weights: `sac+logos+ava1-l14-linearMSE.pth` in that repository (AESTHETIC_HEAD_URL), 3,714,759 bytes,
  sha256 21dd590f...: the size and digest that several independent projects pin for the file (not re-checked
  against the server here, which has no network).
- The backbone: open_clip `ViT-L-14` with the `openai` weights, which open_clip fetches from the Hugging Face
  repository `timm/vit_large_patch14_clip_224.openai`. open_clip 3.x builds `ViT-L-14` with nn.GELU even for
  the `openai` tag (a mismatch only warns), while those weights need QuickGELU: simcli sets force_quick_gelu.
  Images go through open_clip's eval transform (shortest side to 224, bicubic, centre crop, OpenAI mean/std) as
  PIL images, as the original does.

Where the files come from:
- head: `weights` (--aesthetic-weights), else <simcli cache>/weights/sac+logos+ava1-l14-linearMSE.pth, downloaded
  there by simcli's downloader (resumable, size-checked) unless SIMCLI_OFFLINE; its sha256 must be the
  published one.
- backbone: `backbone` or $SIMCLI_AESTHETIC_CLIP (an open_clip model folder with open_clip_config.json, or a
  ViT-L-14 weights file), else the Hugging Face cache; downloaded by open_clip unless offline (SIMCLI_OFFLINE,
  HF_HUB_OFFLINE). A missing file is one UsageError naming the repository or URL and where to put the file.

The Hugging Face cache, offline and reachability checks are simcli.store.hub's, as for simcli.eval.text_image.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simcli.errors import UsageError
from simcli.eval.backends.common import load_error, weights_cache_path, weights_file_sha256
from simcli.store.hub import (
    cached_hub_file,
    download_command,
    hf_hub_cache,
    hub_missing_error,
    hub_offline,
    hub_unreachable,
)
from simcli.store.torch_files import load_tensors

Tensor = torch.Tensor
ImageEmbedFn = Callable[[Tensor], Tensor]
"""uint8 images [B, 3, H, W] -> image embeddings [B, D] (float, on the CPU), before normalisation."""

AESTHETIC_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_HEAD_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
AESTHETIC_HEAD_BYTES = 3_714_759
AESTHETIC_HEAD_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
HEAD_WIDTHS = (1024, 128, 64, 16, 1)
HEAD_DROPOUTS = (0.2, 0.2, 0.1)  # after the first three linear layers

BACKBONE_MODEL = "ViT-L-14"
BACKBONE_TAG = "openai"
BACKBONE_REPO = "timm/vit_large_patch14_clip_224.openai"
BACKBONE_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order of preference
BACKBONE_ENV = "SIMCLI_AESTHETIC_CLIP"
BACKBONE_NAME = f"open_clip/{BACKBONE_MODEL}/{BACKBONE_TAG}"


# ---------------------------------------------------------------------------------------------- head


class AestheticHead(torch.nn.Module):
    """The predictor's `MLP`: its layers sit under `layers`, so its state dict has the published file's keys."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = in_features
        for i, out in enumerate(HEAD_WIDTHS):
            layers.append(torch.nn.Linear(width, out))
            if i < len(HEAD_DROPOUTS):
                layers.append(torch.nn.Dropout(HEAD_DROPOUTS[i]))
            width = out
        self.layers = torch.nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def aesthetic_head(in_features: int = 768) -> AestheticHead:
    """The head with random weights, in eval mode: in_features -> 1024 -> 128 -> 64 -> 16 -> 1."""
    return AestheticHead(in_features).eval()


def load_aesthetic_head(path: Path) -> AestheticHead:
    """The head with the state dict of `path` (the published file's format; the input width is read from it)."""
    try:
        state = load_tensors(path, hint="pass the improved-aesthetic-predictor's sac+logos+ava1-l14-linearMSE.pth")
        if not isinstance(state, dict) or "layers.0.weight" not in state:
            raise ValueError("not a state dict with the predictor's 'layers.N' keys")
        head = aesthetic_head(int(state["layers.0.weight"].shape[1]))
        head.load_state_dict(state)
    except UsageError:  # a file that asks to run code, refused by load_tensors
        raise
    except Exception as exc:  # unpickling, missing keys, shape mismatches: one line
        raise load_error("LAION aesthetic head", path, exc) from None
    return head.requires_grad_(False).eval()


def normalized(embeddings: Tensor) -> Tensor:
    """Each row divided by its L2 norm; an all-zero row stays zero (the predictor's `normalized`)."""
    norm = embeddings.norm(p=2, dim=-1, keepdim=True)
    return embeddings / torch.where(norm == 0, torch.ones_like(norm), norm)


def _head_missing(dest: Path, why: str) -> UsageError:
    return UsageError(
        f"LAION aesthetic head {AESTHETIC_HEAD_FILE} is not available ({why}); URL: {AESTHETIC_HEAD_URL}",
        hint=f"download it and pass --aesthetic-weights PATH, or save it as {dest}",
    )


def aesthetic_head_path(weights: Path | str | None = None) -> Path:
    """The head's file: `weights` as given, else simcli's cache, downloaded there when missing and online."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"aesthetic head weights not found: {path}",
                             hint="--aesthetic-weights must name the .pth file")
        return path
    from simcli.store.cache import verify_cached
    from simcli.store.download import ensure_file

    dest = weights_cache_path(AESTHETIC_HEAD_FILE)
    if hub_offline() and not verify_cached(dest, expected_size=AESTHETIC_HEAD_BYTES).ok:
        raise _head_missing(dest, "offline")
    try:
        path = ensure_file(AESTHETIC_HEAD_URL, dest, expected_size=AESTHETIC_HEAD_BYTES)
    except UsageError as exc:
        reason = getattr(exc.__cause__, "reason", None) or exc.message
        raise _head_missing(dest, f"the download failed: {str(reason)[:200]}") from exc
    digest = weights_file_sha256(path)
    if digest != AESTHETIC_HEAD_SHA256:
        raise UsageError(
            f"{path} is not the published {AESTHETIC_HEAD_FILE} (sha256 {digest[:12]}..., expected "
            f"{AESTHETIC_HEAD_SHA256[:12]}...)",
            hint=f"delete it to download it again from {AESTHETIC_HEAD_URL}, or pass --aesthetic-weights PATH",
        )
    return path


# ---------------------------------------------------------------------------------------------- backbone


class OpenClipImageEmbedder:
    """An open_clip model's `encode_image` behind ImageEmbedFn, with its eval preprocessing on PIL images."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable, device: torch.device, name: str):
        self.device = torch.device(device)
        self.model = model.requires_grad_(False).eval().to(self.device)
        self.preprocess = preprocess
        self.name = name
        self.dim = int(model.visual.output_dim)

    def __call__(self, images: Tensor) -> Tensor:
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()
        x = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(p))) for p in pixels])
        with torch.no_grad():
            return self.model.encode_image(x.to(self.device)).float().cpu()


def _open_clip_create(model_name: str, **kwargs):
    from simcli.eval.backends.common import import_backend_library

    open_clip = import_backend_library("open_clip", "open_clip_torch", extra="t2i")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, **kwargs)
    return model, preprocess


def _backbone_from_path(path: Path, device: torch.device) -> OpenClipImageEmbedder:
    """An open_clip model folder (open_clip_config.json + weights) or a ViT-L-14 weights file."""
    if not path.exists():
        raise UsageError(f"aesthetic CLIP backbone not found: {path}",
                         hint=f"{BACKBONE_ENV} must name an open_clip model folder or a {BACKBONE_MODEL} weights file")
    try:
        if path.is_dir():
            model, preprocess = _open_clip_create(f"local-dir:{path}", weights_only=True)
        else:
            model, preprocess = _open_clip_create(BACKBONE_MODEL, pretrained=str(path), force_quick_gelu=True)
    except UsageError:
        raise
    except Exception as exc:
        raise load_error("aesthetic CLIP backbone", path, exc) from None
    return OpenClipImageEmbedder(model, preprocess, device, name=f"open_clip {path}")


def load_backbone(backbone: Path | str | None = None, device: str | torch.device = "cpu") -> OpenClipImageEmbedder:
    """The image embedder for the aesthetic score: `backbone`, $SIMCLI_AESTHETIC_CLIP, or ViT-L-14/openai."""
    device = torch.device(device)
    chosen = backbone if backbone is not None else (os.environ.get(BACKBONE_ENV, "").strip() or None)
    if chosen is not None:
        return _backbone_from_path(Path(chosen).expanduser(), device)
    cached = cached_hub_file(BACKBONE_REPO, BACKBONE_FILES)
    command = download_command(BACKBONE_REPO, files=BACKBONE_FILES[:1])
    alternative = f"set {BACKBONE_ENV} to a local copy"
    if cached is None:
        why = "offline" if hub_offline() else hub_unreachable()
        if why:
            raise hub_missing_error("aesthetic CLIP backbone", BACKBONE_REPO, command, why, alternative)
    try:
        if cached is not None:
            model, preprocess = _open_clip_create(BACKBONE_MODEL, pretrained=str(cached), force_quick_gelu=True)
        else:
            model, preprocess = _open_clip_create(BACKBONE_MODEL, pretrained=BACKBONE_TAG, force_quick_gelu=True,
                                                  cache_dir=str(hf_hub_cache()))
    except UsageError:
        raise
    except Exception as exc:
        if cached is not None:
            raise load_error("aesthetic CLIP backbone", cached, exc) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise hub_missing_error("aesthetic CLIP backbone", BACKBONE_REPO, command, f"download failed: {first}",
                               alternative) from None
    return OpenClipImageEmbedder(model, preprocess, device, name=BACKBONE_NAME)


# ---------------------------------------------------------------------------------------------- scorer


class AestheticScorer:
    """Per-image LAION aesthetic scores: head(normalized(embed(images)))."""

    def __init__(self, head: AestheticHead, embed: ImageEmbedFn, *, weights_path: Path | None = None,
                 backbone_name: str = BACKBONE_NAME):
        self.head = head.requires_grad_(False).eval()
        self.embed = embed
        self.weights_path = weights_path
        self.backbone_name = backbone_name
        self.in_features = int(self.head.in_features)

    @property
    def weights_sha256(self) -> str | None:
        return None if self.weights_path is None else weights_file_sha256(self.weights_path)

    def scores(self, images: Tensor, prompts: list[str] | None = None) -> Tensor:
        """uint8 [N, 3, H, W] -> float32 [N] on the CPU (prompts are not used: the score is image-only)."""
        embeddings = self.embed(images).float().cpu()
        if embeddings.shape[-1] != self.in_features:
            raise UsageError(
                f"the aesthetic head takes {self.in_features}-d embeddings but {self.backbone_name} gives "
                f"{embeddings.shape[-1]}-d ones", hint="use the ViT-L/14 backbone the head was trained on")
        with torch.no_grad():
            return self.head(normalized(embeddings)).squeeze(-1)


def load_aesthetic_scorer(
    weights: Path | str | None = None, *, backbone: Path | str | None = None, device: str | torch.device = "cpu",
    embed: ImageEmbedFn | None = None,
) -> AestheticScorer:
    """The head from `weights` (or simcli's cache) on the backbone (or an injected `embed` function)."""
    path = aesthetic_head_path(weights)
    head = load_aesthetic_head(path)
    if embed is not None:
        return AestheticScorer(head, embed, weights_path=path, backbone_name=getattr(embed, "name", "custom"))
    embedder = load_backbone(backbone, device)
    return AestheticScorer(head, embedder, weights_path=path, backbone_name=embedder.name)
