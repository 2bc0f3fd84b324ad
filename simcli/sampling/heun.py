"""The teacher's EDM Heun sampler and one-step generator sampling.

`edm_heun_sample` is `edm_sampler` from NVlabs/edm `generate.py` (Karras et al. 2022, Algorithm 2), as
written down in edm-spec.md section 3.5: a float64 state, the rho-schedule, optional churn, Heun correction
on every step but the last, so N steps cost 2N - 1 denoiser evaluations. It reproduces `edm_sampler` bit for
bit on the CPU: the same operations in the same order, sigma handed to the denoiser as the same 0-dim float64
tensor, churn noise drawn with the same per-seed `randn_like`, and the float64 result returned as it is.
`HeunSettings` holds the sampler's knobs (generate.py's --steps, --S_churn, --S_min, --S_max, --S_noise).
`one_step_generate` is the SIM generator G(z) = D(sigma_init * z; sigma_init) (Luo et al. 2024, eq. B.4;
sim-method.md section 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from simcli.errors import UsageError
from simcli.nets.denoiser import Denoiser
from simcli.nets.few_step import Renoise, generate_steps
from simcli.nets.schedule import karras_sigma

Tensor = torch.Tensor


class NoiseSource(Protocol):
    """Anything that draws standard normal noise shaped like x (e.g. a per-seed SeedRNG)."""

    def randn_like(self, x: Tensor) -> Tensor: ...


def heun_num_evals(num_steps: int) -> int:
    """Denoiser evaluations of an N-step EDM Heun run: 2N - 1 (no correction on the last step)."""
    return 2 * num_steps - 1


@dataclass(frozen=True)
class HeunSettings:
    """The EDM sampler's settings: steps N and EDM's S_churn, S_min, S_max, S_noise (generate.py's options).

    The defaults are EDM's deterministic 18-step sampler (S_churn = 0 adds no noise whatever S_min, S_max and
    S_noise are). `preset` names where the values came from ("paper" for a teacher's published settings).
    """

    num_steps: int = 18
    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = float("inf")
    s_noise: float = 1.0
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise UsageError(f"the EDM sampler needs at least 1 step, got {self.num_steps}")
        finite = {"churn": self.s_churn, "s-min": self.s_min, "s-noise": self.s_noise}
        for name, value in finite.items():
            if not math.isfinite(value):
                raise UsageError(f"--{name} must be a finite number, got {value}")
        if self.s_churn < 0:
            raise UsageError(f"--churn must be >= 0, got {self.s_churn}")
        if math.isnan(self.s_max) or self.s_max < self.s_min:
            raise UsageError(f"need --s-min <= --s-max, got s-min={self.s_min}, s-max={self.s_max}")

    @property
    def nfe(self) -> int:
        return heun_num_evals(self.num_steps)

    @property
    def deterministic(self) -> bool:
        return self.s_churn == 0.0

    def sampler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of edm_heun_sample."""
        return {"num_steps": self.num_steps, "S_churn": self.s_churn, "S_min": self.s_min, "S_max": self.s_max,
                "S_noise": self.s_noise}

    def summary(self) -> dict[str, Any]:
        """JSON-ready record; an unbounded s_max is written as null."""
        return {"name": "edm-heun", "steps": self.num_steps, "s_churn": self.s_churn, "s_min": self.s_min,
                "s_max": self.s_max if math.isfinite(self.s_max) else None, "s_noise": self.s_noise,
                "deterministic": self.deterministic, "preset": self.preset, "nfe": self.nfe}


def karras_sigmas(
    num_steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    round_sigma: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """EDM noise levels t_0 > ... > t_{N-1}, then t_N = 0, in float64: [num_steps + 1] (EDM eq. 5).

    t_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, passed through
    round_sigma when given. For N = 1 (where EDM's formula divides by zero) the schedule is [sigma_max, 0].
    """
    if num_steps < 1:
        raise UsageError(f"the EDM sampler needs at least 1 step, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise UsageError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    step = torch.arange(num_steps, dtype=torch.float64, device=device)  # [N]
    frac = step / (num_steps - 1) if num_steps > 1 else torch.zeros_like(step)
    t = karras_sigma(frac, sigma_min, sigma_max, rho)  # [N]
    if round_sigma is not None:
        t = torch.as_tensor(round_sigma(t)).to(dtype=torch.float64, device=device)
    return torch.cat([t, torch.zeros_like(t[:1])])  # [N + 1]


def _eval(denoiser: Denoiser, x: Tensor, sigma: Tensor, class_labels: Tensor | None) -> Tensor:
    """D(x; sigma) on the float64 state x [B, ...] with sigma the 0-dim float64 tensor EDM passes (not expanded
    per sample: a preconditioner then computes its coefficients once, as upstream does, which can differ from
    per-sample coefficients by an ulp); the float32 output is cast back to float64."""
    return denoiser(x, sigma, class_labels).to(torch.float64)


@torch.no_grad()
def edm_heun_sample(
    denoiser: Denoiser,
    latents: Tensor,
    class_labels: Tensor | None = None,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
    rng: NoiseSource | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample the teacher with EDM's deterministic/stochastic Heun sampler; returns the float64 state [B, ...].

    latents [B, ...] are unit-variance noise (draw them per seed with SeedRNG). Churn noise comes from
    rng.randn_like on the float64 state (pass the same SeedRNG that drew the latents and labels, so samples are
    batch-independent and line up with EDM's generate.py); it is drawn at every step when S_churn > 0, as EDM
    does, including steps outside [S_min, S_max]. With S_churn == 0 EDM still draws it but scales it by exactly
    0 (x + 0 * eps == x), and nothing is drawn after the sampler, so it is not drawn here: same result. The
    denoiser gets sigma as a 0-dim float64 tensor, as in EDM. Exactly heun_num_evals(num_steps) = 2N - 1
    denoiser calls. on_step(i, num_steps) is called after step i. Runs under no_grad and leaves the
    denoiser's train/eval mode as it is. Convert images with to_uint8 on the float64 result, as generate.py does.
    """
    sigma_min = max(sigma_min, float(denoiser.sigma_min))  # clamp to what the denoiser supports
    sigma_max = min(sigma_max, float(denoiser.sigma_max))
    t_steps = karras_sigmas(num_steps, sigma_min, sigma_max, rho, denoiser.round_sigma, latents.device)  # [N+1]
    gamma_max = min(S_churn / num_steps, math.sqrt(2) - 1)

    x_next = latents.to(torch.float64) * t_steps[0]  # [B, ...]
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):  # 0-dim float64 tensors
        x_cur = x_next
        # Churn: raise the noise level to t_hat by adding fresh noise (no-op when S_churn == 0).
        gamma = gamma_max if S_min <= float(t_cur) <= S_max else 0.0
        t_hat = torch.as_tensor(denoiser.round_sigma(t_cur + gamma * t_cur))
        x_hat = x_cur
        if S_churn > 0:
            eps = rng.randn_like(x_cur) if rng is not None else torch.randn_like(x_cur)
            x_hat = x_cur + (t_hat**2 - t_cur**2).sqrt() * S_noise * eps
        # Euler step from t_hat to t_next.
        d_cur = (x_hat - _eval(denoiser, x_hat, t_hat, class_labels)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Heun (2nd-order) correction, skipped on the last step where t_next = 0.
        if i < num_steps - 1:
            d_prime = (x_next - _eval(denoiser, x_next, t_next, class_labels)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if on_step is not None:
            on_step(i, num_steps)
    return x_next


@torch.no_grad()
def one_step_generate(
    generator_denoiser: Denoiser,
    latents: Tensor,
    sigma_init: float = 2.5,
    class_labels: Tensor | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    sigmas: Sequence[float] | None = None,
    renoise: Renoise | None = None,
) -> Tensor:
    """One-step samples G(z) = D(sigma_init * z; sigma_init) (SIM eq. B.4), float32 [B, ...]; with `sigmas`, a
    few-step generator's at those levels (sigma_init is then sigmas[0]), renoise drawing the noise between its steps
    (simcli.nets.few_step.generate_steps).

    sigma reaches the denoiser as a [b] tensor in the latents' dtype. Runs in chunks of batch_size (all at
    once when None) under no_grad. When device is given each chunk
    is moved there to run and the result comes back to the latents' device, so latents may stay on CPU.
    Leaves the generator's train/eval mode as it is.
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    n = latents.shape[0]
    step = n if batch_size is None else batch_size
    run_device = latents.device if device is None else torch.device(device)
    outputs = []
    for start in range(0, n, max(step, 1)):
        z = latents[start : start + step].to(run_device)  # [b, ...]
        labels = None if class_labels is None else class_labels[start : start + step].to(run_device)
        x0 = generate_steps(generator_denoiser, z, (sigma_init,) if sigmas is None else sigmas, labels, renoise)
        outputs.append(x0.to(device=latents.device, dtype=torch.float32))
    if not outputs:
        return torch.empty(latents.shape, dtype=torch.float32, device=latents.device)
    return torch.cat(outputs)
