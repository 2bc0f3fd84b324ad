"""Analytic Gaussian-mixture teachers with an exact denoiser and exact samples (sim-method.md section 7).

For p0 = sum_k pi_k N(mu_k, diag(s_k^2)) the diffused marginal at noise sigma is
sum_k pi_k N(mu_k, diag(s_k^2 + sigma^2)) and the exact denoiser is
D(x; sigma) = sum_k r_k(x) [mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)].
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser, sigma_column


class GaussianMixture(Denoiser):
    """A diagonal Gaussian mixture in R^D with its exact denoiser, log-density and sampler."""

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, name: str = "gmm"):
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None].expand_as(means).clone()
        self.register_buffer("weights", weights / weights.sum())  # [K]
        self.register_buffer("means", means)  # [K, D]
        self.register_buffer("stds", stds)  # [K, D]
        self.name = name
        self.sample_shape = (means.shape[1],)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def component_log_probs(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """log(pi_k N(x; mu_k, diag(s_k^2 + sigma^2))) for every sample and component: [B, K]."""
        x64 = x.to(torch.float64)
        var = self.stds[None] ** 2 + sigma_column(sigma, x64)[:, :, None] ** 2  # [B, K, D] by broadcast
        diff = x64[:, None, :] - self.means[None]  # [B, K, D]
        log_norm = -0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)  # [B, K]
        return log_norm + torch.log(self.weights)[None]

    def responsibilities(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Posterior probability of each component given x at noise sigma: [B, K]."""
        return torch.softmax(self.component_log_probs(x, sigma), dim=-1)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Exact denoiser E[x0 | x_sigma = x], computed in float64 and returned in x's dtype."""
        x64 = x.to(torch.float64)
        sig = sigma_column(sigma, x64)  # [B, 1]
        r = self.responsibilities(x64, sig.squeeze(-1))  # [B, K]
        s2 = self.stds[None] ** 2  # [1, K, D]
        shrink = s2 / (s2 + sig[:, :, None] ** 2)  # [B, K, D]
        per_component = self.means[None] + shrink * (x64[:, None, :] - self.means[None])  # [B, K, D]
        return (r[:, :, None] * per_component).sum(1).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact samples of p0 and their component indices: ([n, D] float32, [n] int64)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[idx] + self.stds[idx] * eps
        return x.to(torch.float32), idx


def ring(num_modes: int = 8, radius: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """Equal-weight modes evenly spaced on a circle in 2-D."""
    angles = torch.arange(num_modes, dtype=torch.float64) * (2 * math.pi / num_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.ones(num_modes), means, torch.full((num_modes,), std), name=f"gmm-ring{num_modes}")


def grid(side: int = 5, spacing: float = 0.5, std: float = 0.05) -> GaussianMixture:
    """Equal-weight modes on a side x side grid in 2-D, centred on the origin."""
    coords = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(coords, coords, indexing="ij")
    means = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    k = side * side
    return GaussianMixture(torch.ones(k), means, torch.full((k,), std), name=f"gmm-grid{k}")


def load_mixture_json(path: str | Path) -> GaussianMixture:
    """Read a mixture from JSON: {"weights": [K], "means": [K][D], "stds": [K] or [K][D]}."""
    path = Path(path)
    hint = 'expected {"weights": [K], "means": [K][D], "stds": [K] or [K][D]}'
    if not path.is_file():
        raise UsageError(f"mixture file not found: {path}", hint=hint)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"mixture file {path} is not valid JSON: {exc}", hint=hint) from None
    if not isinstance(data, dict):
        raise UsageError(f"mixture file {path} must hold a JSON object", hint=hint)
    unknown = sorted(set(data) - {"weights", "means", "stds"})
    missing = sorted({"weights", "means", "stds"} - set(data))
    if missing or unknown:
        what = f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}"
        raise UsageError(f"mixture file {path}: {what}", hint=hint)
    try:
        weights = torch.tensor(data["weights"], dtype=torch.float64)
        means = torch.tensor(data["means"], dtype=torch.float64)
        stds = torch.tensor(data["stds"], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UsageError(f"mixture file {path}: values must be numbers in nested lists ({exc})", hint=hint) from None
    if weights.ndim != 1 or weights.numel() == 0:
        raise UsageError(f"mixture file {path}: 'weights' must be a non-empty list of K numbers", hint=hint)
    k = weights.numel()
    if means.ndim != 2 or means.shape[0] != k or means.shape[1] == 0:
        raise UsageError(f"mixture file {path}: 'means' must have shape [{k}][D], got {list(means.shape)}", hint=hint)
    if stds.shape not in {(k,), tuple(means.shape)}:
        raise UsageError(
            f"mixture file {path}: 'stds' must have shape [{k}] or [{k}][{means.shape[1]}], got {list(stds.shape)}",
            hint=hint,
        )
    for name, t in (("weights", weights), ("means", means), ("stds", stds)):
        if not torch.isfinite(t).all():
            raise UsageError(f"mixture file {path}: '{name}' holds a non-finite value", hint=hint)
    if (weights < 0).any() or weights.sum() <= 0:
        raise UsageError(f"mixture file {path}: 'weights' must be >= 0 with a positive sum", hint=hint)
    if (stds <= 0).any():
        raise UsageError(f"mixture file {path}: 'stds' must all be > 0", hint=hint)
    return GaussianMixture(weights, means, stds, name=f"gmm:{path}")
