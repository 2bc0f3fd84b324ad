"""EDM2Precond: the EDM preconditioning of EDM2's U-Net and its learned uncertainty u(sigma) (Karras et al. 2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", section 2 and eq. 21).

D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma) / 4, labels) with the EDM coefficients for sigma_data = 0.5
(Karras et al. 2022, Table 1); u(sigma) = MPConv(MPFourier(ln(sigma) / 4)) is the log-variance that EDM2's loss
weights by. Built from exactly the `_init_kwargs` of NVlabs/edm2's `Precond` pickles, with the same submodules
(`unet`, `logvar_fourier`, `logvar_linear`), so `EDM2Precond(**init_kwargs)` loads an official state_dict strictly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from simcli.nets.denoiser import Denoiser
from simcli.nets.edm2_layers import MPConv, MPFourier
from simcli.nets.edm2_unet import EDM2Block, EDM2UNet
from simcli.nets.precond import edm_coefficients, precond_inputs, set_block_dropout


class EDM2Precond(Denoiser):
    """EDM2's `Precond`: forward(x, sigma, class_labels=None, force_fp32=False, return_logvar=False, ...).

    The U-Net runs in float16 on CUDA when use_fp16 (upstream's default) unless force_fp32; the preconditioning is
    float32. Missing labels of a conditional network become the all-zero label, as upstream."""

    supports_activation_checkpointing = True
    supports_dropout = True
    supports_discriminator = True
    supports_uncertainty = True

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int,
        use_fp16: bool = True,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
        **unet_kwargs: Any,
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.sample_shape = (img_channels, img_resolution, img_resolution)
        self.unet = EDM2UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def set_dropout(self, p: float) -> None:
        """The dropout probability of every EDM2Block (upstream: 0 for XS and S, 0.1 for M and larger)."""
        set_block_dropout(self, EDM2Block, p)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Checkpoint every EDM2Block of the U-Net (see EDM2UNet.run_block)."""
        self.unet.set_activation_checkpointing(enabled)

    def attach_discriminator_head(self, make_head: Callable[[int, int], nn.Module]) -> nn.Module:
        """Give the U-Net a discriminator head (DMD2's classifier branch, simcli.nets.discriminator_head) on its
        encoder's last feature map: make_head(channels, resolution) builds it for that map, whose shape follows from
        the architecture (no probe pass, which in train mode would renormalise the weights). The head becomes the
        submodule unet.discriminator_head (in the state dict); returns it."""
        head = make_head(self.unet.encoder_channels, self.unet.encoder_resolution)
        self.unet.discriminator_head = head.to(self.unet.out_gain.device)
        return head

    def logvar(self, c_noise: torch.Tensor) -> torch.Tensor:
        """u(sigma) [N, 1, 1, 1] from c_noise = ln(sigma) / 4 [N] (EDM2 eq. 21), in float32 also under autocast (simcli's
        bf16 and fp16 precisions), as upstream computes it outside its float16 trunk."""
        with torch.autocast(c_noise.device.type, enabled=False):
            return self.logvar_linear(self.logvar_fourier(c_noise.to(torch.float32))).reshape(-1, 1, 1, 1)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
        return_logits: bool = False,
        decode: bool = True,
        **unet_kwargs: Any,
    ) -> Any:
        """D(x; sigma) [N, C, R, R]; sigma is a number, a 0-d tensor or [N].

        return_logvar adds u(sigma) [N or 1, 1, 1, 1] (upstream: (D, logvar)). return_logits adds the discriminator's
        logits in float32 (simcli's SiDA and DMD2 terms: (D, logits), or (D, logits, logvar)); with decode=False only
        the logits (or (logits, logvar)) are returned and the decoder is skipped, as SiDA's 'encoder' flag."""
        x, sigma, class_labels, dtype = precond_inputs(x, sigma, class_labels, self.label_dim, self.use_fp16, force_fp32)

        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        c_noise = c_noise.flatten()  # [N or 1]
        out = self.unet((c_in * x).to(dtype), c_noise, class_labels, return_logits=return_logits, decode=decode,
                        **unet_kwargs)
        extra: tuple[torch.Tensor, ...] = ()
        if return_logits:  # the discriminator's logits too (supports_discriminator)
            if not decode:
                logits = out.to(torch.float32)
                return (logits, self.logvar(c_noise)) if return_logvar else logits
            out, logits = out
            extra = (logits.to(torch.float32),)
        D_x = c_skip * x + c_out * out.to(torch.float32)
        if return_logvar:
            extra = (*extra, self.logvar(c_noise))
        return (D_x, *extra) if extra else D_x


UPSTREAM_CLASS_NAMES: dict[type, str] = {
    EDM2Precond: "Precond",
    EDM2UNet: "UNet",
    EDM2Block: "Block",
    MPConv: "MPConv",
    MPFourier: "MPFourier",
}
"""Each module class here and the NVlabs/edm2 class (training.networks_edm2) whose pickled instances it stands for."""
