"""A diffusers text-to-image network as an EDM-form denoiser: one wrapper for every family and prediction type.

    D(x; sigma, c) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; time(sigma), c)      (EDM eq. 7)

with (c_in, c_skip, c_out) from the network's prediction type (simcli.nets.prediction: DDPM epsilon or v, or
rectified-flow velocity) and time(sigma) the network's own time:

- DDPM networks (PixArt, the SD UNets): the index of the training bin nearest to sigma (SIM eq. B.14; as EDM's
  iDDPMPrecond, only the timestep is rounded, c_in and c_out use the sigma given). On a bin this is exactly the
  x0-prediction of diffusers' schedulers.
- Flow networks (SD3, FLUX, SANA): t = sigma / (1 + sigma), times the family's scale (1000; FLUX scales itself).
  Time is continuous, so D is exact at every sigma.

The network call itself (which inputs, packing, ids, micro-conditions) is the family's adapter
(simcli.nets.backbones). Guidance, as the family's pipeline does it:
- "cfg": F_u + w (F_c - F_u) over one batched pass of [null condition; condition] (equal to guiding D);
- "embedded" (FLUX-dev, guidance-distilled): the scale w is an input of the network, one pass;
- "none" (FLUX-schnell): no guidance.

diffusers is imported only to rebuild a recorded network (`build_diffusers_network`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets.backbones import BACKBONE_BY_CLASS, BACKBONES, Backbone
from simcli.nets.denoiser import Conditioning, Denoiser
from simcli.nets.prediction import flow_time, preconditioning
from simcli.nets.t2i_extra import require_diffusers
from simcli.nets.text_condition import TextCondition
from simcli.nets.train_schedule import check_schedule_record, sigma_to_timestep, table_dtype, vp_sigma_bins

DEFAULT_VAE_SCALE_FACTOR = 8  # SD-family VAEs: 512 px images <-> 64x64 latents


class DiffusersDenoiser(Denoiser):
    """D(x, sigma, condition) around a diffusers network (module docstring).

    x [B, C, h, w] latents (x0 + sigma eps), sigma a scalar, [B] or [B, 1, 1, 1], condition a TextCondition with B
    rows (or 1, broadcast) or None (the null condition); returns float32. The network is registered under its
    pipeline component's name ('transformer' or 'unet'), so state_dict keys are the network's own, prefixed so.
    """

    label_dim = 0
    supports_activation_checkpointing = True

    def __init__(self, network: nn.Module, schedule: Mapping[str, Any], guidance_scale: float = 1.0,
                 vae_scale_factor: int = DEFAULT_VAE_SCALE_FACTOR, sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        backbone = BACKBONE_BY_CLASS.get(type(network).__name__)
        if backbone is None:
            raise UsageError(f"simcli has no adapter for a {type(network).__name__}",
                             hint=f"supported networks: {', '.join(BACKBONE_BY_CLASS)}")
        self.backbone: Backbone = backbone
        self.add_module(backbone.component, network)
        self.schedule = check_schedule_record(schedule)
        self.prediction = "flow" if self.schedule["kind"] == "flow" else self.schedule["prediction"]
        self.guidance_scale = float(guidance_scale)
        self.vae_scale_factor = int(vae_scale_factor)
        self.sample_shape = tuple(int(s) for s in (sample_shape or backbone.default_sample_shape(network)))
        self.latent_channels = self.sample_shape[0]
        self._bins_by_device: dict[torch.device, torch.Tensor] = {}
        if self.schedule["kind"] == "vp":
            self.sigma_bins = vp_sigma_bins(**{k: self.schedule[k] for k in
                                               ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")})
            self.sigma_min, self.sigma_max = float(self.sigma_bins[0]), float(self.sigma_bins[-1])
        else:  # the smallest time of the shifted training table t_i = shift(i / M), i = 1 .. M
            self.sigma_bins = None
            self.sigma_min = self.schedule["shift"] / (self.schedule["num_train_timesteps"] - 1)
            self.sigma_max = float("inf")
        self.register_buffer("null_embeds", None, persistent=False)
        self.register_buffer("null_mask", None, persistent=False)
        self.register_buffer("null_pooled", None, persistent=False)

    @property
    def network(self) -> nn.Module:
        """The wrapped diffusers network (the 'transformer' or 'unet' submodule)."""
        return self._modules[self.backbone.component]

    # ------------------------------------------------------------------ noise levels

    def _bins(self, device: torch.device) -> torch.Tensor:
        if device not in self._bins_by_device:
            self._bins_by_device[device] = self.sigma_bins.to(device=device, dtype=table_dtype(device))
        return self._bins_by_device[device]

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """DDPM networks: the nearest bin's sigma (or its index with return_index); flow networks: sigma itself."""
        sigma = torch.as_tensor(sigma)
        if self.sigma_bins is None:
            if return_index:
                raise ValueError("a flow network has no timestep bins")
            return sigma
        bins = self._bins(sigma.device)
        index = sigma_to_timestep(sigma, bins)
        return index if return_index else bins[index].to(sigma.dtype if sigma.is_floating_point() else torch.float32)

    def network_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """The time the network takes at noise levels sigma [B]: a bin index (DDPM) or t times the family's scale."""
        if self.sigma_bins is not None:
            return self.round_sigma(sigma, return_index=True)
        return flow_time(sigma) * self.backbone.flow_time_scale(self.network)

    # ------------------------------------------------------------------ conditioning, guidance and switches

    @property
    def conditioning(self) -> Conditioning:
        return self.backbone.conditioning(self.network)

    def set_null_condition(self, condition: TextCondition | None) -> None:
        """The null (empty-prompt) condition, one row, that classifier-free guidance contrasts with; not saved."""
        if self.conditioning.guidance != "cfg":
            raise ValueError(f"a {self.backbone.class_name} with {self.conditioning.guidance} guidance takes no null condition")
        if condition is None:
            self.null_embeds, self.null_mask, self.null_pooled = None, None, None
            return
        if condition.embeds.ndim != 3 or condition.embeds.shape[0] != 1 or condition.mask.shape != condition.embeds.shape[:2]:
            raise ValueError(f"the null condition must be one row: embeds [1, L, C] and mask [1, L], got "
                             f"{list(condition.embeds.shape)} and {list(condition.mask.shape)}")
        device = next(self.network.parameters()).device
        self.null_embeds, self.null_mask = condition.embeds.detach().to(device), condition.mask.detach().to(device)
        self.null_pooled = None if condition.pooled is None else condition.pooled.detach().to(device)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Gradient checkpointing of the network's blocks (diffusers' own)."""
        if enabled:
            self.network.enable_gradient_checkpointing()
        else:
            self.network.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, condition: TextCondition | None = None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1).expand(x.shape[0])
        c_in, c_skip, c_out = (c.reshape(-1, 1, 1, 1) for c in preconditioning(self.prediction, sigma))
        raw = self.raw_output(c_in * x, self.network_time(sigma), condition)
        return c_skip * x + c_out * raw

    def raw_output(self, latents: torch.Tensor, time: torch.Tensor, condition: TextCondition | None = None) -> torch.Tensor:
        """The network's (guided) prediction F for its own input latents at its own times [B], float32."""
        batch = latents.shape[0]
        guidance = self.conditioning.guidance
        guided = guidance == "cfg" and self.guidance_scale != 1.0
        if condition is None:
            if guidance != "cfg":
                raise ValueError(f"a {self.backbone.class_name} without classifier-free guidance needs a condition")
            condition, guided = self._null_condition(batch), False
        condition = condition.rows(batch)
        if condition.pooled is None and self.conditioning.pooled_dim:
            raise ValueError(f"a {self.backbone.class_name} takes the pooled text embedding "
                             f"[B, {self.conditioning.pooled_dim}]; the condition has none")
        if guided:
            condition = self._null_condition(batch).cat_padded(condition)
            latents, time = torch.cat([latents, latents]), torch.cat([time, time])
        embedded = None
        if guidance == "embedded":
            embedded = torch.full((latents.shape[0],), self.guidance_scale, device=latents.device)
        out = self.backbone(self.network, latents, time, condition.to(latents.device), embedded, self.vae_scale_factor)
        if guided:
            out_u, out_c = out.chunk(2)
            out = out_u + self.guidance_scale * (out_c - out_u)
        return out

    def _null_condition(self, batch: int) -> TextCondition:
        if self.null_embeds is None:
            raise ValueError(f"this {self.backbone.class_name} denoiser has no null condition: call set_null_condition "
                             "first (needed for guidance_scale != 1 and for condition=None)")
        pooled = None if self.null_pooled is None else self.null_pooled.expand(batch, -1)
        return TextCondition(self.null_embeds.expand(batch, -1, -1), self.null_mask.expand(batch, -1), pooled)


# ---------------------------------------------------------------------------------------------- record and rebuild


def diffusers_architecture(network: nn.Module, schedule: Mapping[str, Any], guidance_scale: float = 1.0,
                           vae_scale_factor: int = DEFAULT_VAE_SCALE_FACTOR,
                           sample_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The JSON-able rebuild record of a DiffusersDenoiser (`simcli.nets.registry.build_network`): the network's
    class and public config (diffusers' private `_...` keys dropped), the training schedule, the guidance scale,
    pixels per latent and the latent shape."""
    net = DiffusersDenoiser(network, schedule, guidance_scale, vae_scale_factor, sample_shape)
    config = {key: value for key, value in dict(network.config).items() if not key.startswith("_")}
    return {
        "kind": "diffusers",
        "class_name": type(network).__name__,
        "config": json.loads(json.dumps(config)),
        "schedule": net.schedule,
        "guidance_scale": float(guidance_scale),
        "vae_scale_factor": int(vae_scale_factor),
        "sample_shape": list(net.sample_shape),
    }


def build_diffusers_network(architecture: Mapping[str, Any]) -> DiffusersDenoiser:
    """A DiffusersDenoiser with a freshly initialised network of the recorded class and config. Records of kind
    'pixart' (written before the other families) rebuild a PixArtTransformer2DModel with a DDPM schedule."""
    config = architecture.get("config")
    if not isinstance(config, dict):
        raise UsageError("the recorded diffusers architecture has no config mapping", hint="was it written by simcli?")
    class_name = architecture.get("class_name", BACKBONES["pixart"].class_name)
    if class_name not in BACKBONE_BY_CLASS:
        raise UsageError(f"the recorded network class {class_name!r} is not one simcli wraps",
                         hint=f"supported: {', '.join(BACKBONE_BY_CLASS)}")
    diffusers = require_diffusers()
    network = getattr(diffusers, class_name).from_config(dict(config))
    shape = architecture.get("sample_shape")
    return DiffusersDenoiser(network, architecture.get("schedule") or {}, float(architecture.get("guidance_scale", 1.0)),
                             int(architecture.get("vae_scale_factor", DEFAULT_VAE_SCALE_FACTOR)),
                             tuple(shape) if shape else None)
