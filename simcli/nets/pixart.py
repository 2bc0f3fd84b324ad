"""PixArt-alpha's diffusion transformer (diffusers `PixArtTransformer2DModel`) as an EDM-form text-to-image denoiser.

SIM paper (Luo et al. 2024), eq. B.14: d(x; t) = x - t F(x), with EDM's iDDPM+DDIM preconditioning over the
transformer's own training schedule. Written out for x = x0 + sigma * eps in SD-VAE latent space:

    abar_t   = prod_{s <= t} (1 - beta_s),  betas linear from beta_start to beta_end in M bins (t = 0 .. M-1)
    sigma_t  = sqrt((1 - abar_t) / abar_t)          the M noise levels the transformer was trained on (ascending)
    c_in     = 1 / sqrt(sigma^2 + 1)                so c_in x is the VP latent x_t = sqrt(abar) x0 + sqrt(1-abar) eps
    t(sigma) = index of the bin nearest to sigma    the timestep the transformer sees
    D(x; sigma) = x - sigma * eps_theta(c_in x; t(sigma), text)     (c_skip = 1, c_out = -sigma)

As EDM's iDDPMPrecond does, only the timestep is rounded to a bin: c_in and c_out use the sigma given. Between
the bins this is EDM's choice, not the pipeline's; on a bin it is exactly the DDIM x0-prediction
(x_t - sqrt(1 - abar) eps) / sqrt(abar) of diffusers' schedulers. The transformer's learned-variance half of
its output is dropped. Classifier-free guidance eps_u + w (eps_c - eps_u) is one batched pass over
[empty prompt; prompt], as the pipeline does it.

diffusers is imported only inside the functions that build a transformer: this module needs torch alone, and
a missing package is a one-line UsageError naming the `t2i` extra (simcli.nets.t2i_extra).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets.denoiser import Conditioning, Denoiser
from simcli.nets.t2i_extra import require_diffusers
from simcli.nets.text_condition import TextCondition

BETA_SCHEDULES = ("linear", "scaled_linear")
DEFAULT_SCHEDULE: dict[str, Any] = {  # PixArt-alpha's (and diffusers' DDPM/DPM-Solver) training schedule
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
DEFAULT_VAE_SCALE_FACTOR = 8  # SD VAE: 4 down-sampling blocks, 512 px images <-> 64x64 latents


# ---------------------------------------------------------------------------------------------- the bins


def vp_betas(
    num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear"
) -> torch.Tensor:
    """The M betas of a DDPM training schedule, float64 on the CPU ('linear' or 'scaled_linear', as diffusers)."""
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64, device="cpu")
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64, device="cpu") ** 2
    raise UsageError(f"unsupported beta_schedule {beta_schedule!r}", hint=f"simcli supports {', '.join(BETA_SCHEDULES)}")


def vp_sigma_bins(
    num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear"
) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0 .. M-1 (ascending), float64 on the CPU (SIM eq. B.14)."""
    alpha_bar = torch.cumprod(1 - vp_betas(num_train_timesteps, beta_start, beta_end, beta_schedule), dim=0)
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def _table_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def sigma_to_timestep(sigma: torch.Tensor | float, bins: torch.Tensor) -> torch.Tensor:
    """Index of the bin nearest to each sigma (absolute distance, ties to the lower index), int64, sigma's shape."""
    sigma = torch.as_tensor(sigma)
    dtype = _table_dtype(sigma.device)
    table = bins.to(device=sigma.device, dtype=dtype)
    return (sigma.to(dtype).reshape(-1, 1) - table.reshape(1, -1)).abs().argmin(dim=1).reshape(sigma.shape)


def schedule_from_scheduler_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The training schedule a diffusers scheduler config records (its defaults where a key is absent); checked."""
    config = dict(config or {})
    schedule = {key: config.get(key, default) for key, default in DEFAULT_SCHEDULE.items()}
    schedule["num_train_timesteps"] = int(schedule["num_train_timesteps"])
    schedule["beta_start"], schedule["beta_end"] = float(schedule["beta_start"]), float(schedule["beta_end"])
    if config.get("trained_betas") is not None:
        raise UsageError("the scheduler config has trained_betas; simcli supports only linear beta schedules")
    if schedule["beta_schedule"] not in BETA_SCHEDULES:
        raise UsageError(f"the scheduler config's beta_schedule {schedule['beta_schedule']!r} is not supported",
                         hint=f"simcli supports {', '.join(BETA_SCHEDULES)}")
    if config.get("prediction_type", "epsilon") != "epsilon":
        raise UsageError(f"the scheduler config's prediction_type {config.get('prediction_type')!r} is not supported",
                         hint="PixArt-alpha's transformer predicts epsilon")
    if not 0 < schedule["beta_start"] <= schedule["beta_end"] < 1 or schedule["num_train_timesteps"] < 2:
        raise UsageError(f"the scheduler config's schedule {schedule} is not a DDPM schedule")
    return schedule


# ---------------------------------------------------------------------------------------------- the denoiser


class PixArtDenoiser(Denoiser):
    """D(x, sigma, condition) = x - sigma eps(x / sqrt(sigma^2 + 1); t(sigma), condition) around a PixArt transformer.

    x [B, C, S, S] latents (x0 + sigma eps), sigma a scalar, [B] or [B, 1, 1, 1], condition a TextCondition with
    B rows (or 1, broadcast); returns float32. With guidance_scale != 1 the empty-prompt condition set by
    `set_null_condition` is guided against (one pass over the doubled batch); condition None means the empty prompt.
    """

    label_dim = 0
    supports_activation_checkpointing = True

    def __init__(
        self,
        transformer: nn.Module,
        schedule: Mapping[str, Any] | None = None,
        guidance_scale: float = 1.0,
        vae_scale_factor: int = DEFAULT_VAE_SCALE_FACTOR,
    ):
        super().__init__()
        self.transformer = transformer
        config = transformer.config
        self.schedule = schedule_from_scheduler_config(schedule)
        self.guidance_scale = float(guidance_scale)
        self.vae_scale_factor = int(vae_scale_factor)
        self.latent_channels = int(config.in_channels)
        self.sample_shape = (self.latent_channels, int(config.sample_size), int(config.sample_size))
        self.sigma_bins = vp_sigma_bins(**self.schedule)  # float64 CPU, kept out of .to(dtype) and the state_dict
        self._bins_by_device: dict[torch.device, torch.Tensor] = {}
        self.sigma_min = float(self.sigma_bins[0])
        self.sigma_max = float(self.sigma_bins[-1])
        self.register_buffer("null_embeds", None, persistent=False)  # [1, L, C] empty-prompt condition
        self.register_buffer("null_mask", None, persistent=False)  # [1, L]

    # ------------------------------------------------------------------ noise levels

    def _bins(self, device: torch.device) -> torch.Tensor:
        if device not in self._bins_by_device:
            self._bins_by_device[device] = self.sigma_bins.to(device=device, dtype=_table_dtype(device))
        return self._bins_by_device[device]

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """The nearest bin's sigma (sigma's dtype), or its timestep index with return_index; sigma's shape."""
        sigma = torch.as_tensor(sigma)
        bins = self._bins(sigma.device)
        index = sigma_to_timestep(sigma, bins)
        return index if return_index else bins[index].to(sigma.dtype if sigma.is_floating_point() else torch.float32)

    # ------------------------------------------------------------------ conditioning, guidance and switches

    @property
    def conditioning(self) -> Conditioning:
        """T5 hidden states and their mask (caption_channels wide), guided against the empty prompt; the 1024 px
        models' resolution and aspect-ratio micro-conditions, derived from the latents (`_micro_conditions`)."""
        added = ("resolution", "aspect_ratio") if self._uses_micro_conditions else ()
        return Conditioning(text_dim=int(self.transformer.config.caption_channels or 0), added=added, guidance="cfg")

    @property
    def _uses_micro_conditions(self) -> bool:
        return bool(getattr(self.transformer, "use_additional_conditions", False))  # diffusers sets it from the config

    def set_null_condition(self, condition: TextCondition | None) -> None:
        """The empty prompt's condition (one row) that guidance contrasts with; not part of the state_dict."""
        if condition is None:
            self.null_embeds, self.null_mask = None, None
            return
        if condition.embeds.ndim != 3 or condition.embeds.shape[0] != 1 or condition.mask.shape != condition.embeds.shape[:2]:
            raise ValueError(f"the null condition must be one row: embeds [1, L, C] and mask [1, L], got "
                             f"{list(condition.embeds.shape)} and {list(condition.mask.shape)}")
        device = next(self.transformer.parameters()).device
        self.null_embeds = condition.embeds.detach().to(device)
        self.null_mask = condition.mask.detach().to(device)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Gradient checkpointing of the transformer's blocks (diffusers' own)."""
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, condition: TextCondition | None = None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        timestep = self.round_sigma(sigma.flatten(), return_index=True)  # EDM: only the timestep is rounded
        c_in = 1 / (sigma**2 + 1).sqrt()
        eps = self.epsilon(c_in * x, timestep, condition)
        return x - sigma * eps

    def epsilon(self, latents: torch.Tensor, timestep: torch.Tensor, condition: TextCondition | None = None) -> torch.Tensor:
        """The (guided) noise prediction for VP latents x_t [B, C, S, S] at integer timesteps [B], float32.

        The transformer call of PixArtAlphaPipeline.__call__: encoder_hidden_states / encoder_attention_mask from
        the condition, micro-conditions for the 1024 px models, the image channels of the learned-sigma output.
        """
        batch = latents.shape[0]
        timestep = torch.as_tensor(timestep, device=latents.device).long().reshape(-1).expand(batch)
        guided = self.guidance_scale != 1.0
        if condition is None or guided:
            null = self._null_condition(batch)
        if condition is None:
            condition, guided = null, False
        condition = _rows(condition, batch)
        if guided:
            condition = _cat_padded(null, condition)
            latents, timestep = torch.cat([latents, latents]), torch.cat([timestep, timestep])
        dtype = next(self.transformer.parameters()).dtype
        embeds = condition.embeds.to(device=latents.device, dtype=dtype)
        out = self.transformer(
            latents.to(dtype),
            encoder_hidden_states=embeds,
            encoder_attention_mask=condition.mask.to(latents.device),
            timestep=timestep,
            added_cond_kwargs=self._micro_conditions(latents, embeds.dtype),
            return_dict=False,
        )[0]
        if out.shape[1] // 2 == self.latent_channels:  # learned sigma: [eps, variance]
            out = out[:, : self.latent_channels]
        eps = out.to(torch.float32)
        if guided:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + self.guidance_scale * (eps_c - eps_u)
        return eps

    def _null_condition(self, batch: int) -> TextCondition:
        if self.null_embeds is None:
            raise ValueError("this PixArtDenoiser has no empty-prompt condition: call set_null_condition first "
                             "(needed for guidance_scale != 1 and for condition=None)")
        return TextCondition(self.null_embeds.expand(batch, -1, -1), self.null_mask.expand(batch, -1))

    def _micro_conditions(self, latents: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor | None]:
        """Resolution and aspect ratio in pixels for models trained with them (PixArt 1024), else None, as the pipeline."""
        if not self._uses_micro_conditions:
            return {"resolution": None, "aspect_ratio": None}
        batch = latents.shape[0]
        height, width = (int(s) * self.vae_scale_factor for s in latents.shape[-2:])
        resolution = torch.tensor([height, width], dtype=dtype, device=latents.device).repeat(batch, 1)
        aspect_ratio = torch.tensor([float(height / width)], dtype=dtype, device=latents.device).repeat(batch, 1)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}


def _rows(condition: TextCondition, batch: int) -> TextCondition:
    if condition.embeds.shape[0] == batch:
        return condition
    if condition.embeds.shape[0] == 1:
        return TextCondition(condition.embeds.expand(batch, -1, -1), condition.mask.expand(batch, -1))
    raise ValueError(f"the condition has {condition.embeds.shape[0]} rows for a batch of {batch}")


def _cat_padded(first: TextCondition, second: TextCondition) -> TextCondition:
    """[first; second], the shorter padded with masked-out zero tokens to the longer's length."""
    length = max(first.embeds.shape[1], second.embeds.shape[1])
    parts = []
    for part in (first, second):
        missing = length - part.embeds.shape[1]
        embeds, mask = part.embeds, part.mask.to(device=second.mask.device, dtype=second.mask.dtype)
        if missing:
            embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], missing, embeds.shape[2])], dim=1)
            mask = torch.cat([mask, mask.new_zeros(mask.shape[0], missing)], dim=1)
        parts.append(TextCondition(embeds.to(second.embeds.device), mask))
    return TextCondition.cat(parts)


# ---------------------------------------------------------------------------------------------- record and rebuild


def pixart_architecture(
    transformer: nn.Module,
    scheduler_config: Mapping[str, Any] | None,
    guidance_scale: float = 1.0,
    vae_scale_factor: int = DEFAULT_VAE_SCALE_FACTOR,
) -> dict[str, Any]:
    """The JSON-able rebuild record of a PixArtDenoiser (`simcli.nets.registry.build_network`).

    config: the transformer's public config (diffusers' private `_...` keys dropped); schedule: the training
    schedule of the scheduler config; guidance_scale; vae_scale_factor (pixels per latent, for micro-conditions).
    """
    config = {key: value for key, value in dict(transformer.config).items() if not key.startswith("_")}
    return {
        "kind": "pixart",
        "config": json.loads(json.dumps(config)),
        "schedule": schedule_from_scheduler_config(scheduler_config),
        "guidance_scale": float(guidance_scale),
        "vae_scale_factor": int(vae_scale_factor),
    }


def build_pixart_network(architecture: Mapping[str, Any]) -> PixArtDenoiser:
    """A PixArtDenoiser with a freshly initialised transformer of the recorded config (`PixArtTransformer2DModel.from_config`)."""
    config = architecture.get("config")
    if not isinstance(config, dict):
        raise UsageError("the recorded PixArt architecture has no config mapping", hint="was it written by simcli?")
    require_diffusers()
    from diffusers import PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel.from_config(dict(config))
    return PixArtDenoiser(
        transformer,
        architecture.get("schedule"),
        guidance_scale=float(architecture.get("guidance_scale", 1.0)),
        vae_scale_factor=int(architecture.get("vae_scale_factor", DEFAULT_VAE_SCALE_FACTOR)),
    )
