"""Small MLP denoisers with EDM preconditioning, for vector data (analytic mixture teachers).

They play the role the EDM UNet plays for images: an analytic teacher has no network to copy, so simcli
fits one of these to the exact denoiser and copies it into the generator and the online model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from simcli.nets.denoiser import Denoiser, sigma_column
from simcli.nets.precond import edm_coefficients


class FourierNoiseEmbedding(nn.Module):
    """Sin/cos features of c_noise at fixed geometric frequencies."""

    def __init__(self, dim: int, max_frequency: float = 16.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half))
        self.register_buffer("freqs", freqs)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs[None]  # [B, dim/2]
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class MLPDenoiser(Denoiser):
    """D(x; sigma) = c_skip x + c_out F(c_in x, emb(c_noise)) with F a SiLU MLP (EDM preconditioning)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 256,
        num_layers: int = 4,
        embedding_dim: int = 32,
        dropout: float = 0.0,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        self.sample_shape = (dim,)
        self.sigma_data = sigma_data
        self.embed = FourierNoiseEmbedding(embedding_dim)
        layers: list[nn.Module] = []
        width_in = dim + embedding_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width_in, hidden_dim), nn.SiLU(), nn.Dropout(dropout)]
            width_in = hidden_dim
        layers.append(nn.Linear(width_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(torch.float32)
        sig = sigma_column(sigma, x)  # [B, 1]
        c_skip, c_out, c_in, c_noise = edm_coefficients(sig, self.sigma_data)
        features = torch.cat([c_in * x, self.embed(c_noise)], dim=1)
        return c_skip * x + c_out * self.net(features)
