"""EDM2's latent space: the Stable Diffusion VAE with EDM2's per-channel normalisation, from latents back to pixels.

EDM2's ImageNet-512 networks (Karras et al. 2024) run on the latents of `stabilityai/sd-vae-ft-mse`, whitened per
channel: final = raw * scale + bias with scale = final_std / raw_std and bias = final_mean - raw_mean * scale
(NVlabs/edm2 training/encoders.py, StabilityVAEEncoder; raw_mean [5.81, 3.25, 0.12, -2.15], raw_std [4.17, 4.62,
3.71, 3.28], final std 0.5). Decoding inverts that, runs the VAE decoder in batches, and reads its output as pixels
in [0, 1] (EDM2's convention, not diffusers' [-1, 1]): uint8 = trunc(clamp(x, 0, 1) * 255).

The snapshot's encoder record (a pickled StabilityVAEEncoder without the VAE) becomes an `Edm2Latents`, which is
kept in the network's architecture record (key `latents`), so every generator distilled from the teacher decodes
the same way without the teacher's file. The VAE itself loads on demand, from a local folder or the Hugging Face
cache (downloaded there when allowed), never during training steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simcli.errors import UsageError

LATENTS_KIND = "edm2-vae"
VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
MAX_DECODE_BATCH = 1024


@dataclass(frozen=True)
class Edm2Latents:
    """How an EDM2 network's 4-channel latents become images: the VAE (a Hub name or a local folder) and EDM2's
    per-channel scale and bias (float32 values, kept exactly), decoded batch_size latents at a time."""

    vae: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]
    batch_size: int = 8

    def record(self) -> dict[str, Any]:
        """The JSON-able record kept in an architecture record under `latents`."""
        return {"kind": LATENTS_KIND, "vae": self.vae, "scale": list(self.scale), "bias": list(self.bias),
                "batch_size": self.batch_size}

    @classmethod
    def from_record(cls, record: Any, source: str) -> Edm2Latents:
        """The record back; a one-line UsageError naming `source` when it is malformed (files are untrusted)."""
        ok = isinstance(record, dict) and record.get("kind") == LATENTS_KIND and isinstance(record.get("vae"), str)
        scale, bias, batch = (record.get(k) for k in ("scale", "bias", "batch_size")) if ok else (None, None, None)
        ok = ok and 0 < len(record["vae"]) <= 1000 and _numbers(scale) and _numbers(bias) and len(scale) == len(bias)
        ok = ok and all(s != 0 for s in scale) and type(batch) is int and 1 <= batch <= MAX_DECODE_BATCH
        if not ok:
            raise UsageError(f"{source}: malformed EDM2 latent-space record {str(record)[:120]}",
                             hint="the file is damaged or was edited by hand")
        return cls(record["vae"], tuple(float(v) for v in scale), tuple(float(v) for v in bias), batch)

    def decoder(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """decode(latents [B, C, h, w]) -> uint8 images [B, 3, H, W] through the VAE (loaded now)."""
        vae = load_vae(self.vae, device)
        scale, bias = torch.tensor(self.scale, dtype=torch.float32), torch.tensor(self.bias, dtype=torch.float32)

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return decode_latents(lambda z: vae.decode(z, return_dict=False)[0], latents.to(device), scale.to(device),
                                  bias.to(device), self.batch_size)

        return decode


def _numbers(values: Any) -> bool:
    return (isinstance(values, list) and 1 <= len(values) <= 64
            and all(type(v) in (int, float) and math.isfinite(v) for v in values))


def latents_from_encoder(class_name: str, state: dict[str, Any], source: str) -> Edm2Latents | None:
    """The latent space an EDM2 snapshot's `encoder` record describes: a StabilityVAEEncoder's (its vae_name, scale,
    bias and batch_size; the arrays arrive as numpy arrays), None for StandardRGBEncoder (pixel networks: ImageNet-64).
    Anything else is refused in one line."""
    if class_name == "StandardRGBEncoder":
        return None
    if class_name != "StabilityVAEEncoder":
        raise UsageError(f"{source}: unknown EDM2 encoder {class_name!r}",
                         hint="EDM2 snapshots hold a StabilityVAEEncoder (latents) or a StandardRGBEncoder (pixels)")
    arrays = [_as_list(state.get(k)) for k in ("scale", "bias")]
    record = {"kind": LATENTS_KIND, "vae": state.get("vae_name"), "scale": arrays[0], "bias": arrays[1],
              "batch_size": state.get("batch_size")}
    return Edm2Latents.from_record(record, source)


def _as_list(value: Any) -> Any:
    """A numpy array record's values as a list of floats (anything else unchanged, for the check to refuse)."""
    array = getattr(value, "array", value)
    return [float(v) for v in array.reshape(-1)] if hasattr(array, "reshape") and array.ndim == 1 else value


def decode_latents(vae_decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor, batch_size: int) -> torch.Tensor:
    """EDM2's decode: raw = (x - bias) / scale per channel, the VAE decoder batch by batch, then
    trunc(clamp(y, 0, 1) * 255) as uint8 [B, 3, H, W] (encoders.py StabilityVAEEncoder.decode)."""
    x = latents.to(torch.float32)
    x = (x - bias.reshape(1, -1, 1, 1)) / scale.reshape(1, -1, 1, 1)
    with torch.no_grad():
        pixels = [vae_decode(chunk).to(torch.float32) for chunk in x.split(batch_size)]
    if not pixels:
        return torch.zeros(0, 3, 0, 0, dtype=torch.uint8)
    return torch.cat(pixels).clamp(0, 1).mul(255).to(torch.uint8)


def load_vae(name: str, device: torch.device | str = "cpu") -> Any:
    """diffusers' AutoencoderKL from a local folder, or a Hub name read from the Hugging Face cache (downloaded into it
    when allowed); float32, eval mode, frozen. Offline without it: one line naming the repo and the cache."""
    from simcli.nets.t2i_extra import require_diffusers
    from simcli.teachers.hf_loading import loading_failed, require_t2i_packages

    require_t2i_packages()
    folder = Path(name).expanduser()
    if not folder.is_dir():
        from simcli.store.hub import hub_snapshot

        folder = hub_snapshot(name, None, VAE_FILES)
    try:
        vae = require_diffusers().AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)
    except Exception as exc:  # a damaged or foreign folder: one line
        raise loading_failed("VAE", folder, exc, hint="EDM2 decodes with stabilityai/sd-vae-ft-mse (AutoencoderKL)") from None
    return vae.to(device).eval().requires_grad_(False)
