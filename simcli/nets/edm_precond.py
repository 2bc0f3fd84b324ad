"""The EDM-paper preconditioners EDMPrecond, VPPrecond, VEPrecond and iDDPMPrecond around SongUNet/DhariwalUNet.

D(x; sigma) = c_skip x + c_out F(c_in x; c_noise, labels) with the coefficients of Karras et al. 2022
(EDM, Table 1; NVlabs/edm `training/networks.py`), re-implemented from edm-spec.md 3.4. VP and VE are the
SDE parameterisations of Song et al. 2021; iDDPM is the discrete cosine schedule of Nichol & Dhariwal 2021
as used by ADM (Dhariwal & Nichol 2021). Constructors accept exactly the `_init_kwargs` of the official
pickles (edm-spec 2.1), so a loader can call `EDMPrecond(**init_kwargs)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from simcli.errors import UsageError
from simcli.nets.denoiser import Conditioning, Denoiser
from simcli.nets.dhariwal_unet import DhariwalUNet
from simcli.nets.precond import edm_coefficients, precond_inputs, set_block_dropout
from simcli.nets.song_unet import SongUNet
from simcli.nets.unet_block import UNetBlock

MODEL_TYPES: dict[str, type[nn.Module]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}

Coefficients = tuple[Any, Any, Any, torch.Tensor]  # (c_skip, c_out, c_in, c_noise)


class ImagePrecond(Denoiser):
    """Shared body of the four preconditioners: casting, label handling, fp16 choice, D = c_skip x + c_out F."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool,
        model_type: str,
        model_out_channels: int,
        model_kwargs: dict[str, Any],
    ):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise UsageError(
                f"unknown EDM model_type {model_type!r} in {type(self).__name__}",
                hint=f"expected one of {', '.join(MODEL_TYPES)}",
            )
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sample_shape = (img_channels, img_resolution, img_resolution)
        self.model = MODEL_TYPES[model_type](
            img_resolution=img_resolution,
            in_channels=img_channels,
            out_channels=model_out_channels,
            label_dim=label_dim,
            **model_kwargs,
        )

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """(c_skip, c_out, c_in, c_noise) for float32 sigma [N, 1, 1, 1]; c_noise is [N, 1, 1, 1]."""
        raise NotImplementedError

    supports_activation_checkpointing = True
    supports_dropout = True
    supports_discriminator = True

    @property
    def conditioning(self) -> Conditioning:
        """Class labels (label_dim) and, for networks trained with EDM's augmentation, its labels (augment_dim)."""
        mapping = self.model.map_augment
        return Conditioning(label_dim=self.label_dim, augment_dim=mapping.in_features if mapping is not None else 0)

    def set_dropout(self, p: float) -> None:
        """The dropout of every UNetBlock (the UNet's `dropout` argument; its label dropout is left as it is)."""
        set_block_dropout(self, UNetBlock, p)

    def attach_discriminator_head(self, make_head: Callable[[int, int], nn.Module]) -> nn.Module:
        """Give the UNet a discriminator head (DMD2's classifier branch, simcli.nets.discriminator_head) on its encoder's
        last feature map: make_head(channels, resolution) builds it for that map, found by one encoder pass on zeros.
        The head becomes the submodule model.discriminator_head (in the state dict); returns it."""
        self.model.discriminator_head = nn.Identity()
        with torch.no_grad():
            probe = torch.zeros((1, self.img_channels, self.img_resolution, self.img_resolution))
            features = self(probe.to(next(self.parameters()).device), torch.ones(1), None, return_logits=True,
                            decode=False)  # [1, C, h, w]
        head = make_head(features.shape[1], features.shape[-1])
        self.model.discriminator_head = head.to(features.device)
        return head

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint every UNetBlock of the wrapped UNet (see CheckpointableUNet)."""
        self.model.set_activation_checkpointing(enabled)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        x, sigma, class_labels, dtype = precond_inputs(x, sigma, class_labels, self.label_dim, self.use_fp16, force_fp32)

        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        logits = None
        if model_kwargs.get("return_logits"):  # the discriminator's logits too (supports_discriminator)
            if not model_kwargs.get("decode", True):
                return F_x.to(torch.float32)
            F_x, logits = F_x[0], F_x[1].to(torch.float32)
        # Under autocast (simcli's bf16 and fp16 precisions) the trunk's dtype is autocast's, not `dtype`.
        assert F_x.dtype == dtype or torch.is_autocast_enabled(x.device.type)
        D_x = c_skip * x + c_out * F_x[:, : self.img_channels].to(torch.float32)
        return D_x if logits is None else (D_x, logits)


class EDMPrecond(ImagePrecond):
    """EDM preconditioning (Karras et al. 2022, Table 1 'Ours'); used by every official edm-*.pkl."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        return edm_coefficients(sigma, self.sigma_data)


class VPPrecond(ImagePrecond):
    """Variance-preserving SDE preconditioning (Song et al. 2021; EDM Table 1 'VP')."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        beta_d: float = 19.9,
        beta_min: float = 0.1,
        M: int = 1000,
        epsilon_t: float = 1e-5,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # float32 arithmetic on CPU (also when built under a meta-device context): 0.0009765625, not 0.003164.
        self.sigma_min = float(self.sigma(torch.as_tensor(epsilon_t, device="cpu")))
        self.sigma_max = float(self.sigma(torch.as_tensor(1, device="cpu")))  # 152.1670

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t**2) + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """t(sigma) = (sqrt(beta_min^2 + 2 beta_d ln(1 + sigma^2)) - beta_min) / beta_d."""
        sigma = sigma if isinstance(sigma, torch.Tensor) else torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return c_skip, c_out, c_in, c_noise


class VEPrecond(ImagePrecond):
    """Variance-exploding SDE preconditioning (Song et al. 2021; EDM Table 1 'VE')."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        model_type: str = "SongUNet",
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1
        c_out = sigma
        c_in = 1
        c_noise = (0.5 * sigma).log()
        return c_skip, c_out, c_in, c_noise


class iDDPMPrecond(ImagePrecond):  # noqa: N801 - upstream class name, recorded in the pickles
    """Improved-DDPM preconditioning over a discrete table u of M+1 noise levels (EDM Table 1 'iDDPM')."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels * 2, model_kwargs)
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        u = torch.zeros(M + 1, device="cpu")  # [M+1] float32 on CPU (also under a meta-device context); u[M] = 0
        for j in range(M, 0, -1):  # M, ..., 1; scalar float32 steps as upstream
            prev, cur = (self.alpha_bar(torch.tensor(i, device="cpu")) for i in (j - 1, j))
            u[j - 1] = ((u[j] ** 2 + 1) / (prev / cur).clip(min=C_1) - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[M - 1])
        self.sigma_max = float(u[0])

    def alpha_bar(self, j: torch.Tensor | int) -> torch.Tensor:
        """alpha_bar(j) = sin^2(pi j / (2 M (C_2 + 1)))."""
        j = j if isinstance(j, torch.Tensor) else torch.as_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: torch.Tensor | float, return_index: bool = False) -> torch.Tensor:
        """The nearest entry of u (or its index with return_index), same shape as sigma."""
        sigma = torch.as_tensor(sigma)
        dist = torch.cdist(sigma.to(self.u.device).to(torch.float32).reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        index = dist.argmin(2)  # [1, K]
        result = index if return_index else self.u[index.flatten()].to(sigma.dtype)
        return result.reshape(sigma.shape).to(sigma.device)

    def coefficients(self, sigma: torch.Tensor) -> Coefficients:
        c_skip = 1
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        c_noise = self.M - 1 - self.round_sigma(sigma, return_index=True).to(torch.float32)
        return c_skip, c_out, c_in, c_noise
